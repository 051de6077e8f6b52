//! Draining against a real HAProxy (Debian's `haproxy`, started by the test
//! on loopback with its runtime API on a unix socket and on TCP): drain
//! waits for in-flight sessions, the drain timeout proceeds, undrain puts
//! the server back, weights change, and unreachable or refusing HAProxies
//! fail the step.
//!
//! HAProxy must be installed (`apt-get install haproxy`; scripts/setup
//! does it): this test fails, it does not skip, when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use drover_agent::config::{DrainConfig, HaproxyAddr, HaproxyDrain};
use drover_agent::drain::{self, haproxy};
use drover_testkit::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

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
    async fn start(dir: &Path, backend_port: u16) -> Haproxy {
        for _ in 0..5 {
            if let Some(h) = Haproxy::try_start(dir, backend_port).await {
                return h;
            }
        }
        panic!("haproxy could not bind free ports five times in a row");
    }

    async fn try_start(dir: &Path, backend_port: u16) -> Option<Haproxy> {
        let sock = dir.join("admin.sock");
        let _ = std::fs::remove_file(&sock);
        let (admin, front) = free_ports();
        let cfg = format!(
            "global\n    stats socket {} mode 600 level admin\n    stats socket ipv4@127.0.0.1:{admin} level admin\n\
defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 0\n\
frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n\
backend web\n    server h1-web 127.0.0.1:{backend_port}\n",
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

    let msg = drain::undrain(&cfg, &[]).await.expect("undrain");
    assert!(msg.contains("ready on 2 HAProxy"), "{msg}");
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
    drain::undrain(&cfg, &[]).await.expect("undrain");

    // Weights, for traffic shifting.
    haproxy::set_weight(&h.tcp, "web", "h1-web", 50)
        .await
        .expect("weight");
    h.wait_stat("weight 50", |s| s.weight == Some(50)).await;
    let DrainConfig::Haproxy(every) = &cfg else {
        panic!("haproxy drain");
    };
    drain::set_weight(every, 10).await.expect("weight on all");
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
