//! The `drover` CLI as a given identity, and the JSON shapes it prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::bin_path;
use super::pki::{CertPair, clean_env};
use super::process::{CmdOutput, run_cmd};

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// One host as `drover agents -o json` and `drover agent show -o json` print
/// it. Fields the tests rely on are required, so a deviation from the
/// contract shows up as a parse error with the raw JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct HostView {
    pub host_id: String,
    /// enrolled | connected | lost | revoked
    pub status: String,
    #[serde(default)]
    pub status_reason: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub last_seen_ms: i64,
    #[serde(default)]
    pub cert_serial: String,
    #[serde(default)]
    pub peer_addr: String,
    pub metrics: Option<MetricsView>,
    pub instances: Vec<InstanceView>,
}

impl HostView {
    pub fn instance(&self, name: &str) -> Option<&InstanceView> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn connected(&self) -> bool {
        self.status == "connected"
    }

    /// Connected, reporting non-zero memory, and every instance running and
    /// healthy.
    pub fn healthy(&self) -> bool {
        self.connected()
            && self
                .metrics
                .as_ref()
                .is_some_and(|m| m.mem_total_bytes > 0 && m.mem_used_bytes > 0)
            && !self.instances.is_empty()
            && self.instances.iter().all(|i| i.running_healthy())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsView {
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub cpu_count: u32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    #[serde(default)]
    pub uptime_secs: u64,
    #[serde(default)]
    pub disks: Vec<DiskView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DiskView {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub runtime: String,
    /// running | stopped | crashed | starting | stopping | not_deployed | unknown
    pub state: String,
    pub restarts: u32,
    #[serde(default)]
    pub pid: u32,
    /// unknown | healthy | unhealthy | none
    pub health: String,
    #[serde(default)]
    pub last_check_error: String,
}

impl InstanceView {
    pub fn running_healthy(&self) -> bool {
        self.state == "running" && self.health == "healthy"
    }
}

/// `drover token create -o json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenView {
    pub token: String,
    pub ca_fingerprint: String,
    #[serde(default)]
    pub expires_at: String,
}

/// The CLI configured for one identity through DROVER_* variables, with HOME
/// in the test's dir.
#[derive(Debug, Clone)]
pub struct Cli {
    pub addr: String,
    pub ca: PathBuf,
    pub identity: Option<CertPair>,
    pub home: PathBuf,
}

impl Cli {
    pub fn new(addr: &str, ca: &Path, identity: Option<CertPair>, home: &Path) -> Cli {
        Cli {
            addr: addr.to_string(),
            ca: ca.to_path_buf(),
            identity,
            home: home.to_path_buf(),
        }
    }

    /// The same settings with another certificate.
    pub fn with_identity(&self, identity: Option<CertPair>) -> Cli {
        Cli {
            identity,
            ..self.clone()
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_path("drover"));
        cmd.args(args);
        clean_env(&mut cmd, &self.home);
        cmd.env("DROVER_ADDR", &self.addr)
            .env("DROVER_CA", &self.ca);
        if let Some(id) = &self.identity {
            cmd.env("DROVER_CERT", &id.cert).env("DROVER_KEY", &id.key);
        }
        cmd
    }

    /// Runs `drover ARGS`; never panics on a failed command.
    pub fn run(&self, args: &[&str]) -> CmdOutput {
        run_cmd(self.command(args), CMD_TIMEOUT)
    }

    /// `drover agents -o json [-l SELECTOR]`, parsed.
    pub fn try_agents(&self, selector: Option<&str>) -> Result<Vec<HostView>, String> {
        let mut args = vec!["agents", "-o", "json"];
        if let Some(sel) = selector {
            args.push("-l");
            args.push(sel);
        }
        let out = self.run(&args);
        if !out.success() {
            return Err(out.to_string());
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cannot parse `drover agents -o json` output: {e}\n{out}"))
    }

    /// Like [`Cli::try_agents`]; panics on failure.
    #[track_caller]
    pub fn agents(&self, selector: Option<&str>) -> Vec<HostView> {
        self.try_agents(selector).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `drover agent show HOST -o json`, parsed.
    pub fn try_show(&self, host: &str) -> Result<HostView, String> {
        let out = self.run(&["agent", "show", host, "-o", "json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cannot parse `drover agent show -o json` output: {e}\n{out}"))
    }

    /// `drover token create -o json [--ttl TTL] [--label k=v]...`.
    pub fn try_token(&self, ttl: Option<&str>, labels: &[&str]) -> Result<TokenView, String> {
        let mut args = vec!["token", "create", "-o", "json"];
        if let Some(ttl) = ttl {
            args.push("--ttl");
            args.push(ttl);
        }
        for label in labels {
            args.push("--label");
            args.push(label);
        }
        let out = self.run(&args);
        if !out.success() {
            return Err(out.to_string());
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cannot parse `drover token create -o json` output: {e}\n{out}"))
    }

    #[track_caller]
    pub fn token(&self, ttl: Option<&str>, labels: &[&str]) -> TokenView {
        self.try_token(ttl, labels)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `export ...` lines for a shell, to use the CLI as this identity.
    pub fn exports(&self) -> String {
        let mut out = format!(
            "export DROVER_ADDR={} DROVER_CA={}",
            self.addr,
            self.ca.display()
        );
        if let Some(id) = &self.identity {
            out.push_str(&format!(
                " DROVER_CERT={} DROVER_KEY={}",
                id.cert.display(),
                id.key.display()
            ));
        }
        out
    }
}
