//! Instance health checks (http, tcp, exec) and the rise/fall state that
//! turns single results into a verdict.
//!
//! The HTTP check uses the agent's tiny client ([`crate::http`]): one GET
//! with `Connection: close`, and only the status line is read.

use std::time::{Duration, Instant};

use drover_proto::v1::HealthState;
use tokio::net::TcpStream;

use crate::config::{CheckConfig, HealthConfig, HttpTarget};

/// Longest check error kept for reports.
const MAX_ERROR_LEN: usize = 256;

/// One configured check, ready to run.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    check: CheckConfig,
    timeout: Duration,
}

impl HealthCheck {
    pub fn new(cfg: &HealthConfig) -> HealthCheck {
        HealthCheck {
            check: cfg.check.clone(),
            timeout: cfg.timeout,
        }
    }

    /// Runs the check once, bounded by the timeout. Returns the result and
    /// how long it took.
    pub async fn run(&self) -> (Result<(), String>, Duration) {
        let started = Instant::now();
        let fut = async {
            match &self.check {
                CheckConfig::Http(target) => http_check(target).await,
                CheckConfig::Tcp { host, port } => tcp_check(host, *port).await,
                CheckConfig::Exec { command } => exec_check(command).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            )),
        };
        (result.map_err(truncate), started.elapsed())
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

async fn http_check(target: &HttpTarget) -> Result<(), String> {
    let status = crate::http::status(target).await?;
    if status == target.expect_status {
        Ok(())
    } else {
        Err(format!(
            "HTTP status {status}, expected {}",
            target.expect_status
        ))
    }
}

pub use crate::http::parse_status_line;

async fn tcp_check(host: &str, port: u16) -> Result<(), String> {
    TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|e| format!("connect {host}:{port}: {e}"))
}

async fn exec_check(command: &[String]) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("empty command".into());
    };
    // kill_on_drop: the timeout in `run` drops this future, which kills a
    // check that hangs.
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("run {program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if detail.is_empty() {
        Err(format!("{program}: {}", out.status))
    } else {
        Err(format!("{program}: {}: {detail}", out.status))
    }
}

/// Consecutive-result bookkeeping: Unknown until `rise` successes in a row
/// (Healthy) or `fall` failures in a row (Unhealthy); after that the state
/// flips only on `rise`/`fall` consecutive opposite results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    pub state: HealthState,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_latency_ms: u32,
    pub last_error: String,
}

impl HealthTracker {
    pub fn new(rise: u32, fall: u32) -> HealthTracker {
        HealthTracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: HealthState::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_latency_ms: 0,
            last_error: String::new(),
        }
    }

    /// Records one result; returns whether the state changed.
    pub fn record(&mut self, result: &Result<(), String>, latency: Duration) -> bool {
        self.last_latency_ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        let before = self.state;
        match result {
            Ok(()) => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                self.last_error.clear();
                if self.consecutive_successes >= self.rise {
                    self.state = HealthState::Healthy;
                }
            }
            Err(e) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.last_error.clone_from(e);
                if self.consecutive_failures >= self.fall {
                    self.state = HealthState::Unhealthy;
                }
            }
        }
        self.state != before
    }

    /// Takes a passed verify step as proof: the instance is Healthy now,
    /// as if `rise` checks in a row had passed. Verify ran the same check
    /// until it passed (for min_healthy_time), so reporting the instance
    /// as not yet known for up to `rise` more intervals would only hold
    /// back the rollout that just verified it.
    pub fn verified(&mut self) {
        self.consecutive_successes = self.consecutive_successes.max(self.rise);
        self.consecutive_failures = 0;
        self.last_error.clear();
        self.state = HealthState::Healthy;
    }

    /// Forgets all results, e.g. when the instance stopped: a restarted
    /// instance has to prove itself again.
    pub fn reset(&mut self) {
        *self = HealthTracker {
            last_error: std::mem::take(&mut self.last_error),
            ..HealthTracker::new(self.rise, self.fall)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_passed_verify_counts_as_risen() {
        let mut t = HealthTracker::new(3, 2);
        t.record(&Err("refused".into()), ms(1));
        assert_eq!(t.state, HealthState::Unknown);
        t.verified();
        assert_eq!(t.state, HealthState::Healthy);
        assert_eq!(t.consecutive_successes, 3);
        assert!(t.last_error.is_empty());
        // Failures count from there as usual.
        assert!(!t.record(&Err("refused".into()), ms(1)));
        assert!(t.record(&Err("refused".into()), ms(1)));
        assert_eq!(t.state, HealthState::Unhealthy);
    }

    #[test]
    fn rise_and_fall() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.state, HealthState::Unknown);
        assert!(!t.record(&Ok(()), ms(3)));
        assert_eq!(t.state, HealthState::Unknown);
        assert!(t.record(&Ok(()), ms(4)));
        assert_eq!(t.state, HealthState::Healthy);
        assert_eq!((t.consecutive_successes, t.last_latency_ms), (2, 4));

        let fail = Err("boom".to_string());
        assert!(!t.record(&fail, ms(1)));
        assert!(!t.record(&fail, ms(1)));
        assert_eq!(t.state, HealthState::Healthy);
        // A success in between restarts the failure count.
        assert!(!t.record(&Ok(()), ms(1)));
        assert!(!t.record(&fail, ms(1)));
        assert!(!t.record(&fail, ms(1)));
        assert!(t.record(&fail, ms(1)));
        assert_eq!(t.state, HealthState::Unhealthy);
        assert_eq!((t.consecutive_failures, t.consecutive_successes), (3, 0));
        assert_eq!(t.last_error, "boom");

        assert!(!t.record(&Ok(()), ms(1)));
        assert_eq!(t.state, HealthState::Unhealthy);
        assert!(t.last_error.is_empty());
        assert!(t.record(&Ok(()), ms(1)));
        assert_eq!(t.state, HealthState::Healthy);

        t.reset();
        assert_eq!(t.state, HealthState::Unknown);
        assert_eq!(t.consecutive_successes, 0);
    }

    #[test]
    fn unhealthy_from_unknown_after_fall_failures() {
        let mut t = HealthTracker::new(1, 2);
        let fail = Err("x".to_string());
        assert!(!t.record(&fail, ms(1)));
        assert_eq!(t.state, HealthState::Unknown);
        assert!(t.record(&fail, ms(1)));
        assert_eq!(t.state, HealthState::Unhealthy);
        assert!(t.record(&Ok(()), ms(1)));
        assert_eq!(t.state, HealthState::Healthy);
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Ok(503));
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
    }

    /// Serves one canned response per connection and records the request.
    async fn serve(response: &'static str) -> (u16, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 256];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned()).await;
                if !response.is_empty() {
                    let _ = sock.write_all(response.as_bytes()).await;
                }
                // Holding the socket open for the empty response makes the
                // client time out.
                if response.is_empty() {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        });
        (port, rx)
    }

    fn http(port: u16, expect_status: u16, timeout: Duration) -> HealthCheck {
        HealthCheck {
            check: CheckConfig::Http(HttpTarget {
                host: "127.0.0.1".into(),
                port,
                path: "/healthz?x=1".into(),
                expect_status,
            }),
            timeout,
        }
    }

    #[tokio::test]
    async fn http_check_against_a_local_listener() {
        let (port, mut requests) = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let (result, _latency) = http(port, 200, Duration::from_secs(2)).run().await;
        assert_eq!(result, Ok(()));
        let req = requests.recv().await.expect("request");
        assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
        assert!(req.contains("Connection: close\r\n"), "{req}");

        let (result, _) = http(port, 204, Duration::from_secs(2)).run().await;
        assert_eq!(result, Err("HTTP status 200, expected 204".to_string()));

        let (port, _requests) = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let (result, _) = http(port, 200, Duration::from_secs(2)).run().await;
        assert_eq!(result, Err("HTTP status 503, expected 200".to_string()));

        let (port, _requests) = serve("").await;
        let (result, latency) = http(port, 200, Duration::from_millis(200)).run().await;
        assert_eq!(result, Err("timed out after 200ms".to_string()));
        assert!(latency >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn http_and_tcp_checks_report_refused_connections() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (result, _) = http(port, 200, Duration::from_secs(2)).run().await;
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.starts_with("connect 127.0.0.1:")),
            "{result:?}"
        );
        let tcp = HealthCheck {
            check: CheckConfig::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            timeout: Duration::from_secs(2),
        };
        assert!(tcp.run().await.0.is_err());
        let (open, _requests) = serve("HTTP/1.1 200 OK\r\n\r\n").await;
        let tcp = HealthCheck {
            check: CheckConfig::Tcp {
                host: "127.0.0.1".into(),
                port: open,
            },
            timeout: Duration::from_secs(2),
        };
        assert_eq!(tcp.run().await.0, Ok(()));
    }

    #[tokio::test]
    async fn exec_check_exit_codes_and_timeout() {
        let exec = |args: &[&str], timeout| HealthCheck {
            check: CheckConfig::Exec {
                command: args.iter().map(|s| s.to_string()).collect(),
            },
            timeout,
        };
        let t = Duration::from_secs(5);
        assert_eq!(exec(&["/bin/sh", "-c", "exit 0"], t).run().await.0, Ok(()));
        let r = exec(&["/bin/sh", "-c", "echo nope >&2; exit 3"], t)
            .run()
            .await
            .0;
        assert!(r.as_ref().is_err_and(|e| e.contains("nope")), "{r:?}");
        let started = Instant::now();
        let r = exec(&["/bin/sleep", "10"], Duration::from_millis(200))
            .run()
            .await
            .0;
        assert!(r.as_ref().is_err_and(|e| e.contains("timed out")), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(exec(&["/nonexistent/check"], t).run().await.0.is_err());
    }
}
