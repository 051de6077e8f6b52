//! A fleet ready for rolling updates: agents whose one `web` instance runs
//! the deployed release (`{current}/run`, see [`release`](super::release)),
//! a real HAProxy in front of them that drover drains through, and the
//! `drover rollout` commands with the JSON they print.
//!
//! Instances start with no release at all; [`WebFleet::deploy_initial`]
//! brings every one to a first version with a rollout that may take them
//! all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::agent::{AgentSpec, InstanceSpec};
use super::coordinator::CoordinatorSpec;
use super::fleet::{Fleet, WAIT};
use super::haproxy::{Checks, Haproxy, Server};
use super::process::{CmdOutput, run_cmd};
use super::release::{sample_release, write_artifact};
use super::{bin_path, free_port, http_get};

mod view;

pub use view::{
    CountsView, PlanView, PlannedBatchView, ReleaseView, RolloutEventView, RolloutInstanceView,
    RolloutView,
};

/// The service, HAProxy backend and instance name of a [`WebFleet`].
pub const SERVICE: &str = "web";
/// Longest a blocking `drover rollout` command may take.
pub const ROLLOUT_CMD_TIMEOUT: Duration = Duration::from_secs(50);
/// Spec settings that keep a rollout short; added to `rollout start`
/// unless the caller passes the flag itself.
pub const FAST: &[(&str, &str)] = &[
    ("--min-healthy-time", "500ms"),
    ("--healthy-deadline", "10s"),
    ("--step-timeout", "10s"),
    ("--progress-deadline", "30s"),
];
/// Largest release the agents unpack: releases are a script and a
/// VERSION file, and a decompression bomb goes well over it.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024;

/// Builds a [`WebFleet`].
pub struct WebFleetBuilder {
    hosts: Vec<(String, Vec<(String, String)>)>,
    coordinator: CoordinatorSpec,
    report_interval: String,
    health_interval: Option<String>,
    drain_timeout: String,
    max_unpacked_bytes: u64,
    dir: Option<PathBuf>,
    instance_toml: String,
    instance_metrics: bool,
    colors: bool,
    haproxy_checks: Checks,
    /// HA: `[store]` of a shared etcd; a second coordinator stands by.
    ha: Option<String>,
    /// HA with `c1` in a network namespace: where the standby listens.
    standby_ip: String,
    /// Host -> tables appended to its agent's config.
    agent_toml: BTreeMap<String, String>,
}

impl Default for WebFleetBuilder {
    fn default() -> Self {
        WebFleetBuilder {
            hosts: Vec::new(),
            coordinator: CoordinatorSpec::default(),
            report_interval: "200ms".to_string(),
            health_interval: None,
            drain_timeout: "5s".to_string(),
            max_unpacked_bytes: MAX_UNPACKED_BYTES,
            instance_toml: String::new(),
            instance_metrics: false,
            colors: false,
            dir: None,
            haproxy_checks: Checks::default(),
            ha: None,
            standby_ip: "127.0.0.1".to_string(),
            agent_toml: BTreeMap::new(),
        }
    }
}

impl WebFleetBuilder {
    /// Hosts h1..hn.
    pub fn hosts(mut self, n: usize) -> Self {
        for i in 1..=n {
            self.hosts.push((format!("h{i}"), Vec::new()));
        }
        self
    }

    /// One host with labels (`zone=a`).
    pub fn host(mut self, id: &str, labels: &[(&str, &str)]) -> Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.hosts.push((id.to_string(), labels));
        self
    }

    pub fn coordinator(mut self, f: impl FnOnce(&mut CoordinatorSpec)) -> Self {
        f(&mut self.coordinator);
        self
    }

    /// Fixed (free) coordinator ports, so a restarted coordinator comes
    /// back where the agents and the CLI look for it.
    pub fn fixed_ports(self) -> Self {
        self.coordinator(|c| {
            c.grpc_port = free_port();
            c.http_port = free_port();
        })
    }

    /// Two coordinators on `etcd` (a 3 s lease): `c1` leads, `c2` stands by
    /// (in [`Fleet::standbys`]); the agents know both, and the CLI goes to
    /// whichever leads.
    pub fn ha(self, etcd: &super::etcd::EtcdCluster) -> Self {
        self.ha_with_lease(etcd, "3s")
    }

    /// [`WebFleetBuilder::ha`] with another lease (`"10s"`, the default of
    /// a real deployment).
    pub fn ha_with_lease(mut self, etcd: &super::etcd::EtcdCluster, lease: &str) -> Self {
        let store = format!(
            "{}lease_ttl = \"{lease}\"\n",
            super::etcd::store_toml(etcd, "/drover/")
        );
        self.ha = Some(store.clone());
        self.fixed_ports().coordinator(|c| {
            c.name = "c1".to_string();
            c.extra_toml.push_str(&store);
            // Agents come to a new leader within a few seconds, once in a
            // while more: a restored rollout gives them this long.
            c.lost_timeout = "10s".to_string();
        })
    }

    /// Like [`WebFleetBuilder::ha`], with `c1` (the leader) running in the
    /// network namespace `ns`, so a test can cut it off from etcd, the
    /// standby and the agents while its process keeps running. `c1`
    /// reaches etcd at `c1_etcd` (proxies on `ns.host_ip()`, which a test
    /// can also cut on their own), listens on `ns.ns_ip()`; `c2` listens on
    /// `ns.host_ip()`, where `c1` reaches it.
    pub fn ha_in(
        self,
        etcd: &super::etcd::EtcdCluster,
        ns: &drover_testkit::netns::Netns,
        c1_etcd: &[String],
    ) -> Self {
        let mut this = self.ha(etcd);
        this.standby_ip = ns.host_ip().to_string();
        let store = format!(
            "{}lease_ttl = \"3s\"\n",
            super::etcd::store_toml_for(c1_etcd, "/drover/")
        );
        this.coordinator(|c| {
            c.extra_toml = store;
            c.listen_ip = ns.ns_ip().to_string();
            c.prefix = ns.prefix();
        })
    }

    /// The agents' report interval (default 200 ms).
    pub fn report_interval(mut self, interval: &str) -> Self {
        self.report_interval = interval.to_string();
        self
    }

    /// The `web` instances' health check interval (default: that of
    /// [`InstanceSpec::sample`]).
    pub fn health_interval(mut self, interval: &str) -> Self {
        self.health_interval = Some(interval.to_string());
        self
    }

    /// How HAProxy checks the instances (default [`Checks::default`]).
    pub fn haproxy_checks(mut self, checks: Checks) -> Self {
        self.haproxy_checks = checks;
        self
    }

    /// The agents' `max_unpacked_bytes` (default [`MAX_UNPACKED_BYTES`]).
    pub fn max_unpacked_bytes(mut self, n: u64) -> Self {
        self.max_unpacked_bytes = n;
        self
    }

    /// Blue-green pairs: every host runs `web-blue` and `web-green`
    /// (service `web`, `color` blue and green), each on its own port and
    /// deploy dir, both servers of HAProxy's `web` backend (`hN-blue`,
    /// `hN-green`). [`WebFleet::ports`] is then keyed by server name.
    pub fn colors(mut self) -> Self {
        self.colors = true;
        self
    }

    /// Every `web` instance's own Prometheus metrics are scraped by its
    /// agent (`[instance.metrics]` on the sample's `/metrics`).
    pub fn instance_metrics(mut self) -> Self {
        self.instance_metrics = true;
        self
    }

    /// TOML appended to every `web` instance's block, after its drain
    /// table (for instance an `[instance.hooks]` table).
    pub fn instance_toml(mut self, toml: &str) -> Self {
        self.instance_toml = toml.to_string();
        self
    }

    /// Tables appended to `host`'s agent config (e.g. its `[metrics]`).
    pub fn agent_toml(mut self, host: &str, toml: &str) -> Self {
        self.agent_toml.insert(host.to_string(), toml.to_string());
        self
    }

    /// Keep the fleet's files in `dir` (which must exist) instead of a temp
    /// dir removed on drop.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Creates the dirs, starts HAProxy, the coordinator and every agent,
    /// and waits until all agents are connected (their instances have no
    /// release yet, so none is healthy).
    pub fn start(self) -> WebFleet {
        let (tmp, root) = match &self.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("drover-rollout-")
                    .tempdir()
                    .expect("create temp dir");
                let root = tmp.path().to_path_buf();
                (Some(tmp), root)
            }
        };
        let haproxy_dir = root.join("haproxy");
        let socket = haproxy_dir.join("haproxy.sock");
        let mut ports: BTreeMap<String, u16> = BTreeMap::new();
        let mut specs = Vec::new();
        for (host, labels) in &self.hosts {
            let mut spec = AgentSpec::new(host).report_interval(&self.report_interval);
            spec.labels = labels.clone();
            // Traffic counters and instance metrics every second: a canary's
            // looks in these tests come every second.
            spec.extra_top.push_str("traffic_interval = \"1s\"\n");
            if let Some(toml) = self.agent_toml.get(host) {
                spec.extra_toml.push_str(toml);
            }
            spec.instances.clear();
            let colors: &[Option<&str>] = if self.colors {
                &[Some("blue"), Some("green")]
            } else {
                &[None]
            };
            for color in colors {
                let port = loop {
                    let p = free_port();
                    if !ports.values().any(|q| *q == p) {
                        break p;
                    }
                };
                let (name, server) = match color {
                    Some(c) => (format!("{SERVICE}-{c}"), format!("{host}-{c}")),
                    None => (SERVICE.to_string(), host.clone()),
                };
                ports.insert(server.clone(), port);
                let mut web = web_instance(
                    &server,
                    port,
                    &root.join("deploy").join(host).join(&name),
                    &socket,
                    &self.drain_timeout,
                    self.max_unpacked_bytes,
                );
                if let Some(c) = color {
                    web.name = name.clone();
                    web.service = SERVICE.to_string();
                    web.extra_toml = format!("color = \"{c}\"\n{}", web.extra_toml);
                }
                if let Some(every) = &self.health_interval {
                    web.health_interval.clone_from(every);
                }
                if !self.instance_toml.is_empty() {
                    web.extra_toml.push('\n');
                    web.extra_toml.push_str(&self.instance_toml);
                }
                if self.instance_metrics {
                    web.extra_toml.push_str(&format!(
                        "\n[instance.metrics]\n\
                         url = \"http://127.0.0.1:{port}/metrics\"\n\
                         requests = \"http_requests_total\"\n\
                         latency = \"http_request_duration_seconds\"\n"
                    ));
                }
                spec.instances.push(web);
            }
            specs.push(spec);
        }
        // HA: the standby's ports are known up front, for the agents.
        let standby = self.ha.as_ref().map(|store| {
            let (grpc, http) = loop {
                let (a, b) = (free_port(), free_port());
                let taken = [self.coordinator.grpc_port, self.coordinator.http_port];
                if a != b && !taken.contains(&a) && !taken.contains(&b) {
                    break (a, b);
                }
            };
            CoordinatorSpec {
                name: "c2".to_string(),
                grpc_port: grpc,
                http_port: http,
                lost_timeout: self.coordinator.lost_timeout.clone(),
                cert_lifetime: self.coordinator.cert_lifetime.clone(),
                extra_toml: store.clone(),
                standby: true,
                listen_ip: self.standby_ip.clone(),
                ..CoordinatorSpec::default()
            }
        });
        if let Some(s) = &standby {
            let both = vec![
                format!(
                    "{}:{}",
                    self.coordinator.listen_ip, self.coordinator.grpc_port
                ),
                format!("{}:{}", s.listen_ip, s.grpc_port),
            ];
            for spec in &mut specs {
                spec.coordinators = Some(both.clone());
            }
        }
        let servers: Vec<Server> = ports.iter().map(|(h, p)| Server::new(h, *p)).collect();
        let haproxy = Haproxy::start_with(&haproxy_dir, SERVICE, &servers, &self.haproxy_checks);
        assert_eq!(haproxy.socket(), socket, "HAProxy's socket moved");
        let coordinator = self.coordinator;
        let mut builder = Fleet::builder()
            .dir(&root.join("fleet"))
            .coordinator(|c| *c = coordinator)
            .no_wait();
        for spec in specs {
            builder = builder.agent(spec);
        }
        let mut fleet = builder.start();
        if let Some(spec) = standby {
            let mut c2 =
                super::coordinator::Coordinator::create(&fleet.dir.join("c2"), &fleet.pki, spec);
            c2.start();
            fleet.standbys.push(c2);
        }
        let ids: Vec<&str> = self.hosts.iter().map(|(h, _)| h.as_str()).collect();
        fleet.wait_connected(&ids);
        WebFleet {
            fleet,
            haproxy,
            ports,
            root,
            _tmp: tmp,
        }
    }
}

/// `<root>/deploy/<host>/web`.
fn deploy_dir(root: &Path, host: &str) -> PathBuf {
    root.join("deploy").join(host).join(SERVICE)
}

/// The `web` instance of `host`: the deployed release's `run` on `port`,
/// checked on /healthz, drained through the HAProxy at `socket` (server
/// name = host id).
pub fn web_instance(
    host: &str,
    port: u16,
    deploy_dir: &Path,
    socket: &Path,
    drain_timeout: &str,
    max_unpacked_bytes: u64,
) -> InstanceSpec {
    let mut i = InstanceSpec::sample(SERVICE, port, "unused");
    i.command = PathBuf::from("{current}/run");
    i.args = vec![
        "--port".to_string(),
        port.to_string(),
        "--version-file".to_string(),
        "{current}/VERSION".to_string(),
    ];
    i.exe = Some(bin_path("drover-sample"));
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    i.extra_toml = format!(
        "deploy_dir = {dir}\n\
         keep_releases = 3\n\
         max_unpacked_bytes = {max_unpacked_bytes}\n\
         [instance.drain]\n\
         type = \"haproxy\"\n\
         sockets = [{socket}]\n\
         backend = {backend}\n\
         server = {server}\n\
         timeout = {timeout}",
        dir = q(&deploy_dir.display().to_string()),
        socket = q(&socket.display().to_string()),
        backend = q(SERVICE),
        server = q(host),
        timeout = q(drain_timeout),
    );
    i
}

/// A fleet of `web` instances behind HAProxy. Dropping it kills every
/// process (agents and instances, coordinator, HAProxy) and removes the dir.
pub struct WebFleet {
    pub fleet: Fleet,
    pub haproxy: Haproxy,
    /// Host id -> the port its instance listens on.
    pub ports: BTreeMap<String, u16>,
    pub root: PathBuf,
    // Last: removed once the processes are gone (kept when the caller
    // chose the dir).
    _tmp: Option<TempDir>,
}

impl WebFleet {
    pub fn builder() -> WebFleetBuilder {
        WebFleetBuilder::default()
    }

    /// Starts `spec`'s load through HAProxy and waits until it flows (30
    /// requests answered).
    #[track_caller]
    pub fn start_load(&self, spec: super::load::LoadSpec) -> super::load::Load {
        let load = super::load::Load::start(&self.haproxy.frontend_addr(), spec);
        self.fleet
            .wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 30);
        load
    }

    /// Host ids, sorted.
    pub fn hosts(&self) -> Vec<String> {
        self.ports.keys().cloned().collect()
    }

    pub fn deploy_dir(&self, host: &str) -> PathBuf {
        deploy_dir(&self.root, host)
    }

    /// Where `<deploy_dir>/current` points, as written.
    pub fn current_link(&self, host: &str) -> Option<PathBuf> {
        std::fs::read_link(self.deploy_dir(host).join("current")).ok()
    }

    /// Names in `<deploy_dir>/releases`, sorted.
    pub fn releases_on_disk(&self, host: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.deploy_dir(host).join("releases"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Builds a drover-sample release `version` whose instances get `flags`
    /// (e.g. `--fail-health`), pushes it for `web`, returns its digest.
    #[track_caller]
    pub fn push_release(&self, version: &str, flags: &[&str]) -> String {
        self.push_bytes(version, &sample_release(version, flags))
    }

    /// Pushes `bytes` as `web` version `version`; returns the digest.
    #[track_caller]
    pub fn push_bytes(&self, version: &str, bytes: &[u8]) -> String {
        let file = write_artifact(
            &self.artifacts_dir(),
            &format!("web-{version}.tar.gz"),
            bytes,
        );
        self.fleet.push_artifact(&file, SERVICE, version)
    }

    /// `drover rollout ARGS` as the operator, killed after `timeout`.
    pub fn rollout_cmd(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        let mut all = vec!["rollout"];
        all.extend_from_slice(args);
        run_cmd(self.fleet.operator().command(&all), timeout)
    }

    /// `drover rollout ARGS`, killed after [`ROLLOUT_CMD_TIMEOUT`].
    pub fn rollout(&self, args: &[&str]) -> CmdOutput {
        self.rollout_cmd(args, ROLLOUT_CMD_TIMEOUT)
    }

    /// `start --service web --version V EXTRA`, plus [`FAST`] settings
    /// the caller did not set.
    pub fn start_args(version: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["start", "--service", SERVICE, "--version", version]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        for (flag, value) in FAST {
            let set = extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !set {
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
        args
    }

    /// `drover rollout start` that waits for the end; the output unchecked.
    pub fn start_rollout(&self, version: &str, extra: &[&str]) -> CmdOutput {
        let args = WebFleet::start_args(version, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.rollout(&args)
    }

    /// `drover rollout start ... --detach -o json`; panics unless it
    /// started.
    #[track_caller]
    pub fn start_detached(&self, version: &str, extra: &[&str]) -> RolloutView {
        let mut extra = extra.to_vec();
        extra.extend(["--detach", "-o", "json"]);
        let out = self.start_rollout(version, &extra);
        if !out.success() {
            panic!(
                "detached rollout start failed:\n{out}\n{}",
                self.diagnostics()
            );
        }
        parse_json(&out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `drover rollout status ID --events -o json`, parsed. It exits 1 for
    /// a rollout that failed, was rolled back or aborted, and still prints
    /// the rollout.
    pub fn try_status(&self, id: &str) -> Result<RolloutView, String> {
        let out = self.rollout_cmd(
            &["status", id, "--events", "-o", "json"],
            Duration::from_secs(20),
        );
        let view: RolloutView = match out.code {
            Some(0 | 1) => parse_json(&out)?,
            _ => return Err(out.to_string()),
        };
        let ended_badly = matches!(view.phase.as_str(), "failed" | "rolled_back" | "aborted");
        if out.code == Some(u8::from(ended_badly).into()) {
            Ok(view)
        } else {
            Err(format!(
                "`drover rollout status` must exit 1 exactly when the rollout failed, was rolled back or aborted (phase {}):\n{out}",
                view.phase
            ))
        }
    }

    #[track_caller]
    pub fn status(&self, id: &str) -> RolloutView {
        self.try_status(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// `drover rollout ACTION ID -o json` (pause, resume, abort, rollback);
    /// the rollout after the action. Panics unless it exits 0.
    #[track_caller]
    pub fn act(&self, action: &str, id: &str) -> RolloutView {
        let out = self.rollout(&[action, id, "-o", "json"]);
        if !out.success() {
            panic!(
                "rollout {action} failed:\n{out}\n{}",
                self.diagnostics_for(id)
            );
        }
        parse_json(&out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `drover rollout start ... --dry-run -o json`: the output, and the
    /// plan when it parsed.
    pub fn dry_run(&self, version: &str, extra: &[&str]) -> (CmdOutput, Option<PlanView>) {
        let mut extra = extra.to_vec();
        extra.extend(["--dry-run", "-o", "json"]);
        let out = self.start_rollout(version, &extra);
        let plan = serde_json::from_str(&out.stdout).ok();
        (out, plan)
    }

    /// `drover rollout list -o json` (newest first; without instances and
    /// events).
    pub fn try_list(&self) -> Result<Vec<RolloutView>, String> {
        let out = self.rollout_cmd(&["list", "-o", "json"], Duration::from_secs(20));
        if !out.success() {
            return Err(out.to_string());
        }
        let value: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cannot parse `drover rollout list -o json`: {e}\n{out}"))?;
        let list = match value {
            serde_json::Value::Object(mut o) => o
                .remove("rollouts")
                .unwrap_or(serde_json::Value::Array(Vec::new())),
            v => v,
        };
        serde_json::from_value(list)
            .map_err(|e| format!("cannot read `drover rollout list -o json`: {e}\n{out}"))
    }

    /// The newest rollout of `web`, in full.
    #[track_caller]
    pub fn latest(&self) -> RolloutView {
        let list = self
            .try_list()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
        let newest = list
            .iter()
            .filter(|r| r.service.is_empty() || r.service == SERVICE)
            .max_by_key(|r| r.started_at_ms)
            .unwrap_or_else(|| panic!("no rollout listed: {list:?}\n{}", self.diagnostics()));
        self.status(&newest.id)
    }

    /// Waits until rollout `id` satisfies `pred`; returns it.
    #[track_caller]
    pub fn wait_rollout(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&RolloutView) -> bool,
    ) -> RolloutView {
        super::wait_until_with(
            timeout,
            &format!("rollout {id} {what}"),
            || self.try_status(id).ok().filter(|r| pred(r)),
            || self.diagnostics_for(id),
        )
    }

    /// Waits until rollout `id` reaches a terminal phase.
    #[track_caller]
    pub fn wait_finished(&self, id: &str, timeout: Duration) -> RolloutView {
        self.wait_rollout(id, "finishes", timeout, RolloutView::is_terminal)
    }

    /// Pushes a drover-sample release `version` and brings every instance
    /// to it at once (`--min-healthy 0 --batch 100%`); waits until HAProxy
    /// has every server up and every instance answers with `version`.
    #[track_caller]
    pub fn deploy_initial(&self, version: &str) -> String {
        let digest = self.push_release(version, &[]);
        let out = self.start_rollout(version, &["--min-healthy", "0", "--batch", "100%"]);
        if !out.success() {
            panic!(
                "initial deploy of {version} failed:\n{out}\n{}",
                self.diagnostics()
            );
        }
        self.wait_all_serving(version);
        digest
    }

    /// Waits until HAProxy has every server up and in service and every
    /// instance answers `GET /` with `version`.
    #[track_caller]
    pub fn wait_all_serving(&self, version: &str) {
        let n = self.ports.len() as u32;
        self.haproxy.wait_serving(n, WAIT);
        self.fleet
            .wait(WAIT, &format!("every instance serves {version}"), || {
                self.served_versions()
                    .values()
                    .all(|v| v.as_deref() == Ok(version))
            });
    }

    /// What the instance of `host` answers on `GET /` (asked directly, not
    /// through HAProxy).
    pub fn instance_version(&self, host: &str) -> Result<String, String> {
        let port = self
            .ports
            .get(host)
            .ok_or_else(|| format!("no host {host}"))?;
        let addr = format!("127.0.0.1:{port}");
        match http_get(&addr, "/") {
            Ok((200, body)) => body
                .trim()
                .strip_prefix("drover-sample ")
                .map(str::to_string)
                .ok_or_else(|| format!("{host}: unexpected body {body:?}")),
            Ok((code, body)) => Err(format!("{host}: HTTP {code}: {body:?}")),
            Err(e) => Err(format!("{host} ({addr}): {e}")),
        }
    }

    /// Host -> version served (or why none).
    pub fn served_versions(&self) -> BTreeMap<String, Result<String, String>> {
        self.ports
            .keys()
            .map(|h| (h.clone(), self.instance_version(h)))
            .collect()
    }

    /// Sends `n` requests through HAProxy (one at a time); counts the
    /// versions answered, and failures under `failed`.
    pub fn versions_through_haproxy(&self, n: usize) -> BTreeMap<String, u64> {
        let addr = self.haproxy.frontend_addr();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let key = match http_get(&addr, "/") {
                Ok((200, body)) => body
                    .trim()
                    .strip_prefix("drover-sample ")
                    .unwrap_or("unknown")
                    .to_string(),
                Ok((code, _)) => format!("failed: HTTP {code}"),
                Err(e) => format!("failed: {e}"),
            };
            *seen.entry(key).or_default() += 1;
        }
        seen
    }

    /// Fleet, HAProxy and rollout list, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = self.fleet.diagnostics();
        out.push_str(&self.haproxy.describe());
        out.push_str(&format!(
            "--- served versions: {:?}\n",
            self.served_versions()
        ));
        let list = self.rollout_cmd(&["list", "-o", "json"], Duration::from_secs(10));
        out.push_str(&format!("--- drover rollout list:\n{list}\n"));
        out
    }

    /// [`WebFleet::diagnostics`] plus the rollout's full status.
    pub fn diagnostics_for(&self, id: &str) -> String {
        let mut out = self.diagnostics();
        let status = self.rollout_cmd(
            &["status", id, "--events", "-o", "json"],
            Duration::from_secs(10),
        );
        out.push_str(&format!("--- drover rollout status {id}:\n{status}\n"));
        out
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(out: &CmdOutput) -> Result<T, String> {
    serde_json::from_str(&out.stdout)
        .map_err(|e| format!("cannot parse the JSON of `{}`: {e}\n{out}", out.cmdline))
}
