//! The operator's rights, proven by use: every operator in the integration run authenticates as
//! the least-privilege account bound to `config/rbac/role.yaml`, and the API server's audit log
//! (tests/cluster/up.sh records that account only) shows what it did. Run by `make test` after
//! every other test: nothing refused (no rule missing), no rule unused but the few listed here.

use std::collections::BTreeSet;

/// Rules held but not exercised by the integration run, and why they stay.
const NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[
    (
        "route.openshift.io",
        "routes/custom-host",
        "create",
        "OpenShift's router asks for it when a Route names its host",
    ),
    ("", "nodes", "*", "held only so the operator can grant the node agent its ClusterRole without `escalate`"),
    ("", "namespaces", "create", "the agent namespace is created when missing; tests use existing ones"),
    ("", "namespaces", "patch", "a namespace the operator created is kept in shape; tests use existing ones"),
    ("", "pods", "get", "in a pod, the operator reads its own for its image; the tests run it outside"),
    ("oim.opea.dev", "oimservices/finalizers", "update", "OpenShift's OwnerReferencesPermissionEnforcement checks it"),
    ("oim.opea.dev", "oimcaches/finalizers", "update", "OpenShift's OwnerReferencesPermissionEnforcement checks it"),
];

fn exempt(group: &str, resource: &str, verb: &str) -> bool {
    NOT_EXERCISED.iter().any(|(g, r, v, _)| *g == group && *r == resource && (*v == "*" || *v == verb))
}

#[test]
#[ignore = "run by `make test` after every other test: it reads what they did"]
fn the_operator_account_was_refused_nothing_and_used_every_rule() {
    let state = std::env::var("OIM_CLUSTER_STATE").expect("OIM_CLUSTER_STATE: run under make test");
    let log = std::fs::read_to_string(format!("{state}/log/audit.log")).expect("the API server's audit log");
    let mut used = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for line in log.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let o = &e["objectRef"];
        let group = o["apiGroup"].as_str().unwrap_or_default().to_string();
        let mut resource = o["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = o["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        if resource.is_empty() {
            continue; // discovery
        }
        // Refused by RBAC, not by admission (a quota, a terminating namespace: also 403s).
        if e["annotations"]["authorization.k8s.io/decision"] == "forbid" {
            refused.insert(format!("{verb} {group}/{resource} ({code})"));
        }
        // A server-side apply that creates an object is authorised as `create`.
        if verb == "patch" && code == 201 {
            used.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        used.insert((group, resource, verb));
    }
    assert!(!used.is_empty(), "the audit log holds nothing of the operator account: did the tests run under it?");
    assert!(refused.is_empty(), "the operator was refused (a rule is missing): {refused:?}");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rbac/role.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut unused = vec![];
    for rule in docs.iter().flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default()) {
        let strings = |k: &str| -> Vec<String> {
            rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
        };
        for g in strings("apiGroups") {
            for r in strings("resources") {
                for v in strings("verbs") {
                    if !used.contains(&(g.clone(), r.clone(), v.clone())) && !exempt(&g, &r, &v) {
                        unused.push(format!("{v} {g}/{r}"));
                    }
                }
            }
        }
    }
    assert!(unused.is_empty(), "rules no test used (remove them, or list them in NOT_EXERCISED with why): {unused:?}");
}
