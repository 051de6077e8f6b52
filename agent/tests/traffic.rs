//! Traffic shifting against real HAProxies (Debian's `haproxy`, started by
//! the test on loopback with its runtime API on a unix socket), through a
//! real agent in this process and a fake coordinator over mutual TLS:
//! SetWeight on two HAProxies, held across drain/undrain and an agent
//! restart, re-asserted after an HAProxy restart, restored; an
//! unreachable HAProxy fails the step naming it; static-rr and instances
//! without an HAProxy drain are refused; HAProxy's counters and the
//! instance's own /metrics ride along with the reports.
//!
//! HAProxy must be installed (`apt-get install haproxy`; scripts/setup
//! does it): this test fails, it does not skip, when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Agent, Ca, Coordinator, DEADLINE, KillInstances, command, kinds};
use drover_agent::config::HaproxyAddr;
use drover_agent::drain::haproxy;
use drover_agent::journal;
use drover_proto::v1::command::Kind;
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{InstanceStatus, SetWeightCommand};
use drover_testkit::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// An HTTP server standing in for the instance behind HAProxy: answers
/// every request, each `error_every`-th with 500 (0: never).
async fn http_backend(error_every: u64) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let status = if error_every > 0 && n.is_multiple_of(error_every) {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, served)
}

/// A real HAProxy: frontend on a free port, backend `web` with `balance
/// ALGO` and server h1-web (configured weight 100) at `backend_port`,
/// runtime API on a unix socket. Killed on drop; `restart` starts it
/// again from the same config (losing its runtime weights, as a reload
/// does).
struct Haproxy {
    child: Option<std::process::Child>,
    socket: PathBuf,
    config: PathBuf,
    front: u16,
    log: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Haproxy {
    async fn start(dir: &Path, name: &str, algo: &str, backend_port: u16) -> Haproxy {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let socket = dir.join("admin.sock");
        let front = free_port();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    stats socket {} mode 600 level admin\n\
defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 0\n\
frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n\
backend web\n    balance {algo}\n    server h1-web 127.0.0.1:{backend_port} weight 100\n",
                socket.display()
            ),
        )
        .expect("write config");
        let mut h = Haproxy {
            child: None,
            socket,
            config,
            front,
            log: dir.join("haproxy.log"),
        };
        h.restart().await;
        h
    }

    fn addr(&self) -> HaproxyAddr {
        HaproxyAddr::Unix(self.socket.clone())
    }

    async fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let out = std::fs::File::create(&self.log).expect("log");
        let err = out.try_clone().expect("log");
        let child = std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&self.config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run haproxy ({e}): install it with `apt-get install haproxy`")
            });
        self.child = Some(child);
        let addr = self.addr();
        let log = self.log.clone();
        wait_until_async(
            DEADLINE,
            "HAProxy's runtime API to answer",
            async || haproxy::command(&addr, "show info").await.is_ok(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )
        .await;
    }

    /// h1-web's user weight as HAProxy shows it.
    async fn weight(&self) -> Option<u32> {
        haproxy::read(&self.addr(), Duration::from_secs(2))
            .await
            .ok()?
            .server("web", "h1-web")?
            .uweight
    }

    async fn wait_weight(&self, want: u32, what: &str) {
        let last = std::cell::Cell::new(None);
        wait_until_async(
            DEADLINE,
            what,
            async || {
                let w = self.weight().await;
                last.set(w);
                w == Some(want)
            },
            || {
                format!(
                    "HAProxy {} shows weight {:?}",
                    self.socket.display(),
                    last.get()
                )
            },
        )
        .await;
    }

    /// One GET through the frontend; the status code (0: no answer).
    async fn request(&self) -> u16 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.front)).await else {
            return 0;
        };
        if s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return 0;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut answer)).await;
        drover_agent::http::parse_status_line(&answer).unwrap_or(0)
    }
}

struct Env {
    dir: tempfile::TempDir,
    coord: Coordinator,
}

impl Env {
    async fn new() -> Env {
        let ca = Ca::new("test CA");
        let coord = Coordinator::start(&ca).await;
        let dir = tempfile::tempdir().expect("tempdir");
        common::enrol_directly(
            &ca,
            &dir.path().join("agent"),
            "h1",
            Duration::from_secs(3600),
        );
        Env { dir, coord }
    }

    fn agent(&self, instances: &str) -> Agent {
        let text = format!("traffic_interval = \"1s\"\n{instances}");
        Agent::start(common::config(
            &self.dir.path().join("agent"),
            &self.coord.addr,
            &text,
        ))
    }
}

/// A sleeping process drained through HAProxy `sockets`, and more TOML.
fn instance(name: &str, sockets: &[&HaproxyAddr], more: &str) -> String {
    let list: Vec<String> = sockets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[instance]]\nname = \"{name}\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\nstop_timeout = \"2s\"\n\
[instance.drain]\ntype = \"haproxy\"\nsockets = [{}]\nbackend = \"web\"\nserver = \"h1-web\"\ntimeout = \"2s\"\n{more}",
        list.join(", ")
    )
}

fn weight(id: &str, w: u32) -> drover_proto::v1::Command {
    command(
        id,
        "web",
        Kind::SetWeight(SetWeightCommand {
            weight: w,
            restore: false,
        }),
    )
}

fn restore(id: &str) -> drover_proto::v1::Command {
    command(
        id,
        "web",
        Kind::SetWeight(SetWeightCommand {
            weight: 0,
            restore: true,
        }),
    )
}

#[tokio::test]
async fn weights_are_set_on_every_haproxy_held_through_drains_and_restarts_then_restored() {
    let mut env = Env::new().await;
    let (port, _) = http_backend(0).await;
    let a = Haproxy::start(env.dir.path(), "a", "roundrobin", port).await;
    let mut b = Haproxy::start(env.dir.path(), "b", "leastconn", port).await;
    let agent = env.agent(&instance("web", &[&a.addr(), &b.addr()], ""));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    let done = env.coord.run(weight("w/1", 25)).await;
    assert_eq!(done.phase(), Phase::Succeeded, "{done:?}");
    assert_eq!(done.message, "weight 25 on web/h1-web on 2 HAProxy");
    assert_eq!((a.weight().await, b.weight().await), (Some(25), Some(25)));
    let s = env
        .coord
        .status_where("the held weight and both views at 25", "web", |s| {
            s.weight_held
                && s.weight_set == 25
                && s.load_balancers.len() == 2
                && s.load_balancers.iter().all(|v| v.weight == 25)
        })
        .await;
    let algos: Vec<(&str, bool, u32)> = s
        .load_balancers
        .iter()
        .map(|v| {
            (
                v.algorithm.as_str(),
                v.algorithm_dynamic,
                v.configured_weight,
            )
        })
        .collect();
    assert_eq!(
        algos,
        vec![("roundrobin", true, 100), ("leastconn", true, 100)]
    );

    // The same id again: the recorded outcome, not a second run.
    let again = env.coord.run(weight("w/1", 25)).await;
    assert_eq!(
        (again.phase(), again.message.as_str()),
        (Phase::Succeeded, done.message.as_str())
    );
    let runs = journal::read_executions(&env.dir.path().join("agent"));
    assert_eq!(runs.iter().filter(|r| *r == "w/1").count(), 1, "{runs:?}");

    // Drain and undrain leave the weight alone.
    let d = env.coord.run(command("d/1", "web", kinds::drain())).await;
    assert_eq!(d.phase(), Phase::Succeeded, "{d:?}");
    let u = env.coord.run(command("u/1", "web", kinds::undrain())).await;
    assert_eq!(u.phase(), Phase::Succeeded, "{u:?}");
    assert_eq!((a.weight().await, b.weight().await), (Some(25), Some(25)));

    // HAProxy b restarts and comes back at its configured weight: the
    // agent sets the held one again, and says so.
    b.restart().await;
    b.wait_weight(
        25,
        "the agent to set weight 25 again on the restarted HAProxy",
    )
    .await;
    env.coord
        .status_where("a re-assertion reported", "web", |s| {
            s.weight_reasserted >= 1
        })
        .await;
    assert_eq!(a.weight().await, Some(25));

    // The held weight survives an agent restart.
    let cfg = agent.stop().await;
    let agent = Agent::start(cfg);
    let hello = env.coord.hello().await;
    let web = hello
        .instances
        .iter()
        .find(|i| i.name == "web")
        .expect("web");
    assert!(
        web.weight_held && web.weight_set == 25,
        "held from the state file: {web:?}"
    );

    // Restore: the configured weight everywhere, nothing held.
    let r = env.coord.run(restore("w/2")).await;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    assert_eq!(
        r.message,
        "configured weight 100 restored on web/h1-web on 2 HAProxy"
    );
    assert_eq!((a.weight().await, b.weight().await), (Some(100), Some(100)));
    env.coord
        .status_where(
            "nothing held after the restore",
            "web",
            |s: &InstanceStatus| !s.weight_held && s.weight_set == 0,
        )
        .await;
    drop(agent);
}

#[tokio::test]
async fn an_unreachable_haproxy_fails_the_weight_naming_it_and_gets_it_when_back() {
    let mut env = Env::new().await;
    let (port, _) = http_backend(0).await;
    let a = Haproxy::start(env.dir.path(), "a", "roundrobin", port).await;
    let mut b = Haproxy::start(env.dir.path(), "b", "roundrobin", port).await;
    // b is down when the weight is set.
    if let Some(mut c) = b.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let agent = env.agent(&instance("web", &[&a.addr(), &b.addr()], ""));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    let failed = env.coord.run(weight("w/1", 10)).await;
    assert_eq!(failed.phase(), Phase::Failed, "{failed:?}");
    let b_name = b.socket.display().to_string();
    assert!(
        failed.message.contains(&b_name) && failed.message.contains("unreachable"),
        "the message names the HAProxy and why: {}",
        failed.message
    );
    assert!(
        !failed.message.contains(&a.socket.display().to_string()),
        "only the failing HAProxy is named: {}",
        failed.message
    );
    // The reachable one has it; the agent holds it and sets it on b once
    // b answers again.
    assert_eq!(a.weight().await, Some(10));
    b.restart().await;
    b.wait_weight(10, "the held weight on the HAProxy that came back")
        .await;
}

#[tokio::test]
async fn static_algorithms_and_instances_without_haproxy_are_refused() {
    let mut env = Env::new().await;
    let (port, _) = http_backend(0).await;
    let h = Haproxy::start(env.dir.path(), "a", "static-rr", port).await;
    let exec = "[[instance]]\nname = \"api\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\n\
[instance.drain]\ntype = \"exec\"\ndrain = [\"/bin/true\"]\nundrain = [\"/bin/true\"]\n";
    let agent = env.agent(&format!("{}{exec}", instance("web", &[&h.addr()], "")));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    let refused = env.coord.run(weight("w/1", 50)).await;
    assert_eq!(refused.phase(), Phase::Failed, "{refused:?}");
    assert_eq!(
        refused.message,
        "backend web uses static-rr: HAProxy ignores weight changes; use roundrobin or leastconn"
    );
    assert_eq!(h.weight().await, Some(100), "nothing changed");
    let s = env
        .coord
        .status_where("static-rr read", "web", |s| {
            s.load_balancers
                .first()
                .is_some_and(|v| !v.algorithm.is_empty())
        })
        .await;
    assert!(!s.weight_held, "a refused weight is not held: {s:?}");
    assert_eq!(
        (
            s.load_balancers[0].algorithm.as_str(),
            s.load_balancers[0].algorithm_dynamic
        ),
        ("static-rr", false)
    );

    let mut cmd = weight("w/2", 50);
    cmd.instance = "api".into();
    let refused = env.coord.run(cmd).await;
    assert_eq!(refused.phase(), Phase::Failed, "{refused:?}");
    assert_eq!(
        refused.message,
        "api@h1 has no load balancer drover can weight (drain type exec)"
    );

    let too_big = env.coord.run(weight("w/3", 300)).await;
    assert_eq!(too_big.phase(), Phase::Failed, "{too_big:?}");
    assert!(too_big.message.contains("0 to 256"), "{}", too_big.message);
}

/// Serves a fixed Prometheus exposition at /metrics.
async fn metrics_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    port
}

const METRICS: &str = "# TYPE http_requests_total counter\n\
http_requests_total{code=\"200\"} 95\n\
http_requests_total{code=\"500\"} 5\n\
# TYPE http_request_duration_seconds histogram\n\
http_request_duration_seconds_bucket{le=\"0.01\"} 90\n\
http_request_duration_seconds_bucket{le=\"+Inf\"} 100\n\
http_request_duration_seconds_sum 1.25\n\
http_request_duration_seconds_count 100\n";

#[tokio::test]
async fn haproxy_counters_and_the_instances_own_metrics_ride_along_with_reports() {
    let mut env = Env::new().await;
    let (port, served) = http_backend(5).await;
    let h = Haproxy::start(env.dir.path(), "a", "roundrobin", port).await;
    let metrics_port = metrics_server(METRICS).await;
    let metrics =
        format!("[instance.metrics]\nurl = \"http://127.0.0.1:{metrics_port}/metrics\"\n");
    let agent = env.agent(&instance("web", &[&h.addr()], &metrics));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    // 20 requests through HAProxy, every 5th answered 500.
    let mut codes = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        codes.push(h.request().await);
        assert!(
            started.elapsed() < DEADLINE,
            "requests through HAProxy: {codes:?}"
        );
    }
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 4, "{codes:?}");
    assert_eq!(served.load(Ordering::SeqCst), 20);
    let s = env
        .coord
        .status_where("HAProxy's counters for the 20 requests", "web", |s| {
            s.load_balancers
                .first()
                .and_then(|v| v.counters)
                .is_some_and(|c| c.requests >= 20)
        })
        .await;
    let c = s.load_balancers[0].counters.expect("counters");
    assert_eq!(
        (
            c.requests,
            c.responses,
            c.responses_5xx,
            c.connection_errors,
            c.response_errors
        ),
        (20, 20, 4, 0, 0)
    );

    let s = env
        .coord
        .status_where("the instance's own metrics", "web", |s| {
            s.app_metrics.is_some()
        })
        .await;
    let m = s.app_metrics.expect("metrics");
    assert_eq!(m.error, "");
    assert_eq!((m.requests, m.errors, m.latency_count), (100, 5, 100));
    let buckets: Vec<(f64, u64)> = m.latency_buckets.iter().map(|b| (b.le, b.count)).collect();
    assert_eq!(buckets, vec![(0.01, 90), (f64::INFINITY, 100)]);
    assert!((m.latency_sum - 1.25).abs() < 1e-9);
    drop(agent);
}

#[tokio::test]
async fn hashing_is_left_to_haproxy_map_based_is_refused_and_consistent_is_taken() {
    let mut env = Env::new().await;
    let (port, _) = http_backend(0).await;
    let map = Haproxy::start(env.dir.path(), "map", "source", port).await;
    let consistent = Haproxy::start(
        env.dir.path(),
        "consistent",
        "source\n    hash-type consistent",
        port,
    )
    .await;
    let agent = env.agent(&format!(
        "{}{}",
        instance("web", &[&map.addr()], ""),
        instance("api", &[&consistent.addr()], "")
    ));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    let refused = env.coord.run(weight("w/1", 50)).await;
    assert_eq!(refused.phase(), Phase::Failed, "{refused:?}");
    assert_eq!(
        refused.message,
        "backend web uses source hashing without `hash-type consistent`: HAProxy ignores weight changes; use roundrobin or leastconn (or add `hash-type consistent`)"
    );
    assert_eq!(map.weight().await, Some(100));
    let s = env
        .coord
        .status_where("the refused weight not held", "web", |s| {
            s.load_balancers
                .first()
                .is_some_and(|v| v.algorithm == "source")
        })
        .await;
    assert!(!s.weight_held, "{s:?}");
    assert!(!s.load_balancers[0].algorithm_dynamic);

    let mut cmd = weight("w/2", 50);
    cmd.instance = "api".into();
    let done = env.coord.run(cmd).await;
    assert_eq!(done.phase(), Phase::Succeeded, "{done:?}");
    assert_eq!(consistent.weight().await, Some(50));
    // Now HAProxy shows a weight only consistent hashing takes.
    env.coord
        .status_where("consistent hashing known as dynamic", "api", |s| {
            s.weight_held
                && s.load_balancers
                    .first()
                    .is_some_and(|v| v.algorithm_dynamic)
        })
        .await;
}

#[tokio::test]
async fn counters_travel_at_the_traffic_interval_however_long_the_report_interval() {
    let mut env = Env::new().await;
    let (port, _) = http_backend(0).await;
    let h = Haproxy::start(env.dir.path(), "a", "roundrobin", port).await;
    let text = format!(
        "traffic_interval = \"1s\"\n{}",
        instance("web", &[&h.addr()], "")
    );
    let mut cfg = common::config(&env.dir.path().join("agent"), &env.coord.addr, &text);
    // Left alone, the agent would report once an hour.
    cfg.report_interval = Duration::from_secs(3600);
    let agent = Agent::start(cfg);
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;
    // A request at a time: each report must carry the count so far, and
    // reports keep coming though nothing but counters changes.
    let mut seen = Vec::new();
    for i in 1..=5u64 {
        assert_eq!(h.request().await, 200);
        let got = env
            .coord
            .expect(&format!("a report counting request {i}"), |e| match e {
                common::Event::Report(r) => r
                    .instances
                    .iter()
                    .find(|s| s.name == "web")
                    .and_then(|s| s.load_balancers.first())
                    .and_then(|v| v.counters)
                    .map(|c| c.requests)
                    .filter(|n| *n >= i),
                _ => None,
            })
            .await;
        seen.push(got);
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    drop(agent);
}
