//! drover-sample, the service the fleet runs: version, health and the knobs
//! later tests rely on.

use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::harness::haproxy::{Haproxy, Server};
use drover_tests::{Proc, bin_path, http_get, wait_until};
use tempfile::TempDir;

struct Sample {
    proc: Proc,
    addr: String,
    _dir: TempDir,
}

/// Starts drover-sample on port 0 with `args`; waits for its
/// `listening on ADDR` line.
fn start(args: &[&str]) -> Sample {
    start_with(args, |_| {})
}

fn start_with(args: &[&str], f: impl FnOnce(&mut Command)) -> Sample {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("sample.log");
    let mut cmd = Command::new(bin_path("drover-sample"));
    cmd.args(["--port", "0"]).args(args);
    f(&mut cmd);
    let proc = Proc::spawn("drover-sample", cmd, &log);
    let addr = wait_until(
        Duration::from_secs(20),
        "drover-sample prints `listening on ADDR`",
        || {
            if let Some(status) = proc.try_exit() {
                panic!(
                    "drover-sample exited early ({status}):\n{}",
                    proc.describe(20)
                );
            }
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(|a| a.trim().to_string())
        },
    );
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "unexpected address {addr}"
    );
    Sample {
        proc,
        addr,
        _dir: dir,
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

#[test]
fn serves_version_and_health() {
    let s = start(&["--version", "v7"]);
    assert_eq!(get(&s.addr, "/"), (200, "drover-sample v7\n".to_string()));
    assert_eq!(get(&s.addr, "/healthz").0, 200);
    assert_eq!(get(&s.addr, "/nope").0, 404);
    let (code, stats) = get(&s.addr, "/stats");
    assert_eq!(code, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["version"], "v7");
    assert_eq!(stats["requests"], 1);
}

#[test]
fn version_header_and_env_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let version_file = dir.path().join("VERSION");
    std::fs::write(&version_file, "2.0.1\n").expect("write VERSION");
    let s = start_with(&[], |cmd| {
        cmd.env("SAMPLE_VERSION_FILE", &version_file);
    });
    let mut stream = std::net::TcpStream::connect(&s.addr).expect("connect");
    use std::io::{Read, Write};
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let lower = raw.to_ascii_lowercase();
    assert!(lower.contains("x-version: 2.0.1"), "no X-Version: {raw}");
    assert!(raw.ends_with("drover-sample 2.0.1\n"), "body: {raw}");
}

#[test]
fn failing_health_knobs() {
    let s = start(&["--fail-health"]);
    assert_eq!(get(&s.addr, "/healthz").0, 503);
    assert_eq!(get(&s.addr, "/").0, 200);

    let dir = tempfile::tempdir().expect("temp dir");
    let flag = dir.path().join("unhealthy");
    let s = start(&["--fail-health-file", &flag.display().to_string()]);
    assert_eq!(get(&s.addr, "/healthz").0, 200);
    std::fs::write(&flag, "").expect("create flag file");
    assert_eq!(get(&s.addr, "/healthz").0, 503);
    std::fs::remove_file(&flag).expect("remove flag file");
    assert_eq!(get(&s.addr, "/healthz").0, 200);
}

#[test]
fn error_rate_is_deterministic() {
    let s = start(&["--error-rate", "0.5"]);
    let codes: Vec<u16> = (0..10).map(|_| get(&s.addr, "/").0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{codes:?}");
}

#[test]
fn start_delay_and_latency() {
    let started = Instant::now();
    let s = start(&["--start-delay", "700ms", "--latency", "300ms"]);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "listening after {:?}, before the start delay",
        started.elapsed()
    );
    let t = Instant::now();
    assert_eq!(get(&s.addr, "/").0, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Health checks are not slowed down: with an hour of latency on `/`,
    // `/healthz` still answers (the client gives up after 10 s).
    let slow = start(&["--latency", "1h"]);
    assert_eq!(get(&slow.addr, "/healthz").0, 200);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let s = start(&["--latency", "1500ms"]);
    let addr = s.addr.clone();
    let slow = std::thread::spawn(move || http_get(&addr, "/"));
    wait_until(
        Duration::from_secs(10),
        "the slow request is in flight",
        || {
            http_get(&s.addr, "/stats")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .is_some_and(|v| v["in_flight"] == 1)
        },
    );
    let (status, in_time) = s.proc.terminate(Duration::from_secs(10));
    assert!(in_time, "did not exit within 10 s of SIGTERM");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        s.proc.describe(20)
    );
    let resp = slow
        .join()
        .expect("join request thread")
        .expect("the in-flight request completes");
    assert_eq!(resp, (200, "drover-sample dev\n".to_string()));
    // And it no longer accepts connections.
    assert!(http_get(&s.addr, "/healthz").is_err());
}

#[test]
fn exits_when_the_watched_process_is_gone() {
    // A short-lived process to watch.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let pid = gone.id();
    gone.wait().expect("wait for true");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin_path("drover-sample"));
    cmd.args(["--port", "0", "--watch-pid", &pid.to_string()]);
    let proc = Proc::spawn("drover-sample", cmd, &dir.path().join("sample.log"));
    let status = proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the watched pid is gone");
    assert_eq!(status.code(), Some(0));
}

/// One sample's value in a Prometheus exposition (`name{labels} value`).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn the_error_rate_and_latency_knobs_show_in_haproxys_counters_and_in_metrics() {
    let s = start(&["--error-rate", "0.25", "--latency", "30ms"]);
    let port: u16 = s
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Haproxy::start(dir.path(), "web", &[Server::new("h1", port)]);
    h.wait_serving(1, Duration::from_secs(20));
    // 8 requests through HAProxy; every 4th is answered 500.
    let codes: Vec<u16> = (0..8).map(|_| get(&h.frontend_addr(), "/").0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 2, "{codes:?}");

    let stat = h
        .servers()
        .expect("show stat")
        .into_iter()
        .find(|s| s.server == "h1")
        .expect("h1 listed");
    assert_eq!((stat.req_tot, stat.hrsp_5xx), (8, 2), "{stat:?}");

    let (code, text) = get(&s.addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains("# TYPE http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE http_request_duration_seconds histogram"),
        "{text}"
    );
    // Only `GET /` counts: HAProxy's health checks of /healthz do not.
    assert_eq!(metric(&text, "http_requests_total{code=\"200\"}"), 6.0);
    assert_eq!(metric(&text, "http_requests_total{code=\"500\"}"), 2.0);
    // Every request took the 30 ms latency at least.
    assert_eq!(
        metric(&text, "http_request_duration_seconds_bucket{le=\"0.025\"}"),
        0.0
    );
    assert_eq!(
        metric(&text, "http_request_duration_seconds_bucket{le=\"+Inf\"}"),
        8.0
    );
    assert_eq!(metric(&text, "http_request_duration_seconds_count"), 8.0);
    assert!(
        metric(&text, "http_request_duration_seconds_sum") >= 0.24,
        "{text}"
    );
}
