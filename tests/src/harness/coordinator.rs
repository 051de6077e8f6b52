//! A `drover-coordinator` process in its own dir, started with a ready file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::pki::{CertPair, Pki};
use super::process::Proc;
use super::{bin_path, http_get, metrics_samples, metrics_sum, tail, wait_until_with};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the coordinator's config file that tests vary.
#[derive(Debug, Clone)]
pub struct CoordinatorSpec {
    pub name: String,
    /// 0 picks a free port at each start.
    pub grpc_port: u16,
    pub http_port: u16,
    pub lost_timeout: String,
    pub cert_lifetime: Option<String>,
    pub max_token_ttl: Option<String>,
    pub max_message_bytes: Option<u64>,
    /// Extra TOML appended to the generated config (later issues' sections).
    pub extra_toml: String,
    /// HA: the coordinator counts as started once it serves as a standby
    /// (by default only once it leads or runs alone).
    pub standby: bool,
    /// The address it listens on (and its certificate names): 127.0.0.1
    /// unless it runs in a network namespace or must be reached from one.
    pub listen_ip: String,
    /// Runs the process under this argv prefix (`ip netns exec NS`).
    pub prefix: Vec<String>,
    /// Extra environment of the process.
    pub env: Vec<(String, String)>,
}

impl Default for CoordinatorSpec {
    fn default() -> Self {
        CoordinatorSpec {
            name: "c1".to_string(),
            grpc_port: 0,
            http_port: 0,
            lost_timeout: "3s".to_string(),
            cert_lifetime: None,
            max_token_ttl: None,
            max_message_bytes: None,
            extra_toml: String::new(),
            standby: false,
            listen_ip: "127.0.0.1".to_string(),
            prefix: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// The JSON the coordinator writes to `--ready-file` once it serves.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadyFile {
    pub grpc: String,
    pub http: String,
    pub pid: u32,
    /// `single`, `standby` or `leader` (HA on etcd).
    #[serde(default)]
    pub role: String,
}

#[derive(Debug)]
pub struct Coordinator {
    pub spec: CoordinatorSpec,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub ready_file: PathBuf,
    pub log: PathBuf,
    pub tls: CertPair,
    proc: Option<Proc>,
    ready: Option<ReadyFile>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn path_str(p: &Path) -> String {
    quoted(&p.display().to_string())
}

impl Coordinator {
    /// Issues the coordinator's certificate and writes its config in `dir`;
    /// does not start it.
    pub fn create(dir: &Path, pki: &Pki, spec: CoordinatorSpec) -> Coordinator {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut sans = vec!["127.0.0.1", "localhost"];
        if !sans.contains(&spec.listen_ip.as_str()) {
            sans.push(&spec.listen_ip);
        }
        let tls = pki.issue("coordinator", &spec.name, &sans, None);
        let coordinator = Coordinator {
            dir: dir.to_path_buf(),
            config_path: dir.join("coordinator.toml"),
            data_dir: dir.join("data"),
            ready_file: dir.join("ready.json"),
            log: dir.join("coordinator.log"),
            tls,
            spec,
            proc: None,
            ready: None,
        };
        coordinator.write_config(pki);
        coordinator
    }

    fn write_config(&self, pki: &Pki) {
        let s = &self.spec;
        let mut toml = format!(
            "name = {name}\n\
             data_dir = {data}\n\
             \n\
             [listen]\n\
             grpc = \"{ip}:{grpc}\"\n\
             http = \"{ip}:{http}\"\n\
             \n\
             [tls]\n\
             ca_cert = {ca_cert}\n\
             ca_key = {ca_key}\n\
             cert = {cert}\n\
             key = {key}\n\
             \n\
             [agents]\n\
             lost_timeout = {lost}\n",
            name = quoted(&s.name),
            ip = s.listen_ip,
            data = path_str(&self.data_dir),
            grpc = s.grpc_port,
            http = s.http_port,
            ca_cert = path_str(&pki.ca_cert()),
            ca_key = path_str(&pki.ca_key()),
            cert = path_str(&self.tls.cert),
            key = path_str(&self.tls.key),
            lost = quoted(&s.lost_timeout),
        );
        if let Some(v) = &s.cert_lifetime {
            toml.push_str(&format!("cert_lifetime = {}\n", quoted(v)));
        }
        if let Some(v) = &s.max_token_ttl {
            toml.push_str(&format!("max_token_ttl = {}\n", quoted(v)));
        }
        if let Some(v) = s.max_message_bytes {
            toml.push_str(&format!("max_message_bytes = {v}\n"));
        }
        if !s.extra_toml.is_empty() {
            toml.push('\n');
            toml.push_str(&s.extra_toml);
            toml.push('\n');
        }
        std::fs::write(&self.config_path, toml)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config_path.display()));
    }

    /// Starts the process and waits for its ready file. Panics with the log
    /// if it exits or is not ready in time.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "coordinator already started");
        let _ = std::fs::remove_file(&self.ready_file);
        self.ready = None;
        let mut cmd = match self.spec.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin_path("drover-coordinator"));
                cmd
            }
            None => Command::new(bin_path("drover-coordinator")),
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--ready-file")
            .arg(&self.ready_file);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain log files, without colour codes.
        cmd.env("NO_COLOR", "1");
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn("drover-coordinator", cmd, &self.log);
        let ready_file = self.ready_file.clone();
        let accept_standby = self.spec.standby;
        let log = self.log.clone();
        let ready = wait_until_with(
            READY_TIMEOUT,
            &format!(
                "the coordinator writes its ready file {}",
                ready_file.display()
            ),
            || {
                if let Some(status) = proc.try_exit() {
                    panic!(
                        "drover-coordinator exited before it was ready ({status}):\n{}",
                        proc.describe(60)
                    );
                }
                let text = std::fs::read_to_string(&ready_file).ok()?;
                // A standby is ready once it leads, unless the test wants
                // standbys (HA tests start several coordinators).
                serde_json::from_str::<ReadyFile>(&text)
                    .ok()
                    .filter(|r| r.role != "standby" || accept_standby)
            },
            || {
                format!(
                    "--- drover-coordinator log {}:\n{}",
                    log.display(),
                    tail(&log, 60)
                )
            },
        );
        self.ready = Some(ready);
        self.proc = Some(proc);
    }

    /// What its ready file says now: `single`, `standby` or `leader` ("" when
    /// none).
    pub fn role(&self) -> String {
        std::fs::read_to_string(&self.ready_file)
            .ok()
            .and_then(|t| serde_json::from_str::<ReadyFile>(&t).ok())
            .map(|r| r.role)
            .unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| p.is_running())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait (graceful stop); returns whether it exited on its
    /// own within `grace` and with status 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        match self.proc.take() {
            Some(p) => {
                let (status, in_time) = p.terminate(grace);
                in_time && status.is_some_and(|s| s.success())
            }
            None => true,
        }
    }

    /// SIGKILL, then start again on the same config and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub fn ready(&self) -> &ReadyFile {
        self.ready
            .as_ref()
            .expect("coordinator has not been started")
    }

    /// The process, for signals and its exit status.
    pub fn process(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// gRPC (mTLS) address, `127.0.0.1:PORT`.
    pub fn grpc_addr(&self) -> String {
        self.ready().grpc.clone()
    }

    /// Plain HTTP side port address.
    pub fn http_addr(&self) -> String {
        self.ready().http.clone()
    }

    /// `GET /metrics` text.
    pub fn try_metrics(&self) -> Result<String, String> {
        match http_get(&self.http_addr(), "/metrics") {
            Ok((200, body)) => Ok(body),
            Ok((code, body)) => Err(format!("GET /metrics: HTTP {code}: {body}")),
            Err(e) => Err(format!("GET /metrics on {}: {e}", self.http_addr())),
        }
    }

    #[track_caller]
    pub fn metrics(&self) -> String {
        self.try_metrics().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sum of `drover_refusals_total` over all reasons.
    #[track_caller]
    pub fn refusals(&self) -> f64 {
        metrics_sum(&self.metrics(), "drover_refusals_total")
    }

    /// `drover_refusals_total` per reason label, for messages.
    pub fn refusals_by_reason(&self) -> String {
        match self.try_metrics() {
            Ok(text) => metrics_samples(&text, "drover_refusals_total")
                .iter()
                .map(|(labels, v)| format!("{{{labels}}} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => e,
        }
    }

    /// Name, state and log tail for failure messages.
    pub fn describe(&self, lines: usize) -> String {
        match self.proc.as_ref() {
            Some(p) => p.describe(lines),
            None => format!(
                "--- drover-coordinator (not running) log {}:\n{}",
                self.log.display(),
                tail(&self.log, lines)
            ),
        }
    }

    /// The log so far, for checks on what was logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
