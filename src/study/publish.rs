//! `oim study publish`: the best candidate per KPI becomes a profile with the measured figures,
//! pushed like `oim profiles push`, with the study's evidence attached as an OCI referrer (an
//! artifact whose `subject` is the profile manifest), so `oras discover` shows it and
//! `oras pull` fetches it. Registries without the referrers API get the OCI 1.1 fallback: an
//! index under the tag `sha256-<hex of the profile digest>` (the catalog reader skips those tags).
//!
//! The rules:
//! - latency: lowest TTFT p50 at concurrency 1 among candidates that reach the throughput floor
//!   (output tokens/s at concurrency 1);
//! - throughput: highest output tokens/s per device at any concurrency whose TTFT p50 is within
//!   the ceiling;
//! - quantization: among candidates of a quantized precision, the fewest weight bytes (the
//!   estimator's), then the lowest TTFT at concurrency 1; published with the stated quality note.

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::Reference;
use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;
use serde::Serialize;
use serde_json::{Value, json};

use super::{CandidateResult, StudyDir};
use crate::api::{Kpi, Precision};
use crate::bench::LevelResult;
use crate::profile::catalog::{DirCatalog, OciCatalog, digest_of};
use crate::profile::estimate;
use crate::profile::oci::{self, enum_str};
use crate::profile::schema::{Performance, Profile};

/// `artifactType` of the evidence attached to a published profile.
pub const EVIDENCE_ARTIFACT_TYPE: &str = "application/vnd.oim.study.results.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The stated limits of the rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// Latency winners must reach this many output tokens/s at concurrency 1.
    pub throughput_floor: f64,
    /// Throughput winners count only levels whose TTFT p50 is at most this, ms.
    pub ttft_ceiling_ms: f64,
    /// What is known about the quality of the quantized winner.
    pub quality_note: String,
}

/// One KPI's winner.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Winner {
    /// The KPI.
    pub kpi: Kpi,
    /// The winning candidate.
    pub candidate: String,
    /// The concurrency its figures were measured at.
    pub concurrency: u32,
    /// Why it won, in one line.
    pub reason: String,
    /// The published profile's name.
    pub profile: String,
}

fn level(r: &CandidateResult, c: u32) -> Option<&LevelResult> {
    r.bench.levels.iter().find(|l| l.concurrency == c && l.completed > 0)
}

fn weight_bytes(p: &Profile) -> f64 {
    estimate::arch(&p.model).map_or(0.0, |a| a.weight_bytes(p.precision))
}

fn quantized(p: Precision) -> bool {
    !matches!(p, Precision::Bf16 | Precision::Fp16 | Precision::Fp32)
}

/// The winners of a study's results under `rules`, with every KPI that has none explained.
pub fn winners(results: &[(&Profile, CandidateResult)], rules: &Rules) -> (Vec<Winner>, Vec<String>) {
    let mut won = vec![];
    let mut none = vec![];
    let devices = |p: &Profile| f64::from(p.accelerator.count.max(1));
    // Latency.
    let best = results
        .iter()
        .filter_map(|(p, r)| level(r, 1).map(|l| (p, l)))
        .filter(|(_, l)| l.output_tokens_per_sec >= rules.throughput_floor)
        .min_by(|(pa, a), (pb, b)| {
            a.ttft_ms
                .p50
                .total_cmp(&b.ttft_ms.p50)
                .then(pa.accelerator.count.cmp(&pb.accelerator.count))
                .then(pa.name.cmp(&pb.name))
        });
    match best {
        Some((p, l)) => won.push(Winner {
            kpi: Kpi::Latency,
            candidate: p.name.clone(),
            concurrency: 1,
            reason: format!(
                "lowest TTFT p50 at concurrency 1 ({:.1} ms) with at least {} tokens/s",
                l.ttft_ms.p50, rules.throughput_floor
            ),
            profile: String::new(),
        }),
        None => {
            none.push(format!("latency: no candidate reached {} tokens/s at concurrency 1", rules.throughput_floor))
        }
    }
    // Throughput.
    let best = results
        .iter()
        .flat_map(|(p, r)| r.bench.levels.iter().filter(|l| l.completed > 0).map(move |l| (p, l)))
        .filter(|(_, l)| l.ttft_ms.p50 <= rules.ttft_ceiling_ms)
        .max_by(|(pa, a), (pb, b)| {
            (a.output_tokens_per_sec / devices(pa))
                .total_cmp(&(b.output_tokens_per_sec / devices(pb)))
                .then(pb.accelerator.count.cmp(&pa.accelerator.count))
                .then(pb.name.cmp(&pa.name))
        });
    match best {
        Some((p, l)) => won.push(Winner {
            kpi: Kpi::Throughput,
            candidate: p.name.clone(),
            concurrency: l.concurrency,
            reason: format!(
                "highest output tokens/s per device ({:.1} at concurrency {}) with TTFT p50 within {} ms",
                l.output_tokens_per_sec / devices(p),
                l.concurrency,
                rules.ttft_ceiling_ms
            ),
            profile: String::new(),
        }),
        None => none.push(format!("throughput: no level had TTFT p50 within {} ms", rules.ttft_ceiling_ms)),
    }
    // Quantization.
    let best =
        results.iter().filter(|(p, _)| quantized(p.precision)).filter_map(|(p, r)| level(r, 1).map(|l| (p, l))).min_by(
            |(pa, a), (pb, b)| {
                weight_bytes(pa)
                    .total_cmp(&weight_bytes(pb))
                    .then(a.ttft_ms.p50.total_cmp(&b.ttft_ms.p50))
                    .then(pa.name.cmp(&pb.name))
            },
        );
    match best {
        Some((p, _)) => won.push(Winner {
            kpi: Kpi::Quantization,
            candidate: p.name.clone(),
            concurrency: 1,
            reason: format!(
                "fewest weight bytes ({:.1} GiB, {}); quality: {}",
                weight_bytes(p) / (1024.0 * 1024.0 * 1024.0),
                enum_str(&p.precision),
                rules.quality_note
            ),
            profile: String::new(),
        }),
        None => none.push("quantization: no quantized candidate was measured".into()),
    }
    (won, none)
}

/// The profile published for a winner: the candidate with its KPI, a catalog name and the
/// measured figures.
pub fn published_profile(s: &StudyDir, w: &Winner, p: &Profile, r: &CandidateResult) -> Profile {
    let l = level(r, w.concurrency);
    let mut out = p.clone();
    out.kpi = w.kpi;
    out.name = format!(
        "vllm-{}-{}-x{}-{}-{}",
        p.accelerator.vendor,
        p.accelerator.product,
        p.accelerator.count,
        enum_str(&w.kpi),
        enum_str(&p.precision)
    );
    let day = r.finished.get(..10).unwrap_or(&r.finished);
    out.performance = Some(Performance {
        ttft_ms_p50: l.map(|l| l.ttft_ms.p50),
        itl_ms_p50: l.map(|l| l.itl_ms.p50),
        throughput_tokens_per_sec: l.map(|l| l.output_tokens_per_sec),
        concurrency: Some(w.concurrency),
        source: Some(format!("study {}, {}, {day}", s.study.id, r.engine_version)),
    });
    out
}

/// The evidence document attached to a published profile.
pub fn evidence(s: &StudyDir, w: &Winner, rules: &Rules, results: &[(&Profile, CandidateResult)]) -> Value {
    let all: Vec<Value> = results
        .iter()
        .map(|(p, r)| {
            json!({
                "candidate": p.name,
                "precision": enum_str(&p.precision),
                "devices": p.accelerator.count,
                "args": p.args,
                "result": r,
            })
        })
        .collect();
    json!({
        "schema": "oim.opea.dev/study-evidence/v1",
        "study": s.study,
        "kpi": enum_str(&w.kpi),
        "winner": w,
        "rules": rules,
        "candidates": all,
    })
}

/// Where a published profile and its evidence went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The winner.
    pub winner: Winner,
    /// `registry/repo:tag`.
    pub reference: String,
    /// The profile manifest's digest.
    pub digest: String,
    /// The evidence manifest's digest.
    pub evidence_digest: String,
}

/// Pushes the winners of `s` to `catalog` and attaches the evidence.
pub async fn publish(
    s: &StudyDir,
    rules: &Rules,
    catalog: &OciCatalog,
    client: &oci_client::Client,
    auth: &RegistryAuth,
) -> Result<(Vec<Published>, Vec<String>), String> {
    let results = s.results().map_err(|e| e.to_string())?;
    if results.is_empty() {
        return Err(format!("{}: no results yet; run `oim study run` first", s.dir.display()));
    }
    let (mut won, none) = winners(&results, rules);
    let out_dir = s.dir.join("publish");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut docs = BTreeMap::new();
    for w in &mut won {
        let (p, r) = results.iter().find(|(p, _)| p.name == w.candidate).ok_or("winner vanished")?;
        let profile = published_profile(s, w, p, r);
        w.profile = profile.name.clone();
        let yaml = serde_saphyr::to_string(&profile).map_err(|e| format!("cannot serialize {}: {e}", profile.name))?;
        let path = out_dir.join(format!("{}.yaml", profile.name));
        std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
        docs.insert(profile.name.clone(), evidence(s, w, rules, &results));
    }
    let dir = DirCatalog::load(&out_dir).map_err(|e| e.to_string())?;
    let pushed = catalog.push(&dir).await.map_err(|e| e.to_string())?;
    let mut out = vec![];
    for w in won {
        let Some((reference, digest)) = pushed.iter().find(|(r, _)| r.ends_with(&format!(":{}", w.profile))) else {
            return Err(format!("{} was not pushed", w.profile));
        };
        let doc = docs.get(&w.profile).cloned().unwrap_or(Value::Null);
        let subject = catalog.registry().digest_ref(&s.study.model, digest);
        let evidence_digest = attach(client, auth, &subject, &s.study.id, &doc).await?;
        out.push(Published { winner: w, reference: reference.clone(), digest: digest.clone(), evidence_digest });
    }
    Ok((out, none))
}

/// Pushes `doc` as a referrer of `subject` and records it in the tag-schema fallback index.
pub async fn attach(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    subject: &Reference,
    study_id: &str,
    doc: &Value,
) -> Result<String, String> {
    let err = |what: &str, e: oci_client::errors::OciDistributionError| format!("{}: {what}: {e}", subject.whole());
    client.auth(subject, auth, RegistryOperation::Push).await.map_err(|e| err("authenticating", e))?;
    let subject_digest = subject.digest().ok_or("subject has no digest")?.to_string();
    let (subject_bytes, _) = client
        .pull_manifest_raw(subject, auth, &[OCI_MANIFEST])
        .await
        .map_err(|e| err("reading the profile manifest", e))?;
    let blob = serde_json::to_vec_pretty(doc).unwrap_or_default();
    let blob_digest = digest_of(&blob);
    client.push_blob(subject, blob.clone(), &blob_digest).await.map_err(|e| err("pushing the evidence", e))?;
    let empty = b"{}".to_vec();
    let empty_digest = digest_of(&empty);
    client.push_blob(subject, empty.clone(), &empty_digest).await.map_err(|e| err("pushing the empty config", e))?;
    let annotations = json!({
        "dev.opea.oim.study.id": study_id,
        "org.opencontainers.image.created": super::now_rfc3339(),
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": EVIDENCE_ARTIFACT_TYPE,
        "config": {"mediaType": oci::EMPTY_CONFIG_MEDIA_TYPE, "digest": empty_digest, "size": empty.len()},
        "layers": [{
            "mediaType": EVIDENCE_ARTIFACT_TYPE,
            "digest": blob_digest,
            "size": blob.len(),
            "annotations": {oci::TITLE: format!("study-{study_id}.json")},
        }],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_bytes.len()},
        "annotations": annotations,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let digest = digest_of(&bytes);
    let by_digest =
        Reference::with_digest(subject.registry().to_string(), subject.repository().to_string(), digest.clone());
    let ct = |t: &str| t.parse().map_err(|_| format!("bad content type {t}"));
    client
        .push_manifest_raw(&by_digest, bytes.clone(), ct(OCI_MANIFEST)?)
        .await
        .map_err(|e| err("pushing the evidence manifest", e))?;
    // The referrers tag schema (OCI distribution 1.1 fallback): merge into any existing index.
    let fallback_tag = subject_digest.replacen(':', "-", 1);
    let index_ref = Reference::with_tag(subject.registry().to_string(), subject.repository().to_string(), fallback_tag);
    let mut entries: Vec<Value> = match client.pull_manifest_raw(&index_ref, auth, &[OCI_INDEX]).await {
        Ok((b, _)) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        Err(_) => vec![],
    };
    entries.retain(|e| e.get("digest").and_then(Value::as_str) != Some(digest.as_str()));
    entries.push(json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": bytes.len(),
        "artifactType": EVIDENCE_ARTIFACT_TYPE,
        "annotations": annotations,
    }));
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    client
        .push_manifest_raw(&index_ref, serde_json::to_vec(&index).unwrap_or_default(), ct(OCI_INDEX)?)
        .await
        .map_err(|e| err("pushing the referrers index", e))?;
    Ok(digest)
}

/// Loads a study for publishing (a thin wrapper so the CLI names the path in errors).
pub fn load(dir: &Path) -> Result<StudyDir, String> {
    StudyDir::load(dir).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::{BenchResult, Outcome, Sample};
    use crate::profile::engines::Engines;
    use crate::study::plan::{PlanRequest, plan};
    use crate::study::{BenchPlan, report};

    /// A level where every request had this TTFT and ITL, 16 tokens each.
    fn level(c: u32, ttft_ms: u64, itl_ms: u64) -> LevelResult {
        let s = Sample {
            ttft: Duration::from_millis(ttft_ms),
            itl: vec![Duration::from_millis(itl_ms); 15],
            e2e: Duration::from_millis(ttft_ms + 15 * itl_ms),
            output_tokens: 16,
            input_tokens: 8,
            counted: false,
        };
        let outcomes = vec![Outcome::Ok(s); c as usize];
        LevelResult::fold(c, &outcomes, Duration::from_millis(ttft_ms + 15 * itl_ms))
    }

    fn result(name: &str, levels: Vec<LevelResult>) -> CandidateResult {
        CandidateResult {
            candidate: name.into(),
            engine_version: "vllm 0.26.0".into(),
            started: "2026-11-27T05:00:00Z".into(),
            finished: "2026-11-27T05:01:00Z".into(),
            mode: "local".into(),
            bench: BenchResult {
                url: "http://127.0.0.1:1".into(),
                model: "m".into(),
                api: "chat".into(),
                input_tokens: 8,
                output_tokens: 16,
                levels,
                interrupted: false,
                client_cpu_sec: 0.1,
            },
        }
    }

    fn candidates() -> Vec<Profile> {
        let req = PlanRequest {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            accelerator: "nvidia/h100-sxm-80gb".into(),
            count: 2,
            device_memory_mib: None,
            precisions: vec![],
            max_num_seqs: vec![256],
            max_model_len: vec![8192],
            tensor: vec![],
            bench: BenchPlan { input_tokens: 8, output_tokens: 16, concurrencies: vec![1, 16], requests: None },
        };
        plan(&req, &Engines::builtin()).unwrap().1
    }

    fn rules() -> Rules {
        Rules { throughput_floor: 0.0, ttft_ceiling_ms: 500.0, quality_note: "not measured".into() }
    }

    #[test]
    fn each_kpi_has_its_rule_and_limits_change_the_winner() {
        let c = candidates();
        let by = |n: &str| c.iter().find(|p| p.name == n).unwrap();
        let (bf16, fp8, tp2) = (
            by("study-nvidia-h100-sxm-80gb-x1-bf16-s256-l8k"),
            by("study-nvidia-h100-sxm-80gb-x1-fp8-s256-l8k"),
            by("study-nvidia-h100-sxm-80gb-x2-bf16-s256-l8k"),
        );
        let results = vec![
            (bf16, result(&bf16.name, vec![level(1, 80, 10), level(16, 120, 10)])),
            (fp8, result(&fp8.name, vec![level(1, 40, 12), level(16, 600, 40)])),
            (tp2, result(&tp2.name, vec![level(1, 60, 7), level(16, 90, 7)])),
        ];
        let (won, none) = winners(&results, &rules());
        assert!(none.is_empty(), "{none:?}");
        let of = |k: Kpi| won.iter().find(|w| w.kpi == k).unwrap();
        assert_eq!(of(Kpi::Latency).candidate, fp8.name);
        // Per device, TP1 bf16 (16 x 16 tokens in 270 ms) beats TP2 (16 x 16 in 195 ms on 2).
        assert_eq!((of(Kpi::Throughput).candidate.as_str(), of(Kpi::Throughput).concurrency), (bf16.name.as_str(), 16));
        assert_eq!(of(Kpi::Quantization).candidate, fp8.name);
        // A throughput floor above fp8's rate at concurrency 1 hands latency to TP2.
        let floor = Rules { throughput_floor: 80.0, ..rules() };
        let (won, _) = winners(&results, &floor);
        assert_eq!(won.iter().find(|w| w.kpi == Kpi::Latency).unwrap().candidate, tp2.name);
        // With a TTFT ceiling under every concurrency-16 level, only concurrency 1 counts.
        let tight = Rules { ttft_ceiling_ms: 85.0, ..rules() };
        let (won, _) = winners(&results, &tight);
        let t = won.iter().find(|w| w.kpi == Kpi::Throughput).unwrap();
        assert_eq!((t.candidate.as_str(), t.concurrency), (fp8.name.as_str(), 1));
        // No quantized candidate: no quantization winner, and why.
        let (_, none) = winners(&results[..1], &rules());
        assert!(none.iter().any(|n| n.starts_with("quantization")), "{none:?}");
    }

    #[test]
    fn published_profiles_carry_the_measured_figures_and_their_source() {
        let c = candidates();
        let p = c.iter().find(|p| p.name == "study-nvidia-h100-sxm-80gb-x1-fp8-s256-l8k").unwrap();
        let results = vec![(p, result(&p.name, vec![level(1, 40, 8), level(16, 90, 9)]))];
        let (won, _) = winners(&results, &rules());
        let s = StudyDir {
            dir: "/nonexistent".into(),
            study: crate::study::Study {
                schema: crate::study::STUDY_SCHEMA.into(),
                id: "s1".into(),
                model: p.model.clone(),
                accelerator: "nvidia/h100-sxm-80gb".into(),
                count: 2,
                created: "2026-11-27T05:00:00Z".into(),
                bench: BenchPlan { input_tokens: 8, output_tokens: 16, concurrencies: vec![1, 16], requests: None },
            },
            candidates: c.clone(),
        };
        let w = won.iter().find(|w| w.kpi == Kpi::Throughput).unwrap();
        let out = published_profile(&s, w, p, &results[0].1);
        assert_eq!(out.name, "vllm-nvidia-h100-sxm-80gb-x1-throughput-fp8");
        assert_eq!(out.kpi, Kpi::Throughput);
        let perf = out.performance.clone().unwrap();
        assert_eq!((perf.ttft_ms_p50, perf.itl_ms_p50, perf.concurrency), (Some(90.0), Some(9.0), Some(16)));
        assert_eq!(perf.source.as_deref(), Some("study s1, vllm 0.26.0, 2026-11-27"));
        assert!(out.validate("published").is_ok());
        // The chart draws it: one series, the winners ringed.
        let svg = report::svg("t", &results, &won).unwrap();
        assert!(svg.contains("throughput winner") && svg.contains(&p.name));
    }
}
