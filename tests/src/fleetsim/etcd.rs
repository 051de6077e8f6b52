//! The coordinator's store for a run: its embedded redb (the default) or an
//! etcd, either started for the run (1 or 3 members on loopback, Debian's
//! `etcd-server`) or one already running (`--etcd-endpoints`). For etcd the
//! run also reads what it costs: etcd's own write counters from its
//! `/metrics`, and the members' CPU and memory.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail};
use drover_testkit::etcd::EtcdCluster;
use serde_json::{Value, json};

use super::procfs;
use super::stats::round3;
use crate::harness::{http_get, metrics_sum};

/// Where the coordinator keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreKind {
    /// One file in the coordinator's data dir.
    #[default]
    Redb,
    /// etcd, as highly available coordinators use it.
    Etcd,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Redb => "redb",
            StoreKind::Etcd => "etcd",
        })
    }
}

/// The store flags of `drover-fleetsim fleet`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreOptions {
    /// The coordinator's store: `redb` (one file in its data dir) or `etcd`
    /// (started for the run unless --etcd-endpoints names one).
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    pub store: StoreKind,
    /// With --store etcd: members of the etcd started for the run (1 or 3,
    /// on loopback).
    #[arg(long, default_value_t = 1)]
    pub etcd_members: usize,
    /// With --store etcd: use this running etcd instead (comma-separated
    /// client URLs). Its counters then include whatever else writes to it;
    /// its CPU and memory are read only when it runs on this machine. The
    /// run's keys are left under a prefix of their own.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
}

/// An etcd the coordinator of a run writes to.
#[derive(Debug)]
pub struct Etcd {
    /// Started for the run (killed on drop), or `None` for an external one.
    cluster: Option<EtcdCluster>,
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The members' processes on this machine, found by their client port.
    pub pids: Vec<u32>,
}

impl Etcd {
    /// Starts (or takes) the etcd `opts` asks for; `None` for redb. Call
    /// from the thread that lives as long as the run: members started here
    /// die with it.
    pub fn start(opts: &StoreOptions) -> Result<Option<Etcd>> {
        if opts.store == StoreKind::Redb {
            if !opts.etcd_endpoints.is_empty() {
                bail!("--etcd-endpoints needs --store etcd");
            }
            return Ok(None);
        }
        let (cluster, endpoints) = if opts.etcd_endpoints.is_empty() {
            if !matches!(opts.etcd_members, 1 | 3) {
                bail!("--etcd-members {}: expected 1 or 3", opts.etcd_members);
            }
            // The test harness's cluster panics on failure (etcd missing,
            // not healthy in time); here that is an error of the run.
            let members = opts.etcd_members;
            let cluster = std::panic::catch_unwind(|| EtcdCluster::start(members))
                .map_err(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("see above");
                    anyhow!(
                        "start a {members}-member etcd on loopback: {why} (or give a running one with --etcd-endpoints)"
                    )
                })?;
            let endpoints = cluster.endpoints();
            (Some(cluster), endpoints)
        } else {
            (None, opts.etcd_endpoints.clone())
        };
        let pids = endpoints
            .iter()
            .filter_map(|e| local_port(e))
            .filter_map(procfs::listener_pid)
            .collect();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = format!("/drover-fleetsim-{started}-{}/", std::process::id());
        let etcd = Etcd {
            cluster,
            endpoints,
            prefix,
            pids,
        };
        // Before a coordinator is started on it: a wrong address is said
        // here, not as a coordinator that exited.
        etcd.counters()
            .with_context(|| format!("reach etcd at {}", etcd.endpoints.join(",")))?;
        Ok(Some(etcd))
    }

    /// The `[store]` section of the coordinator's config.
    pub fn store_toml(&self) -> String {
        let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| quoted(e)).collect();
        format!(
            "[store]\ntype = \"etcd\"\nendpoints = [{}]\nprefix = {}\n",
            endpoints.join(", "),
            quoted(&self.prefix)
        )
    }

    /// Whether the members were started for this run.
    pub fn started_here(&self) -> bool {
        self.cluster.is_some()
    }

    /// etcd's counters now, from the first endpoint that answers
    /// `/metrics` on plain http. Every member applies every write, so one
    /// member's counters are the cluster's.
    pub fn counters(&self) -> Result<Counters> {
        let mut errors = Vec::new();
        for e in &self.endpoints {
            let Some(addr) = e.strip_prefix("http://") else {
                errors.push(format!("{e}: only plain http endpoints are read"));
                continue;
            };
            let addr = addr.trim_end_matches('/');
            match http_get(addr, "/metrics") {
                Ok((200, body)) => return Ok(Counters::parse(&body)),
                Ok((code, body)) => {
                    errors.push(format!("{e}: HTTP {code}: {}", body.trim()));
                }
                Err(err) => errors.push(format!("{e}: {err}")),
            }
        }
        bail!(
            "no etcd member's /metrics could be read: {}",
            errors.join("; ")
        )
    }

    /// CPU seconds all local members have used so far.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.sum(procfs::cpu_secs)
    }

    /// RSS of all local members now, MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        self.sum(|pid| procfs::status_mib(pid, "VmRSS"))
    }

    fn sum(&self, f: impl Fn(u32) -> Option<f64>) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| f(p)).sum()
    }

    /// Members' log tails, when they were started here.
    pub fn describe(&self) -> String {
        self.cluster
            .as_ref()
            .map(|c| c.describe(20))
            .unwrap_or_default()
    }
}

/// The port of a loopback (or `localhost`) client URL.
fn local_port(endpoint: &str) -> Option<u16> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return None;
    }
    port.parse().ok()
}

/// etcd's write counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Keys put (`etcd_mvcc_put_total`): each key of a transaction counts.
    pub puts: f64,
    /// Keys deleted (`etcd_mvcc_delete_total`).
    pub deletes: f64,
    /// The store's revision (`etcd_debugging_mvcc_current_revision`): one
    /// per write request or transaction that changed something.
    pub revision: f64,
    /// Bytes of keys and values put (`etcd_debugging_mvcc_total_put_size_in_bytes`).
    pub put_bytes: f64,
    /// Raft proposals committed (`etcd_server_proposals_committed_total`):
    /// writes, lease grants and revocations, compactions.
    pub proposals: f64,
    /// The backend database file (`etcd_mvcc_db_total_size_in_bytes`).
    pub db_bytes: f64,
}

impl Counters {
    pub fn parse(text: &str) -> Counters {
        Counters {
            puts: metrics_sum(text, "etcd_mvcc_put_total"),
            deletes: metrics_sum(text, "etcd_mvcc_delete_total"),
            revision: metrics_sum(text, "etcd_debugging_mvcc_current_revision"),
            put_bytes: metrics_sum(text, "etcd_debugging_mvcc_total_put_size_in_bytes"),
            proposals: metrics_sum(text, "etcd_server_proposals_committed_total"),
            db_bytes: metrics_sum(text, "etcd_mvcc_db_total_size_in_bytes"),
        }
    }

    /// Rates from `self` to `later` over `secs`, per second and per agent
    /// (keys put or deleted are the writes).
    pub fn rates(&self, later: &Counters, secs: f64, agents: usize) -> Value {
        let secs = secs.max(1e-9);
        let d = |a: f64, b: f64| (b - a).max(0.0);
        let writes = d(self.puts, later.puts) + d(self.deletes, later.deletes);
        json!({
            "writes": writes,
            "writes_per_sec": round3(writes / secs),
            "writes_per_agent_per_sec": round3(writes / secs / agents.max(1) as f64),
            "revisions_per_sec": round3(d(self.revision, later.revision) / secs),
            "put_kib_per_sec": round3(d(self.put_bytes, later.put_bytes) / 1024.0 / secs),
            "proposals_per_sec": round3(d(self.proposals, later.proposals) / secs),
        })
    }
}

/// The JSON of a run on `etcd` over a window: writes and rates, members'
/// CPU and memory.
pub fn window_json(
    etcd: &Etcd,
    before: &Result<Counters>,
    after: &Result<Counters>,
    cpu_before: Option<f64>,
    secs: f64,
    agents: usize,
) -> Value {
    let mut out = match (before, after) {
        (Ok(b), Ok(a)) => b.rates(a, secs, agents),
        (Err(e), _) | (_, Err(e)) => json!({ "error": format!("{e:#}") }),
    };
    let cpu = etcd
        .cpu_secs()
        .zip(cpu_before)
        .map(|(a, b)| round3((a - b).max(0.0) / secs.max(1e-9)));
    out["cpu_cores"] = json!(cpu);
    out["rss_mib"] = json!(etcd.rss_mib().map(round3));
    if let Ok(a) = after {
        out["db_mib"] = json!(round3(a.db_bytes / 1_048_576.0));
        out["revision"] = json!(a.revision);
    }
    out
}

/// The members' description for the JSON.
pub fn describe_json(etcd: &Etcd) -> Value {
    json!({
        "members": etcd.endpoints.len(),
        "started_here": etcd.started_here(),
        "endpoints": etcd.endpoints,
        "prefix": etcd.prefix,
        "local_pids": etcd.pids,
        "version": version(),
    })
}

/// `etcd --version`'s first line, when the binary is here (`$DROVER_ETCD`
/// or `etcd` on the PATH, as the test harness finds it).
fn version() -> Option<String> {
    let binary = std::env::var_os("DROVER_ETCD").unwrap_or_else(|| "etcd".into());
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// Fails with the members' logs when etcd cannot be read at the start of a
/// run: every figure would be missing.
pub fn check_readable(etcd: &Etcd) -> Result<Counters> {
    etcd.counters()
        .with_context(|| format!("read etcd's counters\n{}", etcd.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_rates() {
        let before = Counters::parse(
            "# HELP etcd_mvcc_put_total x\netcd_mvcc_put_total 10\netcd_mvcc_delete_total 0\netcd_debugging_mvcc_current_revision 5\netcd_debugging_mvcc_total_put_size_in_bytes 2048\netcd_server_proposals_committed_total 7\netcd_mvcc_db_total_size_in_bytes 1048576\n",
        );
        assert_eq!(before.puts, 10.0);
        assert_eq!(before.revision, 5.0);
        let after = Counters {
            puts: 110.0,
            deletes: 10.0,
            revision: 15.0,
            put_bytes: 2048.0 + 10_240.0,
            proposals: 17.0,
            db_bytes: 2.0 * 1_048_576.0,
        };
        let r = before.rates(&after, 10.0, 4);
        assert_eq!(r["writes"], 110.0);
        assert_eq!(r["writes_per_sec"], 11.0);
        assert_eq!(r["writes_per_agent_per_sec"], 2.75);
        assert_eq!(r["revisions_per_sec"], 1.0);
        assert_eq!(r["put_kib_per_sec"], 1.0);
    }

    #[test]
    fn finds_loopback_ports() {
        assert_eq!(local_port("http://127.0.0.1:2379"), Some(2379));
        assert_eq!(local_port("https://localhost:2379/"), Some(2379));
        assert_eq!(local_port("http://10.0.0.2:2379"), None);
    }
}
