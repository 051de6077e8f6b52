//! A `drover-agent` process in its own dir, supervising (by default) one
//! drover-sample instance on a free port.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::pki::CertPair;
use super::process::{CmdOutput, Proc, alive, run_cmd, signal};
use super::{bin_path, free_port, tail};

const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// An `[[instance]]` block.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: String,
    pub service: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stop_timeout: String,
    /// HTTP health check URL; `None` for no check.
    pub health_url: Option<String>,
    pub health_interval: String,
    pub health_timeout: String,
    pub rise: u32,
    pub fall: u32,
    /// Extra lines inside the `[[instance]]` block (before its health table).
    pub extra_toml: String,
    /// The binary the instance's process ends up running when `command` is
    /// a wrapper that execs it (a release's `run` script); how the harness
    /// recognises its pids to kill them. `None`: `command` itself.
    pub exe: Option<PathBuf>,
}

impl InstanceSpec {
    /// drover-sample on `port`, checked on `/healthz` every 200 ms (rise 1,
    /// fall 2). It exits when the harness process is gone.
    pub fn sample(name: &str, port: u16, version: &str) -> InstanceSpec {
        InstanceSpec {
            name: name.to_string(),
            service: name.to_string(),
            command: bin_path("drover-sample"),
            args: vec![
                "--port".into(),
                port.to_string(),
                "--version".into(),
                version.to_string(),
            ],
            env: vec![(
                "SAMPLE_WATCH_PID".to_string(),
                std::process::id().to_string(),
            )],
            stop_timeout: "5s".to_string(),
            health_url: Some(format!("http://127.0.0.1:{port}/healthz")),
            health_interval: "200ms".to_string(),
            health_timeout: "1s".to_string(),
            rise: 1,
            fall: 2,
            extra_toml: String::new(),
            exe: None,
        }
    }

    fn to_toml(&self) -> String {
        let mut t = format!(
            "[[instance]]\n\
             name = {name}\n\
             service = {service}\n\
             runtime = \"process\"\n\
             command = {command}\n\
             args = [{args}]\n\
             stop_signal = \"SIGTERM\"\n\
             stop_timeout = {stop_timeout}\n",
            name = quoted(&self.name),
            service = quoted(&self.service),
            command = quoted(&self.command.display().to_string()),
            args = self
                .args
                .iter()
                .map(|a| quoted(a))
                .collect::<Vec<_>>()
                .join(", "),
            stop_timeout = quoted(&self.stop_timeout),
        );
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
                .collect::<Vec<_>>()
                .join(", ");
            t.push_str(&format!("env = {{ {env} }}\n"));
        }
        if !self.extra_toml.is_empty() {
            t.push_str(&self.extra_toml);
            t.push('\n');
        }
        if let Some(url) = &self.health_url {
            t.push_str(&format!(
                "[instance.health]\n\
                 type = \"http\"\n\
                 url = {url}\n\
                 expect_status = 200\n\
                 interval = {interval}\n\
                 timeout = {timeout}\n\
                 rise = {rise}\n\
                 fall = {fall}\n",
                url = quoted(url),
                interval = quoted(&self.health_interval),
                timeout = quoted(&self.health_timeout),
                rise = self.rise,
                fall = self.fall,
            ));
        }
        t
    }
}

/// What goes into an agent's config.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub host_id: String,
    pub labels: Vec<(String, String)>,
    pub report_interval: String,
    /// Instances; [`AgentSpec::new`] adds one drover-sample named `web`.
    pub instances: Vec<InstanceSpec>,
    /// Coordinator addresses; `None` means the fleet's coordinator.
    pub coordinators: Option<Vec<String>>,
    /// Extra top-level keys (written before any table).
    pub extra_top: String,
    /// Extra tables appended at the end.
    pub extra_toml: String,
    /// The `drover-agent` binary to run; `None`: [`bin_path`]'s.
    pub binary: Option<PathBuf>,
    /// Runs the agent (its enrolment too, and so its instances) under this
    /// argv prefix, e.g. `ip netns exec SITE` for a host in a network
    /// namespace. The prefix must exec its command.
    pub prefix: Vec<String>,
}

impl AgentSpec {
    /// Host `host_id`, report interval 500 ms, one drover-sample instance
    /// `web` (version v1) on a free port.
    pub fn new(host_id: &str) -> AgentSpec {
        AgentSpec {
            host_id: host_id.to_string(),
            labels: Vec::new(),
            report_interval: "500ms".to_string(),
            instances: vec![InstanceSpec::sample("web", free_port(), "v1")],
            coordinators: None,
            extra_top: String::new(),
            extra_toml: String::new(),
            binary: None,
            prefix: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> AgentSpec {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn report_interval(mut self, interval: &str) -> AgentSpec {
        self.report_interval = interval.to_string();
        self
    }

    /// No instances at all.
    pub fn no_instances(mut self) -> AgentSpec {
        self.instances.clear();
        self
    }

    pub fn instance(mut self, instance: InstanceSpec) -> AgentSpec {
        self.instances.push(instance);
        self
    }

    /// Port of the first instance's health URL, if any.
    pub fn sample_port(&self) -> Option<u16> {
        let url = self.instances.first()?.health_url.as_ref()?;
        let rest = url.strip_prefix("http://127.0.0.1:")?;
        rest.split('/').next()?.parse().ok()
    }

    pub fn to_toml(&self, data_dir: &Path, coordinators: &[String]) -> String {
        let mut t = format!(
            "host_id = {host}\n\
             data_dir = {data}\n\
             coordinators = [{coords}]\n\
             report_interval = {interval}\n",
            host = quoted(&self.host_id),
            data = quoted(&data_dir.display().to_string()),
            coords = coordinators
                .iter()
                .map(|c| quoted(c))
                .collect::<Vec<_>>()
                .join(", "),
            interval = quoted(&self.report_interval),
        );
        if !self.extra_top.is_empty() {
            t.push_str(&self.extra_top);
            t.push('\n');
        }
        t.push_str("\n[labels]\n");
        for (k, v) in &self.labels {
            t.push_str(&format!("{} = {}\n", quoted(k), quoted(v)));
        }
        for instance in &self.instances {
            t.push('\n');
            t.push_str(&instance.to_toml());
        }
        if !self.extra_toml.is_empty() {
            t.push('\n');
            t.push_str(&self.extra_toml);
            t.push('\n');
        }
        t
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An agent: config and data dir, and the process once started. On drop the
/// agent is SIGKILLed, and so is every instance it started (they run in their
/// own sessions, so killing the agent alone would leave them running).
#[derive(Debug)]
pub struct Agent {
    pub spec: AgentSpec,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    /// Every instance pid seen, killed on drop if still alive.
    seen_pids: Mutex<BTreeSet<u32>>,
}

impl Agent {
    /// Writes the config in `dir`; does not enrol or start.
    pub fn create(dir: &Path, spec: AgentSpec, coordinators: &[String]) -> Agent {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let agent = Agent {
            config_path: dir.join("agent.toml"),
            data_dir: dir.join("data"),
            log: dir.join("agent.log"),
            dir: dir.to_path_buf(),
            spec,
            proc: None,
            seen_pids: Mutex::new(BTreeSet::new()),
        };
        agent.write_config(coordinators);
        agent
    }

    pub fn host_id(&self) -> &str {
        &self.spec.host_id
    }

    /// (Re)writes the config file, e.g. for new coordinator addresses.
    pub fn write_config(&self, coordinators: &[String]) {
        let coordinators = self.spec.coordinators.as_deref().unwrap_or(coordinators);
        std::fs::write(
            &self.config_path,
            self.spec.to_toml(&self.data_dir, coordinators),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", self.config_path.display()));
    }

    fn command(&self) -> Command {
        let binary = self
            .spec
            .binary
            .clone()
            .unwrap_or_else(|| bin_path("drover-agent"));
        let mut cmd = match self.spec.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("--config").arg(&self.config_path);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain log files, without colour codes.
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// `drover-agent --config X enroll --coordinator ADDR --token T
    /// --ca-fingerprint FP`; the output is returned unchecked.
    pub fn enroll(&self, coordinator: &str, token: &str, fingerprint: &str) -> CmdOutput {
        self.enroll_with(coordinator, token, fingerprint, &[])
    }

    /// [`Agent::enroll`] with extra arguments (e.g. `--force`).
    pub fn enroll_with(
        &self,
        coordinator: &str,
        token: &str,
        fingerprint: &str,
        extra: &[&str],
    ) -> CmdOutput {
        let mut cmd = self.command();
        cmd.args([
            "enroll",
            "--coordinator",
            coordinator,
            "--token",
            token,
            "--ca-fingerprint",
            fingerprint,
        ]);
        cmd.args(extra);
        run_cmd(cmd, ENROLL_TIMEOUT)
    }

    /// Starts `drover-agent --config X run`.
    pub fn start(&mut self) {
        assert!(
            self.proc.is_none(),
            "agent {} already started",
            self.host_id()
        );
        let mut cmd = self.command();
        cmd.arg("run");
        self.proc = Some(Proc::spawn(
            &format!("drover-agent {}", self.host_id()),
            cmd,
            &self.log,
        ));
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| p.is_running())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Sends `sig` to the agent process (SIGSTOP freezes it with its
    /// connection open; SIGCONT resumes it).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    /// SIGKILL the agent only; its instances keep running.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait; returns whether it exited 0 within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        match self.proc.take() {
            Some(p) => {
                let (status, in_time) = p.terminate(grace);
                in_time && status.is_some_and(|s| s.success())
            }
            None => true,
        }
    }

    /// SIGKILL, then start again with the same config and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// The exit status, if the agent process has exited.
    pub fn try_exit(&self) -> Option<std::process::ExitStatus> {
        self.proc.as_ref().and_then(|p| p.try_exit())
    }

    /// The agent's certificate and key (after enrolment).
    pub fn tls(&self) -> CertPair {
        CertPair {
            cert: self.data_dir.join("tls").join("agent.pem"),
            key: self.data_dir.join("tls").join("agent.key"),
        }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("instances").join(name)
    }

    /// The pid in `<data_dir>/instances/<name>/pid` (first token).
    pub fn instance_pid(&self, name: &str) -> Option<u32> {
        let pid = read_pidfile(&self.instance_dir(name).join("pid"))?;
        if let Ok(mut seen) = self.seen_pids.lock() {
            seen.insert(pid);
        }
        Some(pid)
    }

    /// SIGKILLs the instance's process (read from its pidfile); returns the
    /// pid it killed.
    #[track_caller]
    pub fn kill_instance(&self, name: &str) -> u32 {
        let pid = self.instance_pid(name).unwrap_or_else(|| {
            panic!(
                "no pidfile for instance {name} of {} at {}",
                self.host_id(),
                self.instance_dir(name).join("pid").display()
            )
        });
        signal(pid as i32, libc::SIGKILL);
        pid
    }

    /// SIGKILLs every instance process this agent started.
    pub fn kill_instances(&self) {
        self.signal_instances(libc::SIGKILL);
    }

    /// Sends `sig` to every instance process this agent started (from the
    /// pidfiles, and any pid seen earlier), checking each still runs the
    /// instance's command so a reused pid is left alone. Returns the pids.
    pub fn signal_instances(&self, sig: libc::c_int) -> Vec<u32> {
        let mut pids: BTreeSet<u32> = self.seen_pids.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("instances")) {
            for entry in entries.flatten() {
                if let Some(pid) = read_pidfile(&entry.path().join("pid")) {
                    pids.insert(pid);
                }
            }
        }
        let commands: Vec<PathBuf> = self
            .spec
            .instances
            .iter()
            .map(|i| {
                let exe = i.exe.as_ref().unwrap_or(&i.command);
                exe.canonicalize().unwrap_or_else(|_| exe.clone())
            })
            .collect();
        let mut signalled = Vec::new();
        for pid in pids {
            if alive(pid) && runs_one_of(pid, &commands) {
                // Instances run in their own session: pgid == pid.
                signal(-(pid as i32), sig);
                signal(pid as i32, sig);
                signalled.push(pid);
            }
        }
        signalled
    }

    /// Command ids in `<data_dir>/journal/executions.log`: one line per
    /// actual run of a step, so an id listed twice ran twice.
    pub fn executions(&self) -> Vec<String> {
        std::fs::read_to_string(self.data_dir.join("journal").join("executions.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("executed ").map(str::to_string))
            .collect()
    }

    /// Ids `<data_dir>/journal/journal.jsonl` records as finished.
    pub fn journal_finished(&self) -> BTreeSet<String> {
        std::fs::read_to_string(self.data_dir.join("journal").join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "finished")
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect()
    }

    /// Name, state and log tail for failure messages, plus instance logs.
    pub fn describe(&self, lines: usize) -> String {
        let mut out = match self.proc.as_ref() {
            Some(p) => p.describe(lines),
            None => format!(
                "--- drover-agent {} (not running) log {}:\n{}",
                self.host_id(),
                self.log.display(),
                tail(&self.log, lines)
            ),
        };
        for instance in &self.spec.instances {
            let log = self.instance_dir(&instance.name).join("output.log");
            if log.exists() {
                out.push_str(&format!(
                    "--- instance {}@{} output {}:\n{}",
                    instance.name,
                    self.host_id(),
                    log.display(),
                    tail(&log, 10)
                ));
            }
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.kill_instances();
    }
}

fn read_pidfile(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Whether /proc/PID/exe is one of `commands` (a binary replaced by a
/// rebuild shows as `PATH (deleted)`).
fn runs_one_of(pid: u32, commands: &[PathBuf]) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    commands
        .iter()
        .any(|c| exe.starts_with(&*c.to_string_lossy()))
}
