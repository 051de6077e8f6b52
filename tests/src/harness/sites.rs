//! A two-site fleet for the disaster-recovery drills (issue 13): a primary
//! site and a DR site, each a network namespace with its hosts, its
//! coordinator and its database node, behind one HAProxy in the test's own
//! namespace (the "global" load balancer).
//!
//! - Hosts `h1..` are labelled `site=primary`, the next ones `site=dr`
//!   (2 and 2 by default). Each agent runs in its site's namespace, and so
//!   do its instances (drover-sample bound to 0.0.0.0 there, checked by the
//!   agent on 127.0.0.1): cutting a site cuts its agents, instances,
//!   coordinator and database node at once, while their processes run on.
//! - HAProxy's `web` backend lists every instance at its site's address; the
//!   DR site's servers are configured at weight 0 (registered, checked, on
//!   standby), the primary's at HAProxy's default weight. Agents drive
//!   HAProxy through its unix socket, a file path that works across
//!   namespaces.
//! - etcd (3 members) runs in the test's namespace. `c1` runs in the primary
//!   namespace and leads from the start, `c2` in the DR namespace stands by;
//!   each reaches etcd through proxies of its own on its namespace's
//!   `host_ip` ([`TwoSites::cut_etcd`] cuts one site off etcd alone).
//!   Agents list both coordinators; the CLI goes to whichever leads. Both
//!   have `[drills] commands_dir` = this repository's `examples/dr`.
//! - PostgreSQL: node `a` (the primary) in the primary namespace, node `b`
//!   (its streaming replica) in the DR namespace, each on its site's
//!   address; the kit runs every process of a node, its psql included,
//!   under the node's namespace.
//!
//! The sites reach each other (a coordinator its peer, the replica its
//! primary, the agents both coordinators) through the test's namespace:
//! each site's default route goes to its `host_ip`, and forwarding is
//! switched on for the two host-side ends of the pairs only (the machine's
//! `ip_forward` stays as it is). Cutting a site's link cuts it off from the
//! other site too.
//!
//! Needs root (CAP_NET_ADMIN), iproute2, HAProxy, etcd and PostgreSQL; the
//! tests fail rather than skip without them. Dropping the value kills every
//! process, then deletes the namespaces and the temp dir.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_testkit::netns::Netns;
use drover_testkit::postgres::{NodeOptions, PgPair, PgPairOptions, Writer, WriterOptions};
use drover_testkit::tcp_proxy::TcpProxy;
use tempfile::TempDir;

use super::agent::AgentSpec;
use super::cli::{Cli, HostView};
use super::coordinator::{Coordinator, CoordinatorSpec};
use super::etcd::{EtcdCluster, store_toml_for};
use super::fleet::{Fleet, WAIT};
use super::haproxy::{Checks, Haproxy, Server, ServerStat, ServerState};
use super::load::{Load, LoadSpec};
use super::process::{CmdOutput, run_cmd};
use super::release::{sample_release, write_artifact};
use super::rollout::{MAX_UNPACKED_BYTES, ROLLOUT_CMD_TIMEOUT, SERVICE, WebFleet, web_instance};
use super::{free_port, http_get, wait_until_with};

mod net;
mod plan;

use net::{default_route, etcd_proxies, route_through_test_namespace};
pub use plan::{EXAMPLE_DR_DB, EXAMPLE_PRIMARY_DB, examples_dr};

/// One of the two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    Primary,
    Dr,
}

impl Site {
    /// The value of the hosts' `site` label (and of the plan's `[sites]`).
    pub fn label(self) -> &'static str {
        match self {
            Site::Primary => "primary",
            Site::Dr => "dr",
        }
    }

    /// The name of the site's coordinator.
    pub fn coordinator_name(self) -> &'static str {
        match self {
            Site::Primary => "c1",
            Site::Dr => "c2",
        }
    }

    pub fn other(self) -> Site {
        match self {
            Site::Primary => Site::Dr,
            Site::Dr => Site::Primary,
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site={}", self.label())
    }
}

/// One host of the fleet: where its `web` instance listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteHost {
    /// Host id, also its HAProxy server name.
    pub id: String,
    pub site: Site,
    /// Its site's namespace address, where HAProxy and the test reach the
    /// instance.
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl SiteHost {
    /// `IP:PORT` of its instance, from the test's namespace.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// Builds a [`TwoSites`].
pub struct TwoSitesBuilder {
    primary_hosts: usize,
    dr_hosts: usize,
    lease_ttl: Duration,
    lost_timeout: String,
    report_interval: String,
    haproxy_checks: Checks,
    version: Option<String>,
    coordinators: Vec<SpecEdit>,
}

/// A change to a coordinator's spec, given its site.
type SpecEdit = Box<dyn Fn(Site, &mut CoordinatorSpec)>;

impl Default for TwoSitesBuilder {
    fn default() -> Self {
        TwoSitesBuilder {
            primary_hosts: 2,
            dr_hosts: 2,
            lease_ttl: Duration::from_secs(3),
            // Agents notice a silent coordinator within about 10 s (their
            // session keepalive): a new leader gives them this long before
            // it counts them lost.
            lost_timeout: "10s".to_string(),
            report_interval: "200ms".to_string(),
            haproxy_checks: Checks::default(),
            version: Some("v1".to_string()),
            coordinators: Vec::new(),
        }
    }
}

impl TwoSitesBuilder {
    /// Hosts per site (default 2 and 2): h1..hP on the primary, the next D
    /// on DR.
    pub fn hosts(mut self, primary: usize, dr: usize) -> Self {
        assert!(primary > 0 && dr > 0, "each site needs a host");
        self.primary_hosts = primary;
        self.dr_hosts = dr;
        self
    }

    /// The coordinators' election lease (default 3 s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long a new leader waits for an agent before counting it lost
    /// (default 10 s).
    pub fn lost_timeout(mut self, t: &str) -> Self {
        self.lost_timeout = t.to_string();
        self
    }

    /// The agents' report interval (default 200 ms).
    pub fn report_interval(mut self, interval: &str) -> Self {
        self.report_interval = interval.to_string();
        self
    }

    /// How HAProxy checks the instances (default [`Checks::default`]).
    pub fn haproxy_checks(mut self, checks: Checks) -> Self {
        self.haproxy_checks = checks;
        self
    }

    /// The release every instance runs once started (default `v1`); `None`
    /// leaves the instances without a release.
    pub fn version(mut self, version: Option<&str>) -> Self {
        self.version = version.map(str::to_string);
        self
    }

    /// Changes each coordinator's spec (called for both, with its site),
    /// e.g. to add environment or config.
    pub fn coordinator(mut self, f: impl Fn(Site, &mut CoordinatorSpec) + 'static) -> Self {
        self.coordinators.push(Box::new(f));
        self
    }

    /// Creates both sites, etcd, PostgreSQL, HAProxy, both coordinators and
    /// every agent; waits until every agent is connected to `c1` and (unless
    /// `version(None)`) the release serves: the primary's servers up and
    /// taking traffic, the DR site's up at weight 0.
    pub fn start(self) -> TwoSites {
        let tmp = tempfile::Builder::new()
            .prefix("drover-sites-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().to_path_buf();
        let primary = Netns::create();
        let dr = Netns::create();
        for ns in [&primary, &dr] {
            route_through_test_namespace(ns);
        }
        let etcd = EtcdCluster::start(3);
        let c1_etcd = etcd_proxies(&etcd, &primary);
        let c2_etcd = etcd_proxies(&etcd, &dr);
        let node = |ns: &Netns| NodeOptions {
            listen: IpAddr::V4(ns.ns_ip()),
            port: None,
            prefix: ns.prefix().into_iter().map(Into::into).collect(),
        };
        let pg = PgPair::start_with(PgPairOptions {
            a: node(&primary),
            b: node(&dr),
        })
        .unwrap_or_else(|e| panic!("start PostgreSQL across the two sites: {e}"));

        // Ports: instances, and both coordinators' (fixed, so the agents
        // know the standby's before it starts); none a database's, which
        // shares a namespace with them.
        let mut taken: Vec<u16> = ["a", "b"]
            .iter()
            .filter_map(|n| pg.node(n).map(|n| n.port()))
            .collect();
        let mut port = || loop {
            let p = free_port();
            if !taken.contains(&p) {
                taken.push(p);
                break p;
            }
        };
        let mut hosts = Vec::new();
        for (site, n) in [
            (Site::Primary, self.primary_hosts),
            (Site::Dr, self.dr_hosts),
        ] {
            let ns = match site {
                Site::Primary => &primary,
                Site::Dr => &dr,
            };
            for _ in 0..n {
                hosts.push(SiteHost {
                    id: format!("h{}", hosts.len() + 1),
                    site,
                    ip: ns.ns_ip(),
                    port: port(),
                });
            }
        }
        let commands_dir = examples_dr();
        let coordinator_spec = |site: Site, ns: &Netns, proxies: &[TcpProxy]| {
            let endpoints: Vec<String> = (proxies.iter())
                .map(|p| format!("http://{}", p.addr()))
                .collect();
            let mut spec = CoordinatorSpec {
                name: site.coordinator_name().to_string(),
                lost_timeout: self.lost_timeout.clone(),
                extra_toml: format!(
                    "{}lease_ttl = \"{}\"\n\n[drills]\ncommands_dir = {}\n",
                    store_toml_for(&endpoints, "/drover/"),
                    humantime::format_duration(self.lease_ttl),
                    toml::Value::String(commands_dir.display().to_string()),
                ),
                standby: site == Site::Dr,
                listen_ip: ns.ns_ip().to_string(),
                prefix: ns.prefix(),
                ..CoordinatorSpec::default()
            };
            for f in &self.coordinators {
                f(site, &mut spec);
            }
            spec
        };
        let mut c1 = coordinator_spec(Site::Primary, &primary, &c1_etcd);
        let mut c2 = coordinator_spec(Site::Dr, &dr, &c2_etcd);
        for c in [&mut c1, &mut c2] {
            if c.grpc_port == 0 {
                c.grpc_port = port();
            }
            if c.http_port == 0 {
                c.http_port = port();
            }
        }
        let coordinators = vec![
            format!("{}:{}", c1.listen_ip, c1.grpc_port),
            format!("{}:{}", c2.listen_ip, c2.grpc_port),
        ];

        let haproxy_dir = root.join("haproxy");
        let socket = haproxy_dir.join("haproxy.sock");
        let servers: Vec<Server> = (hosts.iter())
            .map(|h| {
                let s = Server::new(&h.id, h.port).at(&h.ip.to_string());
                match h.site {
                    Site::Primary => s,
                    Site::Dr => s.weight(0),
                }
            })
            .collect();
        let haproxy = Haproxy::start_with(&haproxy_dir, SERVICE, &servers, &self.haproxy_checks);
        assert_eq!(haproxy.socket(), socket, "HAProxy's socket moved");

        let mut builder = Fleet::builder()
            .dir(&root.join("fleet"))
            .coordinator(|c| *c = c1)
            .no_wait();
        for h in &hosts {
            let mut spec = AgentSpec::new(&h.id)
                .report_interval(&self.report_interval)
                .label("site", h.site.label());
            spec.extra_top.push_str("traffic_interval = \"1s\"\n");
            spec.coordinators = Some(coordinators.clone());
            spec.prefix = match h.site {
                Site::Primary => primary.prefix(),
                Site::Dr => dr.prefix(),
            };
            let mut web = web_instance(
                &h.id,
                h.port,
                &root.join("deploy").join(&h.id).join(SERVICE),
                &socket,
                "5s",
                MAX_UNPACKED_BYTES,
            );
            // Reachable from HAProxy at the site's address; the agent's
            // check on 127.0.0.1 works inside the namespace.
            web.args
                .extend(["--bind".to_string(), "0.0.0.0".to_string()]);
            spec.instances = vec![web];
            builder = builder.agent(spec);
        }
        let mut fleet = builder.start();
        let mut standby = Coordinator::create(&fleet.dir.join("c2"), &fleet.pki, c2);
        standby.start();
        fleet.standbys.push(standby);

        let sites = TwoSites {
            fleet,
            haproxy,
            pg,
            hosts,
            c1_etcd,
            c2_etcd,
            etcd,
            primary,
            dr,
            root,
            lease_ttl: self.lease_ttl,
            plans: AtomicUsize::new(0),
            _tmp: tmp,
        };
        let ids: Vec<&str> = sites.hosts.iter().map(|h| h.id.as_str()).collect();
        sites.fleet.wait_connected(&ids);
        if let Some(v) = &self.version {
            sites.deploy_initial(v);
        }
        sites
    }
}

/// The fleet. Fields drop in order: every process first, then the
/// proxies, etcd, the namespaces and the dir.
pub struct TwoSites {
    /// `fleet.coordinator` is `c1` (primary site), `fleet.standbys[0]` is
    /// `c2` (DR site); `fleet.operator()` and `fleet.cli()` go to whichever
    /// leads.
    pub fleet: Fleet,
    pub haproxy: Haproxy,
    /// Node `a` on the primary site (the primary at start), `b` on DR.
    pub pg: PgPair,
    /// Every host, primary site first.
    pub hosts: Vec<SiteHost>,
    /// `c1`'s proxies to the etcd members, and `c2`'s.
    pub c1_etcd: Vec<TcpProxy>,
    pub c2_etcd: Vec<TcpProxy>,
    pub etcd: EtcdCluster,
    pub primary: Netns,
    pub dr: Netns,
    pub root: PathBuf,
    /// The coordinators' election lease.
    pub lease_ttl: Duration,
    plans: AtomicUsize,
    _tmp: TempDir,
}

impl TwoSites {
    pub fn builder() -> TwoSitesBuilder {
        TwoSitesBuilder::default()
    }

    /// The site's network namespace.
    pub fn ns(&self, site: Site) -> &Netns {
        match site {
            Site::Primary => &self.primary,
            Site::Dr => &self.dr,
        }
    }

    /// The hosts of `site`.
    pub fn hosts_on(&self, site: Site) -> Vec<&SiteHost> {
        self.hosts.iter().filter(|h| h.site == site).collect()
    }

    /// Ids of the hosts of `site`.
    pub fn ids_on(&self, site: Site) -> Vec<String> {
        self.hosts_on(site).iter().map(|h| h.id.clone()).collect()
    }

    #[track_caller]
    pub fn host(&self, id: &str) -> &SiteHost {
        (self.hosts.iter().find(|h| h.id == id))
            .unwrap_or_else(|| panic!("no host {id} in this fleet"))
    }

    /// The site's coordinator: `c1` on the primary, `c2` on DR.
    pub fn coordinator(&self, site: Site) -> &Coordinator {
        match site {
            Site::Primary => &self.fleet.coordinator,
            Site::Dr => &self.fleet.standbys[0],
        }
    }

    pub fn coordinator_mut(&mut self, site: Site) -> &mut Coordinator {
        match site {
            Site::Primary => &mut self.fleet.coordinator,
            Site::Dr => &mut self.fleet.standbys[0],
        }
    }

    /// The site whose coordinator runs and says it leads (its ready file).
    pub fn leader(&self) -> Option<Site> {
        [Site::Primary, Site::Dr].into_iter().find(|s| {
            let c = self.coordinator(*s);
            c.is_running() && c.role() == "leader"
        })
    }

    /// The gRPC address of the coordinator that leads now (c1's if none
    /// does).
    pub fn leader_addr(&self) -> String {
        self.fleet.leader_addr()
    }

    /// Both coordinators' gRPC addresses, `c1,c2`, for `DROVER_ADDR`: the
    /// CLI finds the leader among them by itself.
    pub fn coordinator_addrs(&self) -> String {
        format!(
            "{},{}",
            self.coordinator(Site::Primary).grpc_addr(),
            self.coordinator(Site::Dr).grpc_addr()
        )
    }

    /// The CLI as the operator, at the leader.
    pub fn cli(&self) -> Cli {
        self.fleet.operator()
    }

    /// Waits until `site`'s coordinator leads; returns how long that took.
    #[track_caller]
    pub fn wait_leader(&self, site: Site, timeout: Duration) -> Duration {
        let start = Instant::now();
        wait_until_with(
            timeout,
            &format!("{} ({site}) leads", site.coordinator_name()),
            || self.leader() == Some(site),
            || self.diagnostics(),
        );
        start.elapsed()
    }

    /// Cuts the primary site off: its link goes down, so its agents,
    /// instances, coordinator and database node lose the test's namespace,
    /// etcd, HAProxy's checks and the DR site, while their processes run
    /// on.
    pub fn cut_primary_site(&self) {
        self.cut_site(Site::Primary);
    }

    /// Brings the primary site back: [`TwoSites::restore_site`].
    pub fn restore_primary_site(&mut self) {
        self.restore_site(Site::Primary);
    }

    /// Cuts `site` off (see [`TwoSites::cut_primary_site`]).
    pub fn cut_site(&self, site: Site) {
        self.ns(site).cut();
    }

    /// Brings `site`'s link back, and its route to the other site (use
    /// this rather than `Netns::restore`, which leaves the site reaching
    /// the test's namespace only). Its coordinator, if it stopped itself
    /// when it lost the leadership, is started again as a standby (its
    /// supervisor would do that).
    pub fn restore_site(&mut self, site: Site) {
        let ns = self.ns(site);
        ns.restore();
        // The link's going down took the default route with it.
        default_route(ns);
        let c = self.coordinator_mut(site);
        if !c.is_running() {
            c.kill();
            c.spec.standby = true;
            c.start();
        }
    }

    /// Cuts `site`'s coordinator off etcd alone: its proxies close every
    /// connection and refuse new ones.
    pub fn cut_etcd(&self, site: Site) {
        for p in self.etcd_proxies(site) {
            p.block();
        }
    }

    /// Undoes [`TwoSites::cut_etcd`].
    pub fn restore_etcd(&self, site: Site) {
        for p in self.etcd_proxies(site) {
            p.unblock();
        }
    }

    fn etcd_proxies(&self, site: Site) -> &[TcpProxy] {
        match site {
            Site::Primary => &self.c1_etcd,
            Site::Dr => &self.c2_etcd,
        }
    }

    /// `drover agents -o json` at the leader, or why not.
    pub fn try_agents(&self) -> Result<Vec<HostView>, String> {
        self.cli().try_agents(None)
    }

    /// Waits until the leader lists every host in `ids` as connected.
    #[track_caller]
    pub fn wait_connected(&self, ids: &[String], timeout: Duration) -> Vec<HostView> {
        self.wait(timeout, &format!("{ids:?} are connected"), || {
            let hosts = self.try_agents().ok()?;
            let all =
                (ids.iter()).all(|id| hosts.iter().any(|h| &h.host_id == id && h.connected()));
            all.then_some(hosts)
        })
    }

    /// Whether agent `host`'s log says it follows `site`'s coordinator.
    pub fn agent_follows(&self, host: &str, site: Site) -> bool {
        let log = &self.fleet.agent(host).log;
        std::fs::read_to_string(log)
            .is_ok_and(|l| l.contains(&format!("coordinator {} leads", site.coordinator_name())))
    }

    /// Pushes a drover-sample release `version` for `web`; its digest.
    #[track_caller]
    pub fn push_release(&self, version: &str, flags: &[&str]) -> String {
        let file = write_artifact(
            &self.root.join("artifacts"),
            &format!("web-{version}.tar.gz"),
            &sample_release(version, flags),
        );
        self.fleet.push_artifact(&file, SERVICE, version)
    }

    /// `drover rollout ARGS` as the operator, at the leader.
    pub fn rollout(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec!["rollout"];
        all.extend_from_slice(args);
        run_cmd(self.cli().command(&all), ROLLOUT_CMD_TIMEOUT)
    }

    /// Pushes `version` and brings every instance of both sites to it at
    /// once; waits until [`TwoSites::wait_serving_from_primary`].
    #[track_caller]
    pub fn deploy_initial(&self, version: &str) -> String {
        let digest = self.push_release(version, &[]);
        let args = WebFleet::start_args(version, &["--min-healthy", "0", "--batch", "100%"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.rollout(&args);
        if !out.success() {
            panic!(
                "initial deploy of {version} failed:\n{out}\n{}",
                self.diagnostics()
            );
        }
        self.wait_serving_from_primary(version);
        digest
    }

    /// Waits for the standby layout: every instance answers `version`,
    /// HAProxy has the primary's servers up and taking traffic and the DR
    /// site's up at weight 0.
    #[track_caller]
    pub fn wait_serving_from_primary(&self, version: &str) {
        self.wait(
            WAIT,
            &format!("every instance serves {version}, the primary's in HAProxy, DR's at weight 0"),
            || {
                let servers = self.haproxy.servers().ok()?;
                let lb = self.hosts.iter().all(|h| {
                    (servers.iter().find(|s| s.server == h.id)).is_some_and(|s| match h.site {
                        Site::Primary => s.serving(),
                        Site::Dr => s.state == ServerState::Up && s.weight == Some(0),
                    })
                });
                let versions = (self.hosts.iter())
                    .all(|h| self.instance_version(&h.id).as_deref() == Ok(version));
                (lb && versions).then_some(())
            },
        );
    }

    /// What the instance of `host` answers on `GET /`, asked directly at
    /// its site's address.
    pub fn instance_version(&self, host: &str) -> Result<String, String> {
        let addr = self.host(host).addr();
        match http_get(&addr, "/") {
            Ok((200, body)) => (body.trim().strip_prefix("drover-sample "))
                .map(str::to_string)
                .ok_or_else(|| format!("{host}: unexpected body {body:?}")),
            Ok((code, body)) => Err(format!("{host}: HTTP {code}: {body:?}")),
            Err(e) => Err(format!("{host} ({addr}): {e}")),
        }
    }

    /// HAProxy's `web` servers now.
    #[track_caller]
    pub fn servers(&self) -> Vec<ServerStat> {
        (self.haproxy.servers()).unwrap_or_else(|e| panic!("{e}\n{}", self.haproxy.describe()))
    }

    /// Requests each server has answered so far (`req_tot`), by host id.
    #[track_caller]
    pub fn requests_by_server(&self) -> BTreeMap<String, u64> {
        (self.servers().into_iter())
            .map(|s| (s.server, s.req_tot))
            .collect()
    }

    /// Requests each site's servers have answered so far (`req_tot`
    /// summed): where the traffic went.
    #[track_caller]
    pub fn requests_by_site(&self) -> BTreeMap<Site, u64> {
        let mut out = BTreeMap::from([(Site::Primary, 0), (Site::Dr, 0)]);
        for (id, n) in self.requests_by_server() {
            if let Some(h) = self.hosts.iter().find(|h| h.id == id) {
                *out.entry(h.site).or_default() += n;
            }
        }
        out
    }

    /// Waits until every server of `site` satisfies `pred` in HAProxy.
    #[track_caller]
    pub fn wait_servers(
        &self,
        site: Site,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ServerStat) -> bool,
    ) -> Vec<ServerStat> {
        let ids = self.ids_on(site);
        self.wait(
            timeout,
            &format!("HAProxy: {site}'s servers {what}"),
            || {
                let servers = self.haproxy.servers().ok()?;
                let mine: Vec<ServerStat> = (servers.into_iter())
                    .filter(|s| ids.contains(&s.server))
                    .collect();
                (mine.len() == ids.len() && mine.iter().all(&pred)).then_some(mine)
            },
        )
    }

    /// Starts `spec`'s load through HAProxy and waits until it flows (30
    /// requests answered).
    #[track_caller]
    pub fn start_load(&self, spec: LoadSpec) -> Load {
        let load = Load::start(&self.haproxy.frontend_addr(), spec);
        self.wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 30);
        load
    }

    /// A [`Writer`] inserting into the current primary database, from the
    /// test's namespace.
    #[track_caller]
    pub fn writer(&self, options: WriterOptions) -> Writer {
        Writer::start(self.pg.primary().endpoint(), options)
            .unwrap_or_else(|e| panic!("start a writer: {e}\n{}", self.pg.describe(20)))
    }

    /// The example DR plan (`examples/dr/dr.toml`) for this fleet: its
    /// database commands aimed at this fleet's nodes (the example's primary
    /// database is node `a` on the primary site, its DR database node `b`),
    /// `rpo` set, then `extra` (TOML) merged over it, table by table: e.g.
    /// `"rto = \"1m\"\n[approval]\nrequired = false\n[verify]\nhold = \"5s\"\n"`.
    #[track_caller]
    pub fn plan_text(&self, rpo: &str, extra: &str) -> String {
        plan::for_fleet(rpo, extra, self.pg_node("a"), self.pg_node("b"))
    }

    /// [`TwoSites::plan_text`] written to a new file in the fleet's dir;
    /// its path.
    #[track_caller]
    pub fn plan_toml(&self, rpo: &str, extra: &str) -> PathBuf {
        let dir = self.root.join("plans");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let n = self.plans.fetch_add(1, Ordering::SeqCst) + 1;
        let path = dir.join(format!("dr-{n}.toml"));
        std::fs::write(&path, self.plan_text(rpo, extra))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `drover drill plan -f PLAN ARGS` as the operator, at the leader.
    pub fn drill_plan(&self, plan: &Path, args: &[&str]) -> CmdOutput {
        let plan = plan.display().to_string();
        let mut all = vec!["drill", "plan", "-f", plan.as_str()];
        all.extend_from_slice(args);
        self.cli().run(&all)
    }

    /// `IP:PORT` of the site's database node (`a` on the primary site, `b`
    /// on DR), whatever its role now.
    pub fn db_addr(&self, site: Site) -> String {
        let (ip, port) = self.pg_node(match site {
            Site::Primary => "a",
            Site::Dr => "b",
        });
        format!("{ip}:{port}")
    }

    /// `(ip, port)` of database node `name` (`a` or `b`).
    fn pg_node(&self, name: &str) -> (IpAddr, u16) {
        let node = (self.pg.node(name)).unwrap_or_else(|| panic!("no database node {name}"));
        (node.listen(), node.port())
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

    /// Every process's log tail, the agents as the leader lists them,
    /// HAProxy's servers and the databases, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "==== two sites: primary {} ({}), dr {} ({}); leader {:?} ====\n",
            self.primary.name(),
            self.primary.ns_ip(),
            self.dr.name(),
            self.dr.ns_ip(),
            self.leader()
        );
        out.push_str(&self.fleet.diagnostics());
        for c in &self.fleet.standbys {
            out.push_str(&c.describe(60));
        }
        out.push_str(&self.haproxy.describe());
        out.push_str(&self.pg.describe(15));
        out
    }
}
