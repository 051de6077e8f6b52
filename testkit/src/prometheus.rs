//! A real Prometheus on loopback for tests (Debian's `prometheus`): a generated config that
//! scrapes the given targets over plain HTTP at a short interval, its own temp data dir, a
//! free port, killed on drop. Queries go through its HTTP API (`/api/v1/query`,
//! `/api/v1/query_range`) as a dashboard's would. Start-up waits on `/-/ready`, and
//! [`Prometheus::wait_up`] on the `up` series of a target, with deadlines, never on a sleep.
//!
//! Spawn from the test's own thread: it is killed when the thread that started it ends, so
//! a test killed by its runner leaves no Prometheus behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::etcd::{die_with_parent, free_ports};
use crate::pause;

/// How long Prometheus may take to answer `/-/ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer read from its API.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// The `prometheus` binary: `$DROVER_PROMETHEUS`, else `prometheus` on the PATH.
pub fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DROVER_PROMETHEUS") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join("prometheus");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "prometheus not found on PATH (nor $DROVER_PROMETHEUS): install prometheus \
         (scripts/setup); the metrics tests need a real Prometheus and are not skipped without one"
    );
}

/// One scrape job: Prometheus GETs `http://<addr><path>` every scrape interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `job` label of its series.
    pub job: String,
    /// `127.0.0.1:9464`.
    pub addr: String,
    /// `/metrics`.
    pub path: String,
}

impl Target {
    /// `job` at `addr` on `/metrics`.
    pub fn new(job: &str, addr: &str) -> Target {
        Target {
            job: job.to_string(),
            addr: addr.to_string(),
            path: "/metrics".to_string(),
        }
    }
}

/// Why a query got no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Could not connect, send or read.
    #[error("Prometheus at {addr} did not answer: {why}")]
    Io { addr: String, why: String },
    /// Prometheus answered `"status": "error"`: `bad_data` for a query that does not parse,
    /// `execution` for one that failed while running.
    #[error("Prometheus refused the query ({error_type}): {error}")]
    Api { error_type: String, error: String },
    /// An answer that is not Prometheus's JSON envelope.
    #[error("unexpected answer from Prometheus (HTTP {status}): {body}")]
    Unexpected { status: u16, body: String },
}

impl QueryError {
    /// A query Prometheus could not parse (or whose parameters it refused).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, QueryError::Api { error_type, .. } if error_type == "bad_data")
    }
}

/// One series of a query's answer: its labels and its samples `(unix seconds, value)`
/// (one sample for an instant query).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub samples: Vec<(f64, f64)>,
}

impl Series {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(|v| v.as_str()).unwrap_or("")
    }

    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.samples.iter().map(|&(_, v)| v)
    }
}

/// A running Prometheus; SIGKILLed on drop, its data removed with the temp dir.
#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    config: PathBuf,
    scrape_interval: Duration,
    dir: tempfile::TempDir,
}

/// Whole milliseconds, as Prometheus's durations are written (`250ms`).
fn prom_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every `scrape_interval` and waits until it is
    /// ready (not until the targets are up: see [`Prometheus::wait_up`]).
    pub fn start(targets: &[Target], scrape_interval: Duration) -> Prometheus {
        let binary = prometheus_binary();
        let dir = tempfile::Builder::new()
            .prefix("drover-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temp dir for Prometheus: {e}"));
        let port = free_ports(1)[0];
        let config = dir.path().join("prometheus.yml");
        // The scrape timeout may not exceed the interval.
        let interval = prom_duration(scrape_interval);
        let mut yml = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
             evaluation_interval: {interval}\nscrape_configs:\n"
        );
        for t in targets {
            yml.push_str(&format!(
                "  - job_name: {job:?}\n    metrics_path: {path:?}\n    static_configs:\n      \
                 - targets: [{addr:?}]\n",
                job = t.job,
                path = t.path,
                addr = t.addr,
            ));
        }
        std::fs::write(&config, yml).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let log = dir.path().join("prometheus.log");
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("clone Prometheus log handle: {e}"));
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            // Loopback only: nothing of this Prometheus is reachable from elsewhere.
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut p = Prometheus {
            port,
            child: Some(child),
            log,
            config,
            scrape_interval,
            dir,
        };
        p.wait_ready(START_TIMEOUT);
        p
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn scrape_interval(&self) -> Duration {
        self.scrape_interval
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "Prometheus exited ({status}) while starting\n{}",
                    self.describe(40)
                );
            }
            if matches!(self.get("/-/ready"), Ok((200, _))) {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "Prometheus not ready after {:.1}s\n{}",
                    timeout.as_secs_f64(),
                    self.describe(40)
                );
            }
            pause(Duration::from_millis(50));
        }
    }

    /// Waits until Prometheus has scraped job `job` successfully (`up == 1`); panics after
    /// `timeout` with its log and the targets' state.
    pub fn wait_up(&self, job: &str, timeout: Duration) {
        let query = format!("up{{job={job:?}}} == 1");
        let start = Instant::now();
        loop {
            if self.query(&query).is_ok_and(|s| !s.is_empty()) {
                return;
            }
            if start.elapsed() >= timeout {
                let targets = self
                    .get("/api/v1/targets")
                    .map(|(_, body)| body)
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "Prometheus did not scrape job {job} within {:.1}s\ntargets: {targets}\n{}",
                    timeout.as_secs_f64(),
                    self.describe(30)
                );
            }
            pause(Duration::from_millis(50));
        }
    }

    /// An instant query at the current time.
    pub fn query(&self, promql: &str) -> Result<Vec<Series>, QueryError> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        series(&data)
    }

    /// A range query from `start` to `end` (unix seconds) every `step`.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<Series>, QueryError> {
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={:.3}",
            encode(promql),
            step.as_secs_f64()
        ))?;
        series(&data)
    }

    /// The `data` of an API answer with `"status": "success"`.
    fn api(&self, path_and_query: &str) -> Result<serde_json::Value, QueryError> {
        let (status, body) = self.get(path_and_query)?;
        let unexpected = || QueryError::Unexpected {
            status,
            body: body.chars().take(2000).collect(),
        };
        let mut answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|_| unexpected())?;
        match answer.get("status").and_then(|s| s.as_str()) {
            Some("success") => Ok(answer
                .get_mut("data")
                .map(serde_json::Value::take)
                .unwrap_or_default()),
            Some("error") => {
                let text = |k: &str| {
                    (answer.get(k).and_then(|v| v.as_str()))
                        .unwrap_or_default()
                        .to_string()
                };
                Err(QueryError::Api {
                    error_type: text("errorType"),
                    error: text("error"),
                })
            }
            _ => Err(unexpected()),
        }
    }

    /// One plain HTTP/1.0 GET (no chunked answers to decode): status and body.
    fn get(&self, path_and_query: &str) -> Result<(u16, String), QueryError> {
        let io = |e: std::io::Error| QueryError::Io {
            addr: self.addr(),
            why: e.to_string(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(io)?;
        write!(
            stream,
            "GET {path_and_query} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.addr()
        )
        .map_err(io)?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = (head.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| QueryError::Unexpected {
                status: 0,
                body: head.chars().take(500).collect(),
            })?;
        Ok((status, body.to_string()))
    }

    /// Its config and the last `lines` lines of its log, for a failing test's message.
    pub fn describe(&self, lines: usize) -> String {
        let config = std::fs::read_to_string(&self.config).unwrap_or_default();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- Prometheus on {} ({}), config:\n{config}--- log {}:\n{}\n",
            self.addr(),
            self.dir.path().display(),
            self.log.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The unix time now, in seconds, as Prometheus's API takes it.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The series of a `vector`, `matrix` or `scalar` answer.
fn series(data: &serde_json::Value) -> Result<Vec<Series>, QueryError> {
    let unexpected = || QueryError::Unexpected {
        status: 200,
        body: data.to_string().chars().take(2000).collect(),
    };
    let sample = |v: &serde_json::Value| -> Option<(f64, f64)> {
        let pair = v.as_array()?;
        let at = pair.first()?.as_f64()?;
        // Values come as strings ("1", "NaN", "+Inf").
        let value = pair.get(1)?.as_str()?.parse::<f64>().ok()?;
        Some((at, value))
    };
    let kind = data.get("resultType").and_then(|t| t.as_str());
    let result = data.get("result").ok_or_else(unexpected)?;
    match kind {
        Some("scalar") => Ok(vec![Series {
            labels: serde_json::Map::new(),
            samples: vec![sample(result).ok_or_else(unexpected)?],
        }]),
        Some("vector") | Some("matrix") => {
            let mut out = Vec::new();
            for s in result.as_array().ok_or_else(unexpected)? {
                let labels = (s.get("metric").and_then(|m| m.as_object()))
                    .cloned()
                    .unwrap_or_default();
                let samples = match (s.get("value"), s.get("values")) {
                    (Some(v), _) => vec![sample(v).ok_or_else(unexpected)?],
                    (None, Some(vs)) => (vs.as_array().ok_or_else(unexpected)?.iter())
                        .map(|v| sample(v).ok_or_else(unexpected))
                        .collect::<Result<_, _>>()?,
                    (None, None) => return Err(unexpected()),
                };
                out.push(Series { labels, samples });
            }
            Ok(out)
        }
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_encoded() {
        assert_eq!(
            encode("rate(x{a=\"b c\"}[1m]) > 0"),
            "rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%20%3E%200"
        );
    }

    #[test]
    fn answers_read_as_series() {
        let data: serde_json::Value = serde_json::from_str(
            r#"{"resultType":"matrix","result":[{"metric":{"job":"c"},"values":[[1.5,"3"],[2.5,"NaN"]]}]}"#,
        )
        .expect("json");
        let s = series(&data).expect("series");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label("job"), "c");
        assert_eq!(s[0].samples[0], (1.5, 3.0));
        assert!(s[0].samples[1].1.is_nan());
    }

    /// A real Prometheus scrapes a tiny exposition served here, answers a query over it,
    /// and refuses one that does not parse as `bad_data`.
    #[test]
    fn scrapes_a_target_and_answers_promql() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                listener.set_nonblocking(true).expect("nonblocking");
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let mut buf = [0u8; 4096];
                            let _ = s.read(&mut buf);
                            let body = "# TYPE testkit_answer gauge\ntestkit_answer 42\n";
                            let _ = write!(
                                s,
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        Err(_) => pause(Duration::from_millis(10)),
                    }
                }
            })
        };
        let prom = Prometheus::start(&[Target::new("fake", &addr)], Duration::from_millis(500));
        prom.wait_up("fake", Duration::from_secs(30));
        let got = crate::wait_until_with(
            Duration::from_secs(20),
            "the scraped value is queryable",
            || {
                prom.query("testkit_answer{job=\"fake\"}")
                    .ok()
                    .and_then(|s| s.first().and_then(|s| s.values().next()))
            },
            || prom.describe(20),
        );
        assert_eq!(got, 42.0);
        let e = prom
            .query("sum(rate(testkit_answer[")
            .expect_err("does not parse");
        assert!(e.is_bad_data(), "{e}");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = serving.join();
    }
}
