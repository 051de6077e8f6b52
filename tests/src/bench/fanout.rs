//! Scenario 5, artifact fan-out: N real agents deploy one large release at
//! once (a rollout with batch 100% and min-healthy 0; the instances have
//! no drain), so all N fetch the same artifact from the coordinator over
//! mTLS gRPC together. Measured: the aggregate throughput of the transfer
//! (N x artifact size over the time from the first byte any agent wrote
//! to the last byte of the last agent, watched in the agents' cache
//! files; the agents hash the bytes as they write them, so the window
//! holds the checksum work too, but not the final fsync), the time until
//! every agent has verified and renamed its copy, the agents' RSS before
//! and during it, and the CPU the coordinator and the agents spent.
//!
//! The yardstick is a plain copy on the same loopback in the same run: N
//! clients each reading the coordinator's stored artifact file from one
//! server over its own TCP connection, read(2)/write(2) with 256 KiB
//! buffers (the coordinator's chunk size), no TLS, the bytes discarded.
//! It runs before and after drover's transfer; the faster run is the
//! limit (`loopback_mib_s`, `ratio`). A second yardstick writes each copy
//! to a file on the agents' disk (no fsync: drover's window also ends at
//! the last byte written), also before and after, the faster counting
//! (`loopback_to_files_mib_s`, `ratio_to_files`): what storing the bytes
//! costs on this machine, which drover cannot avoid.
//!
//! Every phase starts after a sync(1), so none pays for the writeback of
//! an earlier phase's files (drover's transfer and unpacking leave
//! gigabytes of dirty pages behind).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::footprint::LOST_TIMEOUT;
use super::{MIB, load_avg, mib, note, round, sample, secs};
use crate::harness::pause;
use crate::harness::rollout::{RolloutView, SERVICE};
use crate::{AgentSpec, Fleet, InstanceSpec, bin_path, free_port};

#[derive(Debug, Clone)]
pub struct FanoutOpts {
    pub agents: usize,
    /// Size of the artifact's incompressible payload.
    pub size_mib: u64,
}

/// Longest the transfer (and then the rollout) may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the agents' cache files are looked at.
const POLL: Duration = Duration::from_millis(20);
/// How often the agents' RSS is read during the transfer.
const RSS_EVERY: Duration = Duration::from_millis(200);
const BUF: usize = 256 * 1024;

pub fn run(opts: &FanoutOpts) -> Vec<Value> {
    assert!(opts.agents >= 1, "at least one agent");
    let tmp = tempfile::Builder::new()
        .prefix("drover-bench-fanout-")
        .tempdir()
        .expect("create temp dir");
    let root = tmp.path().to_path_buf();
    let ids: Vec<String> = (1..=opts.agents).map(|i| format!("h{i}")).collect();
    let unpacked_limit = (opts.size_mib + 1) * 1024 * 1024 * 2;
    let mut builder = Fleet::builder()
        .dir(&root.join("fleet"))
        .lost_timeout(LOST_TIMEOUT)
        .no_wait();
    for id in &ids {
        let spec = AgentSpec::new(id)
            .report_interval("5s")
            .no_instances()
            .instance(instance(&root.join("deploy").join(id), unpacked_limit));
        builder = builder.agent(spec);
    }
    note(&format!(
        "starting a coordinator and {} agents",
        opts.agents
    ));
    let fleet = builder.start();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    fleet.wait_connected(&id_refs);

    note(&format!(
        "building and pushing a {} MiB release",
        opts.size_mib
    ));
    let artifact = root.join("web-v1.tar.gz");
    write_release(&artifact, opts.size_mib * 1024 * 1024);
    let size = std::fs::metadata(&artifact).expect("stat artifact").len();
    let digest = fleet.push_artifact(&artifact, SERVICE, "v1");
    let stored = fleet.artifact_file(&digest);

    note("plain loopback copy (before), then into files");
    let before = plain_copy(&stored, opts.agents, None);
    let to_files_before = plain_copy(&stored, opts.agents, Some(&root));

    let agent_pids: Vec<u32> = fleet.agents.iter().filter_map(|a| a.pid()).collect();
    let rss_before: Vec<u64> = agent_pids
        .iter()
        .map(|p| sample(*p).map_or(0, |s| s.rss_kib))
        .collect();
    let coord_pid = fleet.coordinator.pid().expect("coordinator runs");
    let cpu_of = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| sample(*p))
            .map(|s| s.cpu_secs)
            .sum()
    };
    let coord_cpu0 = cpu_of(&[coord_pid]);
    let agents_cpu0 = cpu_of(&agent_pids);
    let caches: Vec<(PathBuf, PathBuf)> = fleet
        .agents
        .iter()
        .map(|a| {
            let dir = a.data_dir.join("cache");
            (dir.join(format!("{digest}.partial")), dir.join(&digest))
        })
        .collect();

    note(&format!(
        "rollout: {} agents fetch the artifact at once",
        opts.agents
    ));
    settle();
    let load_start = load_avg();
    let started = Instant::now();
    let out = fleet.cli(&[
        "rollout",
        "start",
        "--service",
        SERVICE,
        "--version",
        "v1",
        "--batch",
        "100%",
        "--min-healthy",
        "0",
        "--min-healthy-time",
        "0s",
        "--healthy-deadline",
        "60s",
        "--step-timeout",
        "10m",
        "--progress-deadline",
        "15m",
        "--detach",
        "-o",
        "json",
    ]);
    assert!(out.success(), "rollout start failed:\n{out}");
    let rollout: RolloutView =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("parse rollout: {e}\n{out}"));

    let mut first_byte: Option<Duration> = None;
    let mut all_bytes: Option<Duration> = None;
    let mut rss_max = rss_before.clone();
    let mut last_rss = Instant::now() - RSS_EVERY;
    let all_cached = loop {
        let mut done = 0u64;
        let mut cached = 0usize;
        for (partial, full) in &caches {
            if full.exists() {
                done += size;
                cached += 1;
            } else {
                done += std::fs::metadata(partial).map_or(0, |m| m.len());
            }
        }
        let now = started.elapsed();
        if done > 0 && first_byte.is_none() {
            first_byte = Some(now);
        }
        if done >= size * caches.len() as u64 && all_bytes.is_none() {
            all_bytes = Some(now);
        }
        if last_rss.elapsed() >= RSS_EVERY {
            last_rss = Instant::now();
            for (i, p) in agent_pids.iter().enumerate() {
                if let Some(s) = sample(*p) {
                    rss_max[i] = rss_max[i].max(s.rss_kib);
                }
            }
        }
        if cached == caches.len() {
            break now;
        }
        assert!(
            now < TRANSFER_TIMEOUT,
            "the transfer did not finish in {TRANSFER_TIMEOUT:?}: {done} of {} bytes\n{}",
            size * caches.len() as u64,
            fleet.diagnostics()
        );
        pause(POLL);
    };
    let load_end = load_avg();
    let coord_cpu = cpu_of(&[coord_pid]) - coord_cpu0;
    let agents_cpu = cpu_of(&agent_pids) - agents_cpu0;
    let hwm_after: Vec<u64> = agent_pids
        .iter()
        .map(|p| sample(*p).map_or(0, |s| s.hwm_kib))
        .collect();

    let finished = wait_finished(&fleet, &rollout.id);
    assert_eq!(
        finished.phase,
        "succeeded",
        "the fan-out rollout must succeed: {}\n{}",
        finished.reason_text(),
        fleet.diagnostics()
    );

    note("plain loopback copy (after), then into files");
    let after = plain_copy(&stored, opts.agents, None);
    let to_files_after = plain_copy(&stored, opts.agents, Some(&root));

    let first = first_byte.unwrap_or_default();
    let last = all_bytes.unwrap_or(all_cached);
    let total = size as f64 * opts.agents as f64;
    let window = last.saturating_sub(first).max(Duration::from_millis(1));
    let drover_mib_s = total / MIB / window.as_secs_f64();
    let rate = |(bytes, took): (u64, Duration)| bytes as f64 / MIB / took.as_secs_f64();
    let limit = rate(before).max(rate(after));
    let to_files = rate(to_files_before).max(rate(to_files_after));
    let growth = rss_max
        .iter()
        .zip(&rss_before)
        .map(|(m, b)| m.saturating_sub(*b))
        .max()
        .unwrap_or(0);
    vec![json!({
        "scenario": "fanout",
        "agents": opts.agents,
        "artifact_mib": round(size as f64 / MIB, 1),
        "drover_mib_s": round(drover_mib_s, 1),
        "loopback_mib_s": round(limit, 1),
        "loopback_before_mib_s": round(rate(before), 1),
        "loopback_after_mib_s": round(rate(after), 1),
        "ratio": round(drover_mib_s / limit, 3),
        "loopback_to_files_mib_s": round(to_files, 1),
        "loopback_to_files_before_mib_s": round(rate(to_files_before), 1),
        "loopback_to_files_after_mib_s": round(rate(to_files_after), 1),
        "ratio_to_files": round(drover_mib_s / to_files, 3),
        "first_byte_secs": secs(first),
        "transfer_secs": secs(window),
        "all_verified_secs": secs(all_cached),
        "agent_rss_before_mib_max": mib(rss_before.iter().copied().max().unwrap_or(0)),
        "agent_rss_during_mib_max": mib(rss_max.iter().copied().max().unwrap_or(0)),
        "agent_rss_growth_mib_max": mib(growth),
        "agent_rss_peak_after_unpack_mib_max": mib(hwm_after.iter().copied().max().unwrap_or(0)),
        "coordinator_cpu_secs": round(coord_cpu, 2),
        "agents_cpu_secs": round(agents_cpu, 2),
        "load_start": load_start,
        "load_end": load_end,
    })]
}

/// A `web` instance running the deployed release, no drain, allowed to
/// unpack `max_unpacked` bytes.
fn instance(deploy_dir: &Path, max_unpacked: u64) -> InstanceSpec {
    let port = free_port();
    let mut i = InstanceSpec::sample(SERVICE, port, "unused");
    i.command = PathBuf::from("{current}/run");
    i.args = vec![
        "--port".to_string(),
        port.to_string(),
        "--version-file".to_string(),
        "{current}/VERSION".to_string(),
    ];
    i.exe = Some(bin_path("drover-sample"));
    i.extra_toml = format!(
        "deploy_dir = {}\nkeep_releases = 2\nmax_unpacked_bytes = {max_unpacked}",
        toml::Value::String(deploy_dir.display().to_string())
    );
    i
}

/// Incompressible bytes (xorshift64), streamed.
struct Noise {
    x: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            self.left.min(buf.len() as u64) as usize
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            chunk.copy_from_slice(&self.x.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A drover-sample release (`VERSION`, `run`) plus `payload` bytes of
/// noise, as a .tar.gz with stored (uncompressed) deflate blocks: the
/// payload cannot be compressed anyway, and unpacking stays cheap.
fn write_release(path: &Path, payload: u64) {
    let file = std::fs::File::create(path).expect("create artifact");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::none());
    let mut tar = tar::Builder::new(gz);
    let run = crate::harness::release::run_script("v1", &[]);
    let mut add = |name: &str, mode: u32, len: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("tar path");
        h.set_size(len);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.append(&h, data).expect("append to tar");
    };
    add("VERSION", 0o644, 3, &mut &b"v1\n"[..]);
    add("run", 0o755, run.len() as u64, &mut run.as_bytes());
    add(
        "payload",
        0o644,
        payload,
        &mut Noise {
            x: 0x9E37_79B9_7F4A_7C15,
            left: payload,
        },
    );
    let gz = tar.into_inner().expect("finish tar");
    let mut file = gz.finish().expect("finish gzip");
    file.flush().expect("flush artifact");
}

/// Flushes every dirty page to disk, so the phase that follows does not
/// share the machine with the writeback of the one before.
fn settle() {
    let synced = std::process::Command::new("sync").status();
    assert!(
        synced.as_ref().is_ok_and(|s| s.success()),
        "sync(1) failed: {synced:?}"
    );
}

/// `n` clients each read `file` from one server over loopback TCP at
/// once, discarding the bytes, or writing each copy to a file in `sink`
/// (removed afterwards; not synced). Starts with [`settle`]. Returns the
/// bytes received and the time it took.
fn plain_copy(file: &Path, n: usize, sink: Option<&Path>) -> (u64, Duration) {
    settle();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let path = file.to_path_buf();
    let server = std::thread::spawn(move || {
        let mut senders = Vec::new();
        for _ in 0..n {
            let Ok((mut sock, _)) = listener.accept() else {
                break;
            };
            let path = path.clone();
            senders.push(std::thread::spawn(move || {
                let mut f = std::fs::File::open(&path).expect("open artifact");
                let mut buf = vec![0u8; BUF];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if sock.write_all(&buf[..k]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        for s in senders {
            let _ = s.join();
        }
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let out = sink.map(|d| d.join(format!("copy-{i}")));
            std::thread::spawn(move || {
                let mut file = out.map(|p| std::fs::File::create(p).expect("create copy"));
                let mut sock = TcpStream::connect(addr).expect("connect loopback");
                let mut buf = vec![0u8; BUF];
                let mut got = 0u64;
                loop {
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            got += k as u64;
                            if let Some(f) = file.as_mut() {
                                f.write_all(&buf[..k]).expect("write copy");
                            }
                        }
                    }
                }
                got
            })
        })
        .collect();
    let bytes: u64 = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    let took = started.elapsed();
    let _ = server.join();
    if let Some(d) = sink {
        for i in 0..n {
            let _ = std::fs::remove_file(d.join(format!("copy-{i}")));
        }
    }
    (bytes, took)
}

fn wait_finished(fleet: &Fleet, id: &str) -> RolloutView {
    crate::harness::wait_until_with(
        TRANSFER_TIMEOUT,
        &format!("rollout {id} finishes"),
        || {
            let out = fleet.cli(&["rollout", "status", id, "-o", "json"]);
            serde_json::from_str::<RolloutView>(&out.stdout)
                .ok()
                .filter(RolloutView::is_terminal)
        },
        || fleet.diagnostics(),
    )
}
