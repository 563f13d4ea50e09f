//! Starts `oim-vllm-sim` (tests/sim) on a free loopback port for a test; stopped on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub(crate) const SIM: &str = env!("CARGO_BIN_EXE_oim-vllm-sim");

/// A running simulator.
pub(crate) struct Sim {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Sim {
    /// Starts the simulator serving `model` with extra flags, e.g. `["--ttft-ms", "200"]`.
    pub(crate) fn start(model: &str, flags: &[&str]) -> Sim {
        let mut child = Command::new(SIM)
            .args(["serve", model, "--port", "0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start oim-vllm-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").expect("the simulator prints its address").to_string();
        Sim { child, url }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
