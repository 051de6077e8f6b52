//! A whole local fleet: CA, coordinator, operator and viewer identities and
//! any number of enrolled agents, in one dir that goes away on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::agent::{Agent, AgentSpec};
use super::cli::{Cli, HostView, TokenView};
use super::coordinator::{Coordinator, CoordinatorSpec};
use super::pki::{CertPair, Pki};
use super::process::{CmdOutput, signal};
use super::{free_port, pause, wait_until_with};

/// Default timeout for waits on the fleet: generous, CI has 2 cores and
/// runs tests in parallel.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct FleetBuilder {
    dir: Option<PathBuf>,
    coordinator: CoordinatorSpec,
    agents: Vec<AgentSpec>,
    no_wait: bool,
}

impl FleetBuilder {
    /// Put the fleet in `dir` (created, and kept after drop) instead of a
    /// temp dir.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn coordinator(mut self, f: impl FnOnce(&mut CoordinatorSpec)) -> Self {
        f(&mut self.coordinator);
        self
    }

    pub fn lost_timeout(self, t: &str) -> Self {
        self.coordinator(|c| c.lost_timeout = t.to_string())
    }

    pub fn cert_lifetime(self, t: &str) -> Self {
        self.coordinator(|c| c.cert_lifetime = Some(t.to_string()))
    }

    /// Fixed (free) gRPC and HTTP ports, so a restarted coordinator comes
    /// back where the agents look for it.
    pub fn fixed_ports(self) -> Self {
        self.coordinator(|c| {
            c.grpc_port = free_port();
            c.http_port = free_port();
        })
    }

    pub fn agent(mut self, spec: AgentSpec) -> Self {
        self.agents.push(spec);
        self
    }

    /// `n` plain agents h1..hn.
    pub fn agents(mut self, n: usize) -> Self {
        for i in 1..=n {
            self.agents.push(AgentSpec::new(&format!("h{i}")));
        }
        self
    }

    /// Do not wait for the agents to be connected and healthy.
    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }

    /// Creates the CA and identities, starts the coordinator, enrols and
    /// starts every agent, and (unless `no_wait`) waits until all are
    /// connected with healthy instances.
    pub fn start(self) -> Fleet {
        let (tmp, dir) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("drover-e2e-")
                    .tempdir()
                    .expect("create temp dir");
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("create {}: {e}", home.display()));
        let pki = Pki::init(&dir.join("pki"), &home);
        let operator_cert = pki.issue("operator", "alice", &[], None);
        let viewer_cert = pki.issue("viewer", "victor", &[], None);
        let mut coordinator = Coordinator::create(&dir.join("coordinator"), &pki, self.coordinator);
        coordinator.start();
        let mut fleet = Fleet {
            dir,
            home,
            pki,
            coordinator,
            standbys: Vec::new(),
            agents: Vec::new(),
            operator_cert,
            viewer_cert,
            _tmp: tmp,
        };
        let ids: Vec<String> = self.agents.iter().map(|a| a.host_id.clone()).collect();
        for spec in self.agents {
            fleet.add_agent(spec);
        }
        if !self.no_wait && !ids.is_empty() {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            fleet.wait_healthy(&ids);
        }
        fleet
    }
}

/// A running local fleet. Dropping it kills every process it started.
#[derive(Debug)]
pub struct Fleet {
    pub dir: PathBuf,
    /// HOME of every CLI call.
    pub home: PathBuf,
    pub pki: Pki,
    pub coordinator: Coordinator,
    /// HA: more coordinators on the same etcd, started as standbys.
    pub standbys: Vec<Coordinator>,
    pub agents: Vec<Agent>,
    pub operator_cert: CertPair,
    pub viewer_cert: CertPair,
    // Last: removed after the processes are gone.
    _tmp: Option<TempDir>,
}

impl Fleet {
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// The CLI as the operator (read and write).
    pub fn operator(&self) -> Cli {
        self.cli_as(Some(self.operator_cert.clone()))
    }

    /// The CLI as the viewer (read only).
    pub fn viewer(&self) -> Cli {
        self.cli_as(Some(self.viewer_cert.clone()))
    }

    /// The gRPC address of the coordinator that leads now: with standbys
    /// (HA), the one whose ready file says so; else the only one.
    pub fn leader_addr(&self) -> String {
        std::iter::once(&self.coordinator)
            .chain(&self.standbys)
            .filter(|c| c.is_running())
            .find(|c| c.role() == "leader")
            .unwrap_or(&self.coordinator)
            .grpc_addr()
    }

    /// The CLI with any certificate (or none), at the leader.
    pub fn cli_as(&self, identity: Option<CertPair>) -> Cli {
        Cli::new(
            &self.leader_addr(),
            &self.pki.ca_cert(),
            identity,
            &self.home,
        )
    }

    /// `drover ARGS` as the operator.
    pub fn cli(&self, args: &[&str]) -> CmdOutput {
        self.operator().run(args)
    }

    /// `drover agents -o json` as the operator; panics with diagnostics if
    /// it fails.
    #[track_caller]
    pub fn agents_json(&self) -> Vec<HostView> {
        self.agents_selected(None)
    }

    #[track_caller]
    pub fn agents_selected(&self, selector: Option<&str>) -> Vec<HostView> {
        match self.operator().try_agents(selector) {
            Ok(hosts) => hosts,
            Err(e) => panic!("{e}\n{}", self.diagnostics()),
        }
    }

    /// The host as listed by `drover agents -o json`, `None` if absent or if
    /// the call failed.
    pub fn host(&self, host_id: &str) -> Option<HostView> {
        self.operator()
            .try_agents(None)
            .ok()?
            .into_iter()
            .find(|h| h.host_id == host_id)
    }

    /// A join token from the operator (TTL 10 minutes).
    #[track_caller]
    pub fn token(&self) -> TokenView {
        match self.operator().try_token(Some("10m"), &[]) {
            Ok(t) => t,
            Err(e) => panic!("{e}\n{}", self.diagnostics()),
        }
    }

    /// Writes the agent's config; does not enrol or start it. Returns its
    /// index in `agents`.
    pub fn create_agent(&mut self, spec: AgentSpec) -> usize {
        let dir = self.dir.join("agents").join(&spec.host_id);
        let agent = Agent::create(&dir, spec, &[self.coordinator.grpc_addr()]);
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// Enrols agent `idx` with a fresh token; panics with the output on
    /// failure.
    #[track_caller]
    pub fn enroll(&self, idx: usize) {
        let token = self.token();
        let agent = &self.agents[idx];
        let out = agent.enroll(
            &self.coordinator.grpc_addr(),
            &token.token,
            &token.ca_fingerprint,
        );
        if !out.success() {
            panic!(
                "enrolment of {} failed:\n{out}\n{}",
                agent.host_id(),
                self.diagnostics()
            );
        }
    }

    /// Creates, enrols and starts an agent; does not wait for it.
    pub fn add_agent(&mut self, spec: AgentSpec) -> usize {
        let idx = self.create_agent(spec);
        self.enroll(idx);
        self.agents[idx].start();
        idx
    }

    #[track_caller]
    pub fn agent(&self, host_id: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.host_id() == host_id)
            .unwrap_or_else(|| panic!("no agent {host_id} in this fleet"))
    }

    #[track_caller]
    pub fn agent_mut(&mut self, host_id: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.host_id() == host_id)
            .unwrap_or_else(|| panic!("no agent {host_id} in this fleet"))
    }

    /// Waits for `f` with the fleet's diagnostics on timeout.
    #[track_caller]
    pub fn wait<P: super::Poll>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut() -> P,
    ) -> P::Out {
        wait_until_with(timeout, what, f, || self.diagnostics())
    }

    /// Waits until every host in `ids` is connected.
    pub fn wait_connected(&self, ids: &[&str]) -> Vec<HostView> {
        self.wait(WAIT, &format!("{ids:?} are connected"), || {
            let hosts = self.operator().try_agents(None).ok()?;
            let all = ids
                .iter()
                .all(|id| hosts.iter().any(|h| h.host_id == *id && h.connected()));
            all.then_some(hosts)
        })
    }

    /// Waits until every host in `ids` is connected, reports memory and has
    /// all instances running and healthy.
    pub fn wait_healthy(&self, ids: &[&str]) -> Vec<HostView> {
        self.wait(
            WAIT,
            &format!("{ids:?} are connected with healthy instances"),
            || {
                let hosts = self.operator().try_agents(None).ok()?;
                let all = ids
                    .iter()
                    .all(|id| hosts.iter().any(|h| h.host_id == *id && h.healthy()));
                all.then_some(hosts)
            },
        )
    }

    /// Waits until `host_id` has `status`; returns the host.
    pub fn wait_status(&self, host_id: &str, status: &str, timeout: Duration) -> HostView {
        self.wait(timeout, &format!("{host_id} has status {status}"), || {
            self.host(host_id).filter(|h| h.status == status)
        })
    }

    /// `drover artifact push FILE --service S --version V -o json` as the
    /// operator; returns the digest. Panics with diagnostics on failure.
    #[track_caller]
    pub fn push_artifact(&self, file: &Path, service: &str, version: &str) -> String {
        let path = file.to_string_lossy();
        let out = self.cli(&[
            "artifact",
            "push",
            &path,
            "--service",
            service,
            "--version",
            version,
            "-o",
            "json",
        ]);
        if !out.success() {
            panic!("push of {path} failed:\n{out}\n{}", self.diagnostics());
        }
        let pushed: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("cannot parse the push's JSON: {e}\n{out}"));
        match pushed["digest"].as_str() {
            Some(d) if d.len() == 64 => d.to_string(),
            _ => panic!("no digest in the push's JSON:\n{out}"),
        }
    }

    /// Where the coordinator stores the artifact with `digest`.
    pub fn artifact_file(&self, digest: &str) -> PathBuf {
        self.coordinator
            .data_dir
            .join("artifacts")
            .join("sha256")
            .join(digest)
    }

    /// Replaces the stored bytes of artifact `digest` behind the
    /// coordinator's back (disk corruption, tampering): agents fetching it
    /// get bytes that do not hash to the digest.
    #[track_caller]
    pub fn corrupt_artifact(&self, digest: &str, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.artifact_file(digest);
        assert!(
            path.is_file(),
            "no stored artifact at {}\n{}",
            path.display(),
            self.diagnostics()
        );
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Sum of `drover_refusals_total`, panicking with diagnostics if the
    /// metrics endpoint fails.
    #[track_caller]
    pub fn refusals(&self) -> f64 {
        match self.coordinator.try_metrics() {
            Ok(text) => super::metrics_sum(&text, "drover_refusals_total"),
            Err(e) => panic!("{e}\n{}", self.diagnostics()),
        }
    }

    /// Waits until `drover_refusals_total` exceeds `before`.
    pub fn wait_refusal_counted(&self, before: f64, what: &str) -> f64 {
        self.wait(
            Duration::from_secs(15),
            &format!("drover_refusals_total grows past {before} after {what}"),
            || {
                let now = self.coordinator.try_metrics().ok()?;
                let now = super::metrics_sum(&now, "drover_refusals_total");
                (now > before).then_some(now)
            },
        )
    }

    /// Log tails of every process and the current listing, for failure
    /// messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::from("==== fleet diagnostics ====\n");
        out.push_str(&self.coordinator.describe(60));
        for agent in &self.agents {
            out.push_str(&agent.describe(30));
        }
        out.push_str(&format!(
            "--- refusals by reason: {}\n",
            self.coordinator.refusals_by_reason()
        ));
        match self.operator().try_agents(None) {
            Ok(hosts) => {
                out.push_str("--- drover agents:\n");
                for h in hosts {
                    out.push_str(&format!(
                        "    {} status={} reason={:?} labels={:?} instances={:?}\n",
                        h.host_id,
                        h.status,
                        h.status_reason,
                        h.labels,
                        h.instances
                            .iter()
                            .map(|i| format!(
                                "{} {} {} restarts={} pid={} err={:?}",
                                i.id, i.state, i.health, i.restarts, i.pid, i.last_check_error
                            ))
                            .collect::<Vec<_>>()
                    ));
                }
            }
            Err(e) => out.push_str(&format!("--- drover agents failed:\n{e}\n")),
        }
        out
    }

    /// Graceful stop, for the demo: SIGTERM to agents, their instances and
    /// the coordinator, SIGKILL whatever is left after `grace`.
    pub fn shutdown(&mut self, grace: Duration) {
        let mut instance_pids = Vec::new();
        for agent in &mut self.agents {
            agent.terminate(grace);
            instance_pids.extend(agent.signal_instances(libc::SIGTERM));
        }
        let start = Instant::now();
        while instance_pids.iter().any(|pid| super::process::alive(*pid)) && start.elapsed() < grace
        {
            pause(Duration::from_millis(50));
        }
        for pid in instance_pids {
            if super::process::alive(pid) {
                signal(-(pid as i32), libc::SIGKILL);
                signal(pid as i32, libc::SIGKILL);
            }
        }
        for agent in &self.agents {
            agent.kill_instances();
        }
        self.coordinator.terminate(grace);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Agents (and their instances) first, so none reconnects anywhere.
        self.agents.clear();
        self.coordinator.kill();
    }
}
