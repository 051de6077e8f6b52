//! Bounded load through HAProxy, and a sampler of HAProxy's serving
//! capacity, both on their own threads while a rollout runs.
//!
//! Everything here is bounded in count and time: a load never sends more
//! than `max_requests` nor runs longer than `max_duration`, a sampler takes
//! at most `max_samples`, and both stop as soon as they are asked to.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::haproxy::{self, ServerStat, capacity, format_servers};
use super::pause;

/// How a [`Load`] runs.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Client threads, each with one request in flight at a time.
    pub threads: usize,
    /// Pause between two requests of one thread (paces the load so the
    /// rest of the fleet keeps some CPU on a 2-core machine).
    pub gap: Duration,
    /// Requests over all threads, at most.
    pub max_requests: u64,
    /// Running time, at most.
    pub max_duration: Duration,
    /// Per request: connect, send and read the whole answer within this.
    pub timeout: Duration,
}

impl Default for LoadSpec {
    /// 3 threads, one request every 10 ms each: about 300 requests a second
    /// for at most 40 s or 12,000 requests.
    fn default() -> LoadSpec {
        LoadSpec {
            threads: 3,
            gap: Duration::from_millis(10),
            max_requests: 12_000,
            max_duration: Duration::from_secs(40),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub total: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Connection errors, timeouts, non-2xx answers.
    pub failed: u64,
    /// The first failures, with time since the start and what happened.
    pub failures: Vec<String>,
    /// Answers per version (X-Version header), 2xx only.
    pub versions: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Whether it stopped on `max_requests` or `max_duration` rather than
    /// on request.
    pub hit_limit: bool,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "load: {} requests in {:.1}s, {} ok, {} failed, versions {:?}{}",
            self.total,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.failed,
            self.versions,
            if self.hit_limit {
                " (stopped by its limit)"
            } else {
                ""
            }
        )?;
        for failure in &self.failures {
            writeln!(f, "    {failure}")?;
        }
        Ok(())
    }
}

/// Most failures kept in a report.
const FAILURE_SAMPLE: usize = 20;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct ThreadReport {
    failures: Vec<String>,
    versions: BTreeMap<String, u64>,
    hit_limit: bool,
}

/// A running load; [`Load::stop`] ends it and returns the report. Dropping
/// it stops the threads too.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<ThreadReport>>,
    started: Instant,
}

impl Load {
    /// Starts `spec.threads` clients sending `GET /` to `addr`, each on a
    /// new connection (`Connection: close`).
    pub fn start(addr: &str, spec: LoadSpec) -> Load {
        let sock: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("load target {addr}: {e}"));
        let shared = Arc::new(Shared::default());
        let started = Instant::now();
        let threads = (0..spec.threads.max(1))
            .map(|_| {
                let shared = Arc::clone(&shared);
                let spec = spec.clone();
                std::thread::spawn(move || client(sock, &spec, &shared, started))
            })
            .collect();
        Load {
            shared,
            threads,
            started,
        }
    }

    /// (sent, ok, failed) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.shared.sent.load(Ordering::SeqCst),
            self.shared.ok.load(Ordering::SeqCst),
            self.shared.failed.load(Ordering::SeqCst),
        )
    }

    /// Whether every thread has stopped on its own (limits reached).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Stops the clients (each finishes its request in flight) and reports.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| ThreadReport {
                failures: vec!["a load thread panicked".to_string()],
                ..ThreadReport::default()
            });
            report.hit_limit |= r.hit_limit;
            for (v, n) in r.versions {
                *report.versions.entry(v).or_default() += n;
            }
            for f in r.failures {
                if report.failures.len() < FAILURE_SAMPLE {
                    report.failures.push(f);
                }
            }
        }
        let (total, ok, failed) = self.counts();
        report.total = total;
        report.ok = ok;
        report.failed = failed;
        report.elapsed = self.started.elapsed();
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn client(addr: SocketAddr, spec: &LoadSpec, shared: &Shared, started: Instant) -> ThreadReport {
    let mut report = ThreadReport::default();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return report;
        }
        if started.elapsed() >= spec.max_duration {
            report.hit_limit = true;
            return report;
        }
        if shared.sent.fetch_add(1, Ordering::SeqCst) >= spec.max_requests {
            // Not sent after all.
            shared.sent.fetch_sub(1, Ordering::SeqCst);
            report.hit_limit = true;
            return report;
        }
        let at = started.elapsed();
        match request(addr, spec.timeout) {
            Ok((status, version)) if (200..300).contains(&status) => {
                shared.ok.fetch_add(1, Ordering::SeqCst);
                *report.versions.entry(version).or_default() += 1;
            }
            Ok((status, version)) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                if report.failures.len() < FAILURE_SAMPLE {
                    report.failures.push(format!(
                        "at {:.3}s: HTTP {status} (version {version:?})",
                        at.as_secs_f64()
                    ));
                }
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                if report.failures.len() < FAILURE_SAMPLE {
                    report
                        .failures
                        .push(format!("at {:.3}s: {e}", at.as_secs_f64()));
                }
            }
        }
        if !spec.gap.is_zero() {
            pause(spec.gap);
        }
    }
}

/// One `GET /` on a new connection: the status and the X-Version header.
fn request(addr: SocketAddr, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: drover-tests\r\nConnection: close\r\nUser-Agent: drover-tests-load\r\n\r\n",
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let head = text
        .split_once("\r\n\r\n")
        .map(|(h, _)| h)
        .ok_or_else(|| std::io::Error::other(format!("incomplete HTTP answer: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let version = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-version")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, version))
}

/// What a [`CapacitySampler`] saw.
#[derive(Debug, Clone, Default)]
pub struct CapacityReport {
    pub samples: u64,
    /// Lowest capacity seen, with the servers at that moment.
    pub min: Option<(u32, Vec<ServerStat>)>,
    /// Highest seen.
    pub max: Option<u32>,
    /// Runtime API errors (the first few).
    pub errors: Vec<String>,
    /// Each distinct status a server went through, in order.
    pub transitions: BTreeMap<String, Vec<String>>,
}

impl CapacityReport {
    pub fn min_capacity(&self) -> Option<u32> {
        self.min.as_ref().map(|(c, _)| *c)
    }
}

impl std::fmt::Display for CapacityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "HAProxy capacity: {} samples, min {:?}, max {:?}, errors {:?}",
            self.samples,
            self.min_capacity(),
            self.max,
            self.errors
        )?;
        if let Some((_, servers)) = &self.min {
            write!(f, "  servers at the minimum:\n{}", format_servers(servers))?;
        }
        writeln!(f, "  status transitions:")?;
        for (server, states) in &self.transitions {
            writeln!(f, "    {server}: {}", states.join(" -> "))?;
        }
        Ok(())
    }
}

/// Polls `show stat` every `interval` on its own thread and keeps the
/// lowest serving capacity seen.
pub struct CapacitySampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CapacityReport>>,
}

impl CapacitySampler {
    /// Samples `backend` on the runtime API at `socket` every `interval`,
    /// at most `max_samples` times (failed attempts count).
    pub fn start(
        socket: &Path,
        backend: &str,
        interval: Duration,
        max_samples: u64,
    ) -> CapacitySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let socket: PathBuf = socket.to_path_buf();
        let backend = backend.to_string();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || sample(&socket, &backend, interval, max_samples, &stop))
        };
        CapacitySampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and reports.
    pub fn stop(mut self) -> CapacityReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| CapacityReport {
                errors: vec!["the sampler thread panicked".to_string()],
                ..CapacityReport::default()
            })
    }
}

impl Drop for CapacitySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sample(
    socket: &Path,
    backend: &str,
    interval: Duration,
    max_samples: u64,
    stop: &AtomicBool,
) -> CapacityReport {
    let mut report = CapacityReport::default();
    // Samples before checking `stop`, so the last sample is taken after
    // the stop was asked for and sees the end state.
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let servers = haproxy::command(socket, "show stat")
            .and_then(|text| haproxy::parse_show_stat(&text))
            .map(|all| {
                all.into_iter()
                    .filter(|s| s.backend == backend && s.server != "BACKEND")
                    .collect::<Vec<_>>()
            });
        match servers {
            Ok(servers) => {
                report.samples += 1;
                let c = capacity(&servers);
                if report.min.as_ref().is_none_or(|(m, _)| c < *m) {
                    report.min = Some((c, servers.clone()));
                }
                report.max = Some(report.max.map_or(c, |m| m.max(c)));
                for s in &servers {
                    let seen = report.transitions.entry(s.server.clone()).or_default();
                    if seen.last() != Some(&s.status) && seen.len() < 200 {
                        seen.push(s.status.clone());
                    }
                }
            }
            Err(e) => {
                if report.errors.len() < 5 {
                    report.errors.push(e);
                }
            }
        }
        if stop.load(Ordering::SeqCst) || attempts >= max_samples {
            return report;
        }
        pause(interval);
    }
}
