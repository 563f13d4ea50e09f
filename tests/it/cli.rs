//! The `oim` command line as a user meets it: help texts, exit codes, `oim crds`.

use std::process::{Command, Output};

fn oim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oim")).args(args).output().expect("oim runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_help_lists(args: &[&str], words: &[&str]) {
    let out = oim(args);
    assert!(out.status.success(), "oim {args:?} failed: {}", stderr(&out));
    let help = stdout(&out);
    for w in words {
        assert!(help.contains(w), "`oim {}` does not mention {w}:\n{help}", args.join(" "));
    }
}

#[test]
fn top_level_help_lists_every_design_subcommand_and_the_exit_codes() {
    assert_help_lists(
        &["--help"],
        &["operator", "node-agent", "detect", "crds", "download", "profiles", "render", "3 no feasible profile"],
    );
    assert_help_lists(&["profiles", "--help"], &["list", "select", "push"]);
}

#[test]
fn each_subcommand_help_shows_the_design_flags() {
    assert_help_lists(
        &["operator", "--help"],
        &[
            "--watch-namespaces",
            "--profile-registry",
            "--allowed-registries",
            "--agent-image",
            "--engine-images",
            "--metrics-bind",
            "--leader-elect",
        ],
    );
    assert_help_lists(&["node-agent", "--help"], &["--node-name", "--root", "--interval"]);
    assert_help_lists(&["detect", "--help"], &["--root", "--output", "json", "yaml"]);
    assert_help_lists(&["download", "--help"], &["--repo", "--revision", "--dest", "--include", "--exclude"]);
    assert_help_lists(
        &["profiles", "list", "--help"],
        &["--model", "--catalog", "--registry", "--insecure", "--registry-config", "table", "json"],
    );
    assert_help_lists(
        &["profiles", "select", "--help"],
        &["--model", "--kpi", "--precision", "--no-generate", "--inventory", "--catalog", "--registry"],
    );
    assert_help_lists(&["profiles", "push", "--help"], &["<DIR>", "--registry", "--insecure", "--registry-config"]);
    assert_help_lists(
        &["render", "--help"],
        &["--filename", "--inventory", "--pods", "--platform", "kubernetes", "openshift", "--catalog", "--registry"],
    );
}

#[test]
fn oim_crds_prints_exactly_the_checked_in_crds() {
    let out = oim(&["crds"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/oim.opea.dev.yaml")).unwrap();
    assert!(stdout(&out) == checked_in, "crds/ differs from `oim crds`: run `make crds`");
}

#[test]
fn bad_usage_exits_2_and_names_the_problem() {
    let out = oim(&["profiles", "list", "--model", "a/b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--catalog"), "{}", stderr(&out));
    let out = oim(&["profiles", "list", "--model", "a/b", "--catalog", "d", "--registry", "r"]);
    assert_eq!(out.status.code(), Some(2), "catalog and registry are exclusive");
    let out = oim(&["detect", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
}

fn example(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn select_on_two_single_l4_nodes_finds_nothing_for_70b_bf16_and_exits_3_with_reasons() {
    let out = oim(&[
        "profiles",
        "select",
        "--model",
        "meta-llama/Llama-3.1-70B-Instruct",
        "--precision",
        "bf16",
        "--inventory",
        &example("examples/inventories/l4-pair.yaml"),
        "--catalog",
        &example("profiles"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["selected"].is_null());
    let reasons: Vec<String> =
        v["rejected"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap().to_string()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r
                .contains("needs 2x nvidia h100-sxm-80gb per node; the largest schedulable group offers 1x nvidia l4")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("131.4 GiB of weights")),
        "the generated attempt explains itself: {reasons:#?}"
    );
}

#[test]
fn select_on_the_test_cluster_prints_the_chosen_profile_and_its_group() {
    let out = oim(&[
        "profiles",
        "select",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--kpi",
        "latency",
        "--inventory",
        &example("examples/inventories/test-cluster.yaml"),
        "--catalog",
        &example("profiles"),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["selected"];
    assert_eq!(s["kpi"], "latency");
    assert_eq!(s["group"]["product"], s["accelerator"]["product"]);
    assert!(s["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(s["reason"].as_str().unwrap().contains("latency"));
    // An AMD-only cluster gets an AMD profile.
    let out = oim(&[
        "profiles",
        "select",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--inventory",
        &example("examples/inventories/mi300x.yaml"),
        "--catalog",
        &example("profiles"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["selected"]["accelerator"]["vendor"], "amd");
    // Bad flags name the choices.
    let out = oim(&[
        "profiles",
        "select",
        "--model",
        "m/x",
        "--kpi",
        "fastest",
        "--inventory",
        &example("examples/inventories/mi300x.yaml"),
        "--catalog",
        &example("profiles"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("latency, throughput, quantization"));
}

/// `oim render` of the examples equals the checked-in golden files (`make golden` rewrites them).
#[test]
fn rendering_the_examples_matches_the_golden_files() {
    const CLUSTER: &str = "examples/inventories/test-cluster.yaml";
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (&["examples/llama31-8b-latency.yaml"], CLUSTER, "kubernetes", "llama31-8b-latency.yaml"),
        (&["examples/llama31-8b-latency.yaml"], CLUSTER, "openshift", "llama31-8b-latency-openshift.yaml"),
        (
            &["examples/llama31-70b-throughput.yaml", "examples/llama31-70b-cache.yaml"],
            CLUSTER,
            "kubernetes",
            "llama31-70b-throughput.yaml",
        ),
        // Two 8x H100 nodes: a LeaderWorkerSet group spanning both.
        (
            &["examples/llama31-405b.yaml"],
            "examples/inventories/h100-pair.yaml",
            "kubernetes",
            "llama31-405b-h100-pair.yaml",
        ),
    ];
    for (files, inventory, platform, golden) in cases {
        let mut args = vec!["render"];
        for f in *files {
            args.extend(["-f", f]);
        }
        args.extend(["--inventory", inventory, "--catalog", "profiles", "--platform", platform]);
        let out = Command::new(env!("CARGO_BIN_EXE_oim"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = std::fs::read_to_string(example(&format!("tests/fixtures/golden/{golden}"))).unwrap();
        assert!(
            stdout(&out) == expected,
            "tests/fixtures/golden/{golden} is stale: run `make golden` and review the diff"
        );
    }
}
