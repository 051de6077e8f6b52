//! Draining against a real HAProxy (Debian's `haproxy`, started by the test
//! on loopback with its runtime API on a unix socket and on TCP): drain
//! waits for in-flight sessions, the drain timeout proceeds, undrain puts
//! the server back only once HAProxy has it UP again, weights change,
//! unreachable or refusing HAProxies fail the step, and the agent's view
//! of HAProxy follows the server DOWN and back UP after `rise` checks.
//!
//! HAProxy must be installed (`apt-get install haproxy`; scripts/setup
//! does it): this test fails, it does not skip, when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use drover_agent::config::{DrainConfig, HaproxyAddr, HaproxyDrain};
use drover_agent::drain::view::{self, Watcher};
use drover_agent::drain::{self, haproxy};
use drover_agent::supervisor::StatusBoard;
use drover_proto::v1::{InstanceStatus, LoadBalancerState, LoadBalancerView};
use drover_testkit::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

/// Two distinct free ports (both held while the second is picked).
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("addr").port();
    (port(&a), port(&b))
}

/// A backend that answers each request only when the test says so, so
/// sessions can be held open through HAProxy.
async fn backend() -> (u16, mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (release, held) = oneshot::channel();
                if tx.send(release).is_err() {
                    return;
                }
                let _ = held.await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, rx)
}

struct Haproxy {
    child: std::process::Child,
    unix: HaproxyAddr,
    tcp: HaproxyAddr,
    front: u16,
    log: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// Starts HAProxy on free loopback ports; a port taken in the meantime
    /// by someone else (HAProxy then fails to bind) means another try.
    /// The server is not health-checked.
    async fn start(dir: &Path, backend_port: u16) -> Haproxy {
        Haproxy::start_with(dir, backend_port, "").await
    }

    /// [`Haproxy::start`] with `server_options` on the server line (e.g.
    /// `check inter 200ms rise 3 fall 1`).
    async fn start_with(dir: &Path, backend_port: u16, server_options: &str) -> Haproxy {
        for _ in 0..5 {
            if let Some(h) = Haproxy::try_start(dir, backend_port, server_options).await {
                return h;
            }
        }
        panic!("haproxy could not bind free ports five times in a row");
    }

    async fn try_start(dir: &Path, backend_port: u16, server_options: &str) -> Option<Haproxy> {
        let sock = dir.join("admin.sock");
        let _ = std::fs::remove_file(&sock);
        let (admin, front) = free_ports();
        let cfg = format!(
            "global\n    stats socket {} mode 600 level admin\n    stats socket ipv4@127.0.0.1:{admin} level admin\n\
defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 0\n\
frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n\
backend web\n    server h1-web 127.0.0.1:{backend_port} {server_options}\n",
            sock.display()
        );
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("write config");
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = match std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run haproxy ({e}): install it with `apt-get install haproxy` (scripts/setup does)"
            ),
        };
        let mut h = Haproxy {
            child,
            unix: HaproxyAddr::Unix(sock),
            tcp: HaproxyAddr::Tcp {
                host: "127.0.0.1".into(),
                port: admin,
            },
            front,
            log,
        };
        let start = Instant::now();
        loop {
            let unix_ok = haproxy::command(&h.unix, "show info").await.is_ok();
            let tcp_ok = haproxy::command(&h.tcp, "show info").await.is_ok();
            if unix_ok && tcp_ok {
                return Some(h);
            }
            let text = std::fs::read_to_string(&h.log).unwrap_or_default();
            if let Ok(Some(status)) = h.child.try_wait() {
                if text.contains("cannot bind") {
                    return None;
                }
                panic!("haproxy exited ({status}); log:\n{text}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "haproxy did not come up; log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stat(&self) -> haproxy::ServerStat {
        haproxy::server_stat(&self.unix, "web", "h1-web")
            .await
            .expect("show stat")
    }

    async fn wait_stat(&self, what: &str, pred: impl Fn(&haproxy::ServerStat) -> bool) {
        let last = std::cell::RefCell::new(None);
        wait_until_async(
            DEADLINE,
            what,
            async || {
                let s = self.stat().await;
                let ok = pred(&s);
                *last.borrow_mut() = Some(s);
                ok
            },
            || format!("last stat: {:?}", last.borrow()),
        )
        .await;
    }

    fn drain_cfg(&self, timeout: Duration) -> DrainConfig {
        DrainConfig::Haproxy(HaproxyDrain {
            sockets: vec![self.unix.clone(), self.tcp.clone()],
            backend: "web".into(),
            server: "h1-web".into(),
            timeout,
        })
    }

    /// A request through HAProxy, held open by the backend; returns the
    /// client side to read the answer from.
    async fn request(&self) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", self.front))
            .await
            .expect("connect to haproxy");
        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send");
        s
    }
}

/// Reads until the backend's whole answer is in (HAProxy keeps the
/// client connection open afterwards).
async fn read_answer(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    while !out.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(DEADLINE.saturating_sub(start.elapsed()), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn quiet() -> impl Fn(String) + Send + Sync {
    |_| {}
}

/// An undrain of web@h1 that may wait `within`.
fn wait_for_up(
    progress: &(dyn Fn(String) + Send + Sync),
    within: Duration,
) -> drain::UndrainWait<'_> {
    drain::UndrainWait {
        instance: "web@h1",
        deadline: tokio::time::Instant::now() + within,
        progress,
    }
}

#[tokio::test]
async fn drains_waits_for_sessions_and_undrains_on_a_real_haproxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, mut held) = backend().await;
    let h = Haproxy::start(dir.path(), port).await;
    h.wait_stat("the server to be up", |s| s.status != "DOWN")
        .await;

    // A session in flight when the drain begins.
    let client = h.request().await;
    let release = tokio::time::timeout(DEADLINE, held.recv())
        .await
        .expect("request reached the backend")
        .expect("backend");
    h.wait_stat("one current session", |s| s.scur == 1).await;

    let cfg = h.drain_cfg(Duration::from_secs(10));
    let draining = tokio::spawn({
        let cfg = cfg.clone();
        async move { drain::drain(&cfg, &[]).await }
    });
    h.wait_stat("DRAIN", |s| s.status == "DRAIN").await;
    for addr in [&h.unix, &h.tcp] {
        let s = haproxy::server_stat(addr, "web", "h1-web")
            .await
            .expect("stat");
        assert_eq!((s.status.as_str(), s.scur), ("DRAIN", 1), "{addr}");
    }
    assert!(!draining.is_finished(), "drain must wait for the session");
    release.send(()).expect("release the request");
    assert!(read_answer(client).await.contains("200 OK"));
    let msg = tokio::time::timeout(DEADLINE, draining)
        .await
        .expect("drain ends")
        .expect("join")
        .expect("drained");
    assert!(msg.contains("sessions reached 0"), "{msg}");

    let msg = drain::undrain(&cfg, &[], &wait_for_up(&quiet(), DEADLINE))
        .await
        .expect("undrain")
        .message;
    assert!(msg.contains("ready and UP on 2 HAProxy"), "{msg}");
    h.wait_stat("out of DRAIN", |s| s.status != "DRAIN").await;

    // The drain timeout proceeds, saying how many sessions were left.
    let client = h.request().await;
    let release = held.recv().await.expect("held request");
    h.wait_stat("one current session", |s| s.scur == 1).await;
    let started = Instant::now();
    let msg = drain::drain(&h.drain_cfg(Duration::from_millis(300)), &[])
        .await
        .expect("a drain timeout is not a failure");
    assert_eq!(msg, "drain timeout with 2 sessions");
    assert!(started.elapsed() >= Duration::from_millis(300));
    release.send(()).expect("release");
    assert!(read_answer(client).await.contains("200 OK"));
    drain::undrain(&cfg, &[], &wait_for_up(&quiet(), DEADLINE))
        .await
        .expect("undrain");

    // Weights, for traffic shifting.
    haproxy::set_weight(&h.tcp, "web", "h1-web", haproxy::Weight::Absolute(50))
        .await
        .expect("weight");
    h.wait_stat("weight 50", |s| s.weight == Some(50)).await;
    let DrainConfig::Haproxy(every) = &cfg else {
        panic!("haproxy drain");
    };
    let done = drain::weight::set(every, haproxy::Weight::Absolute(10))
        .await
        .expect("weight on all");
    assert_eq!(done.message, "weight 10 on web/h1-web on 2 HAProxy");
    h.wait_stat("weight 10", |s| s.weight == Some(10)).await;

    // Refusals name the HAProxy and its answer.
    let err = haproxy::set_state(&h.unix, "web", "nope", haproxy::AdminState::Drain)
        .await
        .expect_err("no such server");
    assert!(err.to_string().contains("No such server"), "{err}");
}

#[tokio::test]
async fn an_unreachable_haproxy_fails_the_drain_and_the_others_are_put_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _held) = backend().await;
    let h = Haproxy::start(dir.path(), port).await;
    h.wait_stat("the server to be up", |s| s.status != "DOWN")
        .await;
    let missing = HaproxyAddr::Unix(dir.path().join("missing.sock"));
    let cfg = DrainConfig::Haproxy(HaproxyDrain {
        sockets: vec![h.unix.clone(), missing.clone()],
        backend: "web".into(),
        server: "h1-web".into(),
        timeout: Duration::from_secs(5),
    });
    let (err, maybe_drained) = drain::drain(&cfg, &[]).await.expect_err("unreachable");
    assert!(
        err.to_string().contains("missing.sock") && err.to_string().contains("unreachable"),
        "{err}"
    );
    assert!(!maybe_drained, "the reachable HAProxy was put back");
    let s = h.stat().await;
    assert_ne!(s.status, "DRAIN", "{s:?}");
}

/// A server that HAProxy's layer-4 check can reach or not: `up` listens
/// on a fixed port (accepting and closing), `down` stops listening.
struct Toggle {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Toggle {
    async fn new() -> Toggle {
        let port = free_ports().0;
        let mut t = Toggle { port, task: None };
        t.up().await;
        t
    }

    async fn up(&mut self) {
        let port = self.port;
        let listener = wait_until_async(
            DEADLINE,
            "the check target's port is free again",
            async || TcpListener::bind(("127.0.0.1", port)).await.ok(),
            || format!("port {port}"),
        )
        .await;
        self.task = Some(tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                drop(sock);
            }
        }));
    }

    async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// One instance's slot on a status board, registered with `cfg`'s HAProxy.
fn board_for(cfg: &DrainConfig) -> StatusBoard {
    StatusBoard::new(vec![InstanceStatus {
        id: "web@h1".into(),
        load_balancers: view::unread(cfg),
        ..InstanceStatus::default()
    }])
}

fn views(board: &StatusBoard) -> Vec<LoadBalancerView> {
    board.get(0).map(|s| s.load_balancers).unwrap_or_default()
}

async fn wait_view(
    board: &StatusBoard,
    what: &str,
    pred: impl Fn(&[LoadBalancerView]) -> bool,
) -> Vec<LoadBalancerView> {
    wait_until_async(
        DEADLINE,
        what,
        async || {
            let v = views(board);
            pred(&v).then_some(v)
        },
        || format!("{:#?}", views(board)),
    )
    .await
}

fn all_in(state: LoadBalancerState) -> impl Fn(&[LoadBalancerView]) -> bool {
    move |v| !v.is_empty() && v.iter().all(|v| v.state() == state)
}

#[tokio::test]
async fn the_agent_sees_haproxy_take_a_killed_server_down_and_up_after_rise_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Toggle::new().await;
    let h = Haproxy::start_with(dir.path(), server.port, "check inter 200ms rise 3 fall 1").await;
    let cfg = h.drain_cfg(Duration::from_secs(5));
    let DrainConfig::Haproxy(drain_cfg) = &cfg else {
        panic!("haproxy drain");
    };
    let board = board_for(&cfg);
    // Nothing read yet: unknown, never up.
    assert!(all_in(LoadBalancerState::Unknown)(&views(&board)));
    let stop = CancellationToken::new();
    let watcher = Watcher::for_drains(
        &[(0, drain_cfg.clone())],
        board.clone(),
        Duration::from_millis(50),
    )
    .expect("one registration");
    let task = tokio::spawn(watcher.run(stop.clone()));

    let up = wait_view(
        &board,
        "both HAProxy sockets to say UP",
        all_in(LoadBalancerState::Up),
    )
    .await;
    assert_eq!(up.len(), 2, "one view per socket: {up:#?}");
    assert_eq!(up[0].balancer, h.unix.to_string());
    assert_eq!(up[1].balancer, h.tcp.to_string());
    assert!(
        up.iter()
            .all(|v| v.weight == 1 && v.server == "h1-web" && v.backend == "web"),
        "{up:#?}"
    );

    // A change of state wakes whoever reports, like a change of health.
    let mut reports = board.subscribe();
    reports.borrow_and_update();
    server.down().await;
    let down = wait_view(&board, "DOWN", all_in(LoadBalancerState::Down)).await;
    assert!(
        reports.has_changed().expect("board open"),
        "a DOWN must trigger a report"
    );
    assert_eq!(down[0].status, "DOWN", "{down:#?}");

    // Back: HAProxy takes `rise` checks to route to it again, and the
    // view says so meanwhile.
    server.up().await;
    let mut rising = Vec::new();
    wait_until_async(
        DEADLINE,
        "the view is UP again",
        async || {
            let v = views(&board);
            if let Some(first) = v.first()
                && rising.last() != Some(&first.status)
            {
                rising.push(first.status.clone());
            }
            all_in(LoadBalancerState::Up)(&v)
        },
        || format!("{:#?}", views(&board)),
    )
    .await;
    assert!(
        rising
            .iter()
            .any(|s| s.starts_with("DOWN ") && s.ends_with("/3")),
        "the view must show the checks rising: {rising:?}"
    );
    stop.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the watcher stops when cancelled")
        .expect("join");
}

#[tokio::test]
async fn undrain_waits_until_haproxy_has_the_server_up_and_times_out_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Toggle::new().await;
    let h = Haproxy::start_with(dir.path(), server.port, "check inter 300ms rise 3 fall 1").await;
    h.wait_stat("UP", |s| s.status == "UP").await;
    let cfg = h.drain_cfg(Duration::from_secs(5));
    // Drained and stopped, as in a rollout's step.
    drain::drain(&cfg, &[]).await.expect("drain");
    server.down().await;
    h.wait_stat("DOWN", |s| s.status == "DOWN").await;

    // The instance is not back: the undrain fails by its deadline and
    // says what HAProxy sees.
    let said = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |m: String| said.lock().expect("lock").push(m);
    let started = Instant::now();
    let err = drain::undrain(
        &cfg,
        &[],
        &wait_for_up(&progress, Duration::from_millis(1500)),
    )
    .await
    .expect_err("never UP");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "inside the deadline"
    );
    let text = err.to_string();
    assert!(
        text.contains("did not see web@h1 UP")
            && text.contains("DOWN")
            && text.contains("state ready"),
        "{text}"
    );
    let stat = h.stat().await;
    assert_eq!(stat.status, "DOWN", "ready, but down by its checks");

    // Back: undrain returns only once HAProxy has it UP, after its rise
    // checks, and says so meanwhile.
    drain::drain(&cfg, &[]).await.expect("drain again");
    said.lock().expect("lock").clear();
    server.up().await;
    let done = drain::undrain(&cfg, &[], &wait_for_up(&progress, DEADLINE))
        .await
        .expect("undrained");
    let stat = h.stat().await;
    assert_eq!(
        (stat.status.as_str(), stat.state),
        ("UP", LoadBalancerState::Up)
    );
    assert!(
        done.message.contains("ready and UP on 2 HAProxy"),
        "{}",
        done.message
    );
    assert_eq!(done.views.len(), 2);
    assert!(
        all_in(LoadBalancerState::Up)(&done.views),
        "{:#?}",
        done.views
    );
    let said = said.lock().expect("lock").clone();
    assert!(
        said.iter()
            .any(|m| m.starts_with("waiting for haproxy to see web@h1 UP: DOWN")),
        "progress while HAProxy's checks rise: {said:?}"
    );
    assert!(
        said.iter().any(|m| m.contains("checks")),
        "progress names the checks: {said:?}"
    );
}

#[tokio::test]
async fn a_haproxy_that_does_not_answer_is_unknown_not_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A socket that accepts and never answers, and one nobody listens on.
    let slow_path = dir.path().join("slow.sock");
    let slow = tokio::net::UnixListener::bind(&slow_path).expect("bind");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = slow.accept().await {
            open.push(s);
        }
    });
    let cfg = DrainConfig::Haproxy(HaproxyDrain {
        sockets: vec![
            HaproxyAddr::Unix(slow_path),
            HaproxyAddr::Unix(dir.path().join("missing.sock")),
        ],
        backend: "web".into(),
        server: "h1-web".into(),
        timeout: Duration::from_secs(5),
    });
    let DrainConfig::Haproxy(drain_cfg) = &cfg else {
        panic!("haproxy drain");
    };
    let board = board_for(&cfg);
    let stop = CancellationToken::new();
    let watcher = Watcher::for_drains(
        &[(0, drain_cfg.clone())],
        board.clone(),
        Duration::from_millis(50),
    )
    .expect("registered");
    let task = tokio::spawn(watcher.run(stop.clone()));
    let v = wait_view(&board, "both read and unknown", |v| {
        v.iter()
            .all(|v| v.state() == LoadBalancerState::Unknown && v.status != "not read yet")
    })
    .await;
    assert!(v[0].status.contains("no answer within"), "{v:#?}");
    assert!(v[1].status.contains("unreachable"), "{v:#?}");
    stop.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("a hanging socket does not hold the watcher")
        .expect("join");
    held.abort();
}
