//! Performance studies (the RFC's third pillar): for one model on one kind of accelerator,
//! plan candidate profiles from the estimator (`plan`), benchmark each with `oim bench` on this
//! machine or deployed on a cluster (`run`, `cluster`, `forward`), publish the best per KPI with
//! the measured figures and the evidence attached (`publish`), and draw the latency–throughput
//! frontier (`report`).
//!
//! A study is a directory: `study.yaml` (what is studied and how it is measured),
//! `candidates/<name>.yaml` (complete profiles), `results/<name>.json` (one per finished
//! candidate, written atomically, so an interrupted run resumes where it stopped) and
//! `logs/<name>.log` (the engine's output).

pub mod cluster;
pub mod forward;
pub mod plan;
pub mod publish;
pub mod report;
pub mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bench::BenchResult;
use crate::profile::schema::Profile;

/// Value of `schema` in `study.yaml`.
pub const STUDY_SCHEMA: &str = "oim.opea.dev/study/v1";
/// Largest study, candidate or result file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// `study.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Study {
    /// Always [`STUDY_SCHEMA`].
    pub schema: String,
    /// `<date>-<model>-<product>`, quoted in published profiles as `source: study <id>`.
    pub id: String,
    /// Hugging Face id.
    pub model: String,
    /// `vendor/product`.
    pub accelerator: String,
    /// Devices per node available to a candidate.
    pub count: u32,
    /// When the plan was made (RFC 3339).
    pub created: String,
    /// How each candidate is measured.
    pub bench: BenchPlan,
}

/// The benchmark every candidate gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BenchPlan {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Output tokens.
    pub output_tokens: u32,
    /// Concurrency sweep; 1 must be in it (the latency KPI is measured there).
    pub concurrencies: Vec<u32>,
    /// Requests per level (default 4 x concurrency, at least 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// `results/<candidate>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateResult {
    /// Candidate (profile) name.
    pub candidate: String,
    /// Engine version the server reported (`/version`), else the profile's.
    pub engine_version: String,
    /// Start and end of the measurement (RFC 3339).
    pub started: String,
    /// End of the measurement.
    pub finished: String,
    /// Where it ran: `local` or `cluster`.
    pub mode: String,
    /// The measurement.
    pub bench: BenchResult,
}

/// A study directory that cannot be used, with the path and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct StudyError {
    /// The file or directory.
    pub path: String,
    /// What is wrong and what to do.
    pub problem: String,
}

impl StudyError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        StudyError { path: path.display().to_string(), problem: problem.into() }
    }
}

/// A loaded study: the spec, its candidates (by name) and the results so far.
#[derive(Debug, Clone)]
pub struct StudyDir {
    /// The directory.
    pub dir: PathBuf,
    /// `study.yaml`.
    pub study: Study,
    /// Candidates, sorted by name.
    pub candidates: Vec<Profile>,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, StudyError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| StudyError::new(path, e.to_string()))?;
    let mut buf = vec![];
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| StudyError::new(path, e.to_string()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(StudyError::new(path, format!("over {MAX_FILE_BYTES} bytes; this is not a study file")));
    }
    Ok(buf)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader (or a resumed
/// run) never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StudyError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| StudyError::new(path, e.to_string()))
}

/// Now, RFC 3339 in UTC to the second.
pub fn now_rfc3339() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).map(|t| t.to_string()).unwrap_or_else(|_| t.to_string())
}

impl StudyDir {
    /// Loads `dir/study.yaml` and `dir/candidates/*.yaml`.
    pub fn load(dir: &Path) -> Result<StudyDir, StudyError> {
        let spec = dir.join("study.yaml");
        if !spec.is_file() {
            return Err(StudyError::new(dir, "no study.yaml; create a study with `oim study plan ... -o DIR`"));
        }
        let text = String::from_utf8(read_bounded(&spec)?).map_err(|_| StudyError::new(&spec, "not UTF-8"))?;
        let study: Study = serde_saphyr::from_str(&text)
            .map_err(|e| StudyError::new(&spec, format!("not a study ({e}); re-create it with `oim study plan`")))?;
        if study.schema != STUDY_SCHEMA {
            return Err(StudyError::new(&spec, format!("schema {:?}: expected {STUDY_SCHEMA}", study.schema)));
        }
        if !study.bench.concurrencies.contains(&1) {
            return Err(StudyError::new(
                &spec,
                "bench.concurrencies must include 1 (the latency KPI is measured at concurrency 1)",
            ));
        }
        let cdir = dir.join("candidates");
        let mut candidates = vec![];
        let entries = std::fs::read_dir(&cdir).map_err(|e| StudyError::new(&cdir, e.to_string()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let bytes = read_bounded(&p)?;
                let profile =
                    Profile::parse(&bytes, &p.display().to_string()).map_err(|e| StudyError::new(&p, e.to_string()))?;
                if profile.model != study.model {
                    return Err(StudyError::new(
                        &p,
                        format!("model {} is not the study's {}; remove the file", profile.model, study.model),
                    ));
                }
                candidates.push(profile);
            }
        }
        if candidates.is_empty() {
            return Err(StudyError::new(&cdir, "no candidate profiles; run `oim study plan` again"));
        }
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(StudyDir { dir: dir.to_path_buf(), study, candidates })
    }

    /// Where a candidate's result goes.
    pub fn result_path(&self, candidate: &str) -> PathBuf {
        self.dir.join("results").join(format!("{candidate}.json"))
    }

    /// The result of a candidate, if it finished.
    pub fn result(&self, candidate: &str) -> Result<Option<CandidateResult>, StudyError> {
        let p = self.result_path(candidate);
        if !p.exists() {
            return Ok(None);
        }
        let bytes = read_bounded(&p)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StudyError::new(&p, format!("not a result ({e}); delete it to measure the candidate again")))
    }

    /// Every finished candidate with its result, in candidate order.
    pub fn results(&self) -> Result<Vec<(&Profile, CandidateResult)>, StudyError> {
        let mut out = vec![];
        for c in &self.candidates {
            if let Some(r) = self.result(&c.name)? {
                out.push((c, r));
            }
        }
        Ok(out)
    }
}
