//! Scenario 1, fleet scale: N simulated hosts connect and report at an
//! interval; measured are the time until all are connected, report-to-
//! visible latency over a steady window, the coordinator's CPU and memory
//! there, and `drover agents -o json` for the whole fleet. With `--store
//! etcd` also etcd's writes over the steady window (from its own counters)
//! and its CPU and memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use drover_proto::v1::{ListHostsRequest, Release};
use prost::Message;
use serde_json::{Map, Value, json};

use super::env::{Common, Env, Prepared, Sim, connected_json, runtime};
use super::etcd::{self, Etcd, StoreOptions};
use super::host::{HostSpec, instance};
use super::procfs::{self, CpuWindow};
use super::stats::round3;
use super::{emit, machine, target};
use crate::Cli;
use crate::harness::process::run_cmd;

/// Settings of one fleet-scale run (the flags of `drover-fleetsim fleet`).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOptions {
    /// Simulated hosts (each with web and api, every other one also worker).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub hosts: usize,
    /// Health report interval of every host.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// After all are connected and before measuring: lets the reports
    /// spread over the interval and the coordinator settle.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The steady window coordinator CPU is measured over, with no
    /// operator watching.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub steady: Duration,
    /// After the steady window: how long an operator's WatchHosts times
    /// reports from send to visible.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub latency_window: Duration,
    /// Which hosts the latency watch follows (every host has a label
    /// rack=r0..r39, so the default samples one in 40); empty for all.
    #[arg(long, default_value = "rack=r0")]
    pub watch_selector: String,
    /// How often `drover agents -o json` is timed (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub agents_json_runs: usize,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub common: Common,
}

/// `h00001`..: zero-padded so the listing sorts like the numbers.
pub fn host_id(i: usize, hosts: usize) -> String {
    let width = hosts.to_string().len().max(5);
    format!("h{i:0width$}")
}

/// A release of `version` with a made-up digest (the simulated hosts never
/// fetch it).
pub fn fake_release(version: &str) -> Release {
    use std::hash::{BuildHasher, Hasher};
    let mut digest = String::new();
    for part in 0..4u64 {
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        h.write(version.as_bytes());
        h.write_u64(part);
        digest.push_str(&format!("{:016x}", h.finish()));
    }
    Release {
        version: version.to_string(),
        digest,
    }
}

/// Hosts with two or three instances each: `web` and `api` everywhere,
/// `worker` on every other host; labels env, zone, rack.
pub fn layout(hosts: usize) -> Vec<HostSpec> {
    (1..=hosts)
        .map(|i| {
            let id = host_id(i, hosts);
            let mut instances = vec![
                instance(
                    &id,
                    "web",
                    "web",
                    fake_release("v1"),
                    2000 + i as u32 % 50_000,
                ),
                instance(
                    &id,
                    "api",
                    "api",
                    fake_release("2024.1"),
                    3000 + i as u32 % 50_000,
                ),
            ];
            if i % 2 == 0 {
                instances.push(instance(
                    &id,
                    "worker",
                    "worker",
                    fake_release("7.3"),
                    4000 + i as u32 % 50_000,
                ));
            }
            HostSpec {
                index: i,
                labels: labels(i),
                id,
                instances,
            }
        })
        .collect()
}

pub fn labels(i: usize) -> HashMap<String, String> {
    HashMap::from([
        ("env".to_string(), "prod".to_string()),
        ("zone".to_string(), format!("z{}", i % 3)),
        ("rack".to_string(), format!("r{}", i % 40)),
    ])
}

/// Runs scenario 1 and returns its figures (also printed).
pub fn run(opts: &FleetOptions) -> Result<Value> {
    let etcd = Etcd::start(&opts.store)?;
    let env = Env::start_on(opts.hosts, opts.interval, opts.common.dir.as_deref(), etcd)?;
    eprintln!(
        "fleetsim: coordinator pid {} on {} (store {}); signing {} agent certificates",
        env.pid(),
        env.coordinator.grpc_addr(),
        opts.store.store,
        opts.hosts
    );
    let prepared = Prepared::new(&env, layout(opts.hosts))?;
    let rt = runtime()?;
    let figures = rt.block_on(measure(&env, prepared, opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    let clean = env.stop(Duration::from_secs(30));
    let mut figures = figures?;
    figures["coordinator_stopped_cleanly"] = json!(clean);
    emit(&figures);
    summary(&figures);
    Ok(figures)
}

async fn measure(env: &Env, prepared: Prepared, opts: &FleetOptions) -> Result<Value> {
    // Its load average is the one the run started under.
    let machine_at_start = machine();
    let n = opts.hosts;
    let instances: usize = prepared.specs.iter().map(|h| h.instances.len()).sum();
    // etcd as the coordinator left it once elected, before any host.
    let etcd_at_start = match &env.etcd {
        Some(e) => Some(etcd::check_readable(e)?),
        None => None,
    };
    let mut sim = Sim::launch(prepared, opts.interval, opts.common.connect_concurrency).await?;
    eprintln!(
        "fleetsim: certificates signed in {:.2}s; connecting {n} hosts",
        sim.certs_secs
    );
    let connected = sim.wait_connected(opts.common.connect_timeout).await;
    eprintln!(
        "fleetsim: {} of {n} connected in {:.2}s; warming up {}",
        connected.connected,
        connected.secs,
        humantime::format_duration(opts.warmup)
    );
    let rss_after_connect = env.memory().0;
    tokio::time::sleep(opts.warmup).await;

    let shared = sim.shared.clone();
    let c = &shared.counters;
    let sent0 = c.reports_sent.load(Ordering::Relaxed);
    let skipped0 = c.reports_skipped.load(Ordering::Relaxed);
    let received0 = env.metric("drover_reports_received_total");
    let etcd0 = env.etcd.as_ref().map(|e| (e.counters(), e.cpu_secs()));
    let cpu = CpuWindow::start(env.pid());
    tokio::time::sleep(opts.steady).await;
    let used = cpu.finish();
    let etcd_window = env.etcd.as_ref().zip(etcd0).map(|(e, (before, cpu0))| {
        let after = e.counters();
        let mut w = etcd::window_json(e, &before, &after, cpu0, used.secs, n);
        if let (Some(start), Ok(before)) = (&etcd_at_start, &before) {
            let setup = start.rates(before, 1.0, n);
            w["writes_while_connecting_and_warming_up"] = setup["writes"].clone();
        }
        w
    });
    let sent = c.reports_sent.load(Ordering::Relaxed) - sent0;
    let skipped = c.reports_skipped.load(Ordering::Relaxed) - skipped0;
    let received = env
        .metric("drover_reports_received_total")
        .zip(received0)
        .map(|(a, b)| a - b);
    let (rss, hwm) = env.memory();
    let sessions_up = c.connected.load(Ordering::Relaxed);
    let agents_connected = env.metric("drover_agents_connected");
    eprintln!(
        "fleetsim: steady window done; watching `{}` for {}",
        opts.watch_selector,
        humantime::format_duration(opts.latency_window)
    );

    // Latency, in a window of its own: a watcher costs the coordinator
    // (every report is cloned and broadcast once anyone subscribes).
    sim.start_watch(&opts.watch_selector).await?;
    let cpu_watch = CpuWindow::start(env.pid());
    sim.shared.probe.set_recording(true);
    tokio::time::sleep(opts.latency_window).await;
    sim.shared.probe.set_recording(false);
    let used_watch = cpu_watch.finish();
    let mut watch = sim.stop_watch().await;
    eprintln!("fleetsim: timing `drover agents -o json`");

    // While the fleet keeps reporting.
    let agents = time_agents_json(&env.cli(), opts.agents_json_runs, n);
    let t0 = Instant::now();
    let listing = sim
        .control
        .list_hosts(ListHostsRequest {
            selector: String::new(),
        })
        .await;
    let list_secs = t0.elapsed().as_secs_f64();
    let (list_hosts, list_bytes) = match &listing {
        Ok(r) => (
            Some(r.get_ref().hosts.len()),
            Some(r.get_ref().encoded_len()),
        ),
        Err(_) => (None, None),
    };

    let sim_rss = procfs::status_mib(std::process::id(), "VmRSS");
    let total_sent = c.reports_sent.load(Ordering::Relaxed);
    let sessions_lost = c.sessions_lost.load(Ordering::Relaxed);
    let certs_secs = sim.certs_secs;
    sim.shutdown().await;

    let interval_ms = opts.interval.as_millis() as u64;
    let p99 = watch.delays.quantile_ms(0.99);
    let mut targets = Map::new();
    if n == 10_000 && interval_ms == 1000 {
        for (k, v) in [
            target("connect_secs", Some(connected.secs), 15.0),
            target("coordinator_cpu_cores", Some(used.process_cores), 0.5),
            target("coordinator_rss_mib", rss, 768.0),
            target("report_to_visible_p99_ms", p99, 50.0),
            target("agents_json_secs", agents.median, 1.0),
        ] {
            targets.insert(k, v);
        }
    }
    if n == 50_000 && interval_ms == 5000 {
        for (k, v) in [
            target("connect_secs", Some(connected.secs), 60.0),
            target("coordinator_cpu_cores", Some(used.process_cores), 1.0),
            target("coordinator_rss_mib", rss, 4096.0),
        ] {
            targets.insert(k, v);
        }
    }
    let etcd_cores = etcd_window
        .as_ref()
        .and_then(|w| w["cpu_cores"].as_f64())
        .unwrap_or(0.0);
    let mut figures = json!({
        "scenario": "fleet",
        "subject": format!("store={}", opts.store.store),
        "store": opts.store.store.to_string(),
        "n": n,
        "instances": instances,
        "interval_ms": interval_ms,
        "certs_secs": round3(certs_secs),
    });
    figures = merge(figures, connected_json(&connected));
    figures = merge(
        figures,
        json!({
            "warmup_secs": opts.warmup.as_secs_f64(),
            "steady_secs": round3(used.secs),
            "sessions_up_in_window": sessions_up,
            "coordinator_agents_connected": agents_connected,
            "sessions_lost": sessions_lost,
            "reports_sent": total_sent,
            "reports_sent_in_window": sent,
            "reports_per_sec": round3(sent as f64 / used.secs),
            "reports_skipped_in_window": skipped,
            "coordinator_reports_received_in_window": received,
            "report_to_visible_ms": watch.delays.summary(),
            "watch_selector": opts.watch_selector,
            "latency_window_secs": round3(used_watch.secs),
            "coordinator_cpu_cores_while_watched": round3(used_watch.process_cores),
            "watch_events": watch.events,
            "watch_resyncs": watch.resyncs,
            "watch_unmatched": watch.unmatched,
            "watch_error": watch.error,
            "coordinator_cpu_cores": round3(used.process_cores),
            "coordinator_rss_mib": rss.map(round3),
            "coordinator_peak_rss_mib": hwm.map(round3),
            "coordinator_rss_after_connect_mib": rss_after_connect.map(round3),
            "simulator_cpu_cores": round3(used.simulator_cores),
            "simulator_rss_mib": sim_rss.map(round3),
            "machine_busy_cores": round3(used.machine_busy_cores),
            "other_processes_cores": round3((used.others() - etcd_cores).max(0.0)),
            "agents_json_secs": agents.median.map(round3),
            "agents_json_runs_secs": agents.runs.iter().map(|s| round3(*s)).collect::<Vec<_>>(),
            "agents_json_hosts": agents.hosts,
            "agents_json_bytes": agents.bytes,
            "agents_json_error": agents.error,
            "list_hosts_rpc_secs": round3(list_secs),
            "list_hosts_rpc_hosts": list_hosts,
            "list_hosts_rpc_bytes": list_bytes,
            "nofile_limit": env.nofile,
            "machine": machine_at_start,
            "targets": targets,
        }),
    );
    if let (Some(e), Some(w)) = (&env.etcd, etcd_window) {
        figures = merge(
            figures,
            json!({
                "etcd_writes_per_sec": w["writes_per_sec"],
                "etcd_writes_per_agent_per_sec": w["writes_per_agent_per_sec"],
                "etcd_cpu_cores": w["cpu_cores"],
                "etcd_rss_mib": w["rss_mib"],
                "etcd": merge(etcd::describe_json(e), w),
            }),
        );
    }
    Ok(figures)
}

/// Adds `b`'s keys to `a`.
pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// `drover agents -o json` timings.
#[derive(Debug, Default)]
pub struct AgentsJson {
    pub runs: Vec<f64>,
    pub median: Option<f64>,
    pub hosts: Option<usize>,
    pub bytes: Option<usize>,
    pub error: Option<String>,
}

/// Times `drover agents -o json` `runs` times (a fresh CLI process each,
/// as an operator runs it) and checks the listing has every host.
pub fn time_agents_json(cli: &Cli, runs: usize, expect: usize) -> AgentsJson {
    let mut out = AgentsJson::default();
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let res = run_cmd(
            cli.command(&["agents", "-o", "json"]),
            Duration::from_secs(120),
        );
        let secs = t0.elapsed().as_secs_f64();
        if !res.success() {
            let err: String = res.stderr.chars().take(500).collect();
            out.error = Some(format!("exit {:?}: {}", res.code, err.trim()));
            continue;
        }
        out.runs.push(secs);
        out.bytes = Some(res.stdout.len());
        match serde_json::from_str::<Vec<Value>>(&res.stdout) {
            Ok(hosts) => {
                out.hosts = Some(hosts.len());
                if hosts.len() != expect {
                    out.error = Some(format!("listed {} hosts, expected {expect}", hosts.len()));
                }
            }
            Err(e) => out.error = Some(format!("cannot parse the JSON: {e}")),
        }
    }
    let mut sorted = out.runs.clone();
    sorted.sort_by(f64::total_cmp);
    out.median = sorted.get(sorted.len() / 2).copied();
    out
}

fn summary(f: &Value) {
    let ms = |k: &str| f["report_to_visible_ms"][k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "\n== fleet scale: {} hosts ({} instances), report every {} ms (coordinator + simulator + CLI on one {}-core machine)",
        f["n"], f["instances"], f["interval_ms"], f["machine"]["cores"]
    );
    eprintln!(
        "   connected         {}/{} in {} s ({} failed attempts)",
        f["connected"], f["n"], f["connect_secs"], f["connect_failures"]
    );
    eprintln!(
        "   reports           {} /s in the window ({} skipped), {} sent in all",
        f["reports_per_sec"], f["reports_skipped_in_window"], f["reports_sent"]
    );
    eprintln!(
        "   report->visible   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples of hosts `{}`, {} watch resyncs; coordinator {} cores while watched)",
        ms("p50"),
        ms("p99"),
        ms("max"),
        f["report_to_visible_ms"]["count"],
        f["watch_selector"].as_str().unwrap_or(""),
        f["watch_resyncs"],
        f["coordinator_cpu_cores_while_watched"]
    );
    eprintln!(
        "   coordinator       {} cores, RSS {} MiB (peak {} MiB); simulator {} cores; other processes {} cores",
        f["coordinator_cpu_cores"],
        f["coordinator_rss_mib"],
        f["coordinator_peak_rss_mib"],
        f["simulator_cpu_cores"],
        f["other_processes_cores"]
    );
    if f["store"] == "etcd" {
        let e = &f["etcd"];
        eprintln!(
            "   etcd              {} writes/s ({} per agent; {} revisions/s, {} KiB/s) over the steady window, {} while connecting; {} cores, RSS {} MiB, db {} MiB ({} members){}",
            e["writes_per_sec"],
            e["writes_per_agent_per_sec"],
            e["revisions_per_sec"],
            e["put_kib_per_sec"],
            e["writes_while_connecting_and_warming_up"],
            e["cpu_cores"],
            e["rss_mib"],
            e["db_mib"],
            e["members"],
            e["error"]
                .as_str()
                .map(|x| format!(", error: {x}"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "   agents -o json    {} s (runs {}), {} hosts, {} bytes{}",
        f["agents_json_secs"],
        f["agents_json_runs_secs"],
        f["agents_json_hosts"],
        f["agents_json_bytes"],
        f["agents_json_error"]
            .as_str()
            .map(|e| format!(", error: {e}"))
            .unwrap_or_default()
    );
    print_targets(f);
}

pub fn print_targets(f: &Value) {
    if let Some(t) = f["targets"].as_object() {
        for (k, v) in t {
            let verdict = match v["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            eprintln!("   target {k} < {}: {} ({verdict})", v["limit"], v["value"]);
        }
    }
}
