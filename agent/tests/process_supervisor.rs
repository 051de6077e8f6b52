//! The process runtime and instance supervisor against real child
//! processes: start, pidfile, crash and restart, adoption by a new
//! supervisor, stop with escalation, and health on top.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_testkit::wait_until_async;

use drover_agent::config::{Config, Signal};
use drover_agent::runtime::process::{self, is_alive, kill_group, parse_pidfile, proc_stat};
use drover_agent::supervisor::{StatusBoard, Supervisor, initial_status};
use drover_proto::v1::{HealthState, InstanceStatus, RuntimeState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

/// Kills whatever the instance's pidfile names when the test ends, pass or
/// fail, so no `sleep 1000` outlives the test.
struct Cleanup {
    dir: std::path::PathBuf,
    pids: Vec<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = process::read_pid(&self.dir) {
            self.pids.push(pid);
        }
        for pid in &self.pids {
            let _ = kill_group(*pid, Signal::KILL);
        }
    }
}

fn config(data_dir: &Path, instance: &str) -> Config {
    let text = format!(
        "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [\"127.0.0.1:7443\"]\n[[instance]]\n{instance}\n",
        data_dir.display()
    );
    Config::parse(&text, Path::new("test.toml")).expect("valid test config")
}

async fn start(cfg: &Config, shutdown: &CancellationToken) -> Supervisor {
    let inst = &cfg.instances[0];
    let board = StatusBoard::new(vec![initial_status(inst, &cfg.host_id)]);
    Supervisor::start(inst, &cfg.host_id, &cfg.data_dir, board, 0, shutdown)
        .await
        .expect("start supervisor")
}

/// Waits until `sup`'s status satisfies `cond`; panics with the last
/// status and the instance log after [`DEADLINE`].
async fn wait_status(
    sup: &Supervisor,
    cfg: &Config,
    what: &str,
    cond: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    wait_until_async(
        DEADLINE,
        what,
        async || sup.status().filter(|s| cond(s)),
        || {
            let log =
                std::fs::read_to_string(cfg.instance_dir(sup.name()).join(process::OUTPUT_FILE))
                    .unwrap_or_default();
            format!("last status {:?}\ninstance log:\n{log}", sup.status())
        },
    )
    .await
}

/// Waits until `cond` holds, for [`DEADLINE`].
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    wait_until_async(DEADLINE, what, async || cond(), String::new).await;
}

fn state(s: &InstanceStatus) -> RuntimeState {
    RuntimeState::try_from(s.state).unwrap_or(RuntimeState::Unspecified)
}

fn health(s: &InstanceStatus) -> HealthState {
    HealthState::try_from(s.health).unwrap_or(HealthState::Unspecified)
}

fn pidfile(cfg: &Config, name: &str) -> Option<(u32, u64)> {
    parse_pidfile(&std::fs::read_to_string(cfg.instance_dir(name).join(process::PID_FILE)).ok()?)
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| is_alive(pid, s.start_time))
}

const SLEEPER: &str =
    "name = \"web\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\nstop_timeout = \"5s\"";

#[tokio::test]
async fn starts_writes_pidfile_and_restarts_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), SLEEPER);
    let mut cleanup = Cleanup {
        dir: cfg.instance_dir("web"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;

    let s = wait_status(&sup, &cfg, "running", |s| state(s) == RuntimeState::Running).await;
    assert!(s.pid > 1);
    assert_eq!(
        (s.id.as_str(), s.runtime.as_str(), s.restarts),
        ("web@h1", "process", 0)
    );
    assert_eq!(health(&s), HealthState::None);
    cleanup.pids.push(s.pid);
    // The pidfile is written off the runtime thread, just after the start.
    wait_until("the pidfile", || pidfile(&cfg, "web").is_some()).await;
    let (pid, start_time) = pidfile(&cfg, "web").expect("pidfile written");
    assert_eq!(pid, s.pid);
    assert_eq!(Some(start_time), proc_stat(pid).map(|p| p.start_time));
    // Own session: the session id (field 6 of /proc/PID/stat) is the pid.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    let sid: u32 = after
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.parse().ok())
        .expect("sid");
    assert_eq!(sid, pid, "instance should lead its own session");

    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let s = wait_status(&sup, &cfg, "crashed", |s| state(s) == RuntimeState::Crashed).await;
    assert_eq!(s.restarts, 1);
    let s = wait_status(&sup, &cfg, "restarted", |s| {
        state(s) == RuntimeState::Running && s.pid != pid
    })
    .await;
    assert_eq!(s.restarts, 1);
    cleanup.pids.push(s.pid);
    wait_until("the pidfile to name the new process", || {
        pidfile(&cfg, "web").map(|p| p.0) == Some(s.pid)
    })
    .await;
    let log =
        std::fs::read_to_string(cfg.instance_dir("web").join(process::OUTPUT_FILE)).expect("log");
    assert!(log.contains("killed by signal 9"), "{log}");

    sup.stop().await.expect("stop");
    assert!(!alive(s.pid));
    wait_status(&sup, &cfg, "stopped", |s| state(s) == RuntimeState::Stopped).await;
    wait_until("the pidfile removed on stop", || {
        pidfile(&cfg, "web").is_none()
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_new_supervisor_adopts_the_running_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), SLEEPER);
    let mut cleanup = Cleanup {
        dir: cfg.instance_dir("web"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();

    let first = start(&cfg, &shutdown).await;
    let s = wait_status(&first, &cfg, "running", |s| {
        state(s) == RuntimeState::Running
    })
    .await;
    let pid = s.pid;
    cleanup.pids.push(pid);
    // Ending supervision (as an agent shutdown does) leaves the instance
    // running: once `detach` returns, every task of the supervisor has
    // ended, so whatever it would do to the instance is done.
    first.detach().await;
    assert!(alive(pid), "instance must survive its supervisor");

    let second = start(&cfg, &shutdown).await;
    let s = wait_status(&second, &cfg, "adopted", |s| {
        state(s) == RuntimeState::Running
    })
    .await;
    assert_eq!(
        s.pid, pid,
        "adopted the existing process instead of starting another"
    );
    assert_eq!(s.restarts, 0);
    assert_eq!(pidfile(&cfg, "web").map(|p| p.0), Some(pid));

    // Stop sends the stop signal to the adopted process, which exits.
    second.stop().await.expect("stop");
    wait_until("adopted process to exit", || !alive(pid)).await;
    let s = wait_status(&second, &cfg, "stopped", |s| {
        state(s) == RuntimeState::Stopped
    })
    .await;
    assert_eq!(s.pid, 0);
    wait_until("the pidfile removed", || pidfile(&cfg, "web").is_none()).await;

    // Start again on request.
    second.start_instance().await.expect("start");
    let s = wait_status(&second, &cfg, "running again", |s| {
        state(s) == RuntimeState::Running
    })
    .await;
    assert_ne!(s.pid, pid);
    cleanup.pids.push(s.pid);
    second.stop().await.expect("stop");
    shutdown.cancel();
}

#[tokio::test]
async fn an_adopted_process_that_dies_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), SLEEPER);
    let mut cleanup = Cleanup {
        dir: cfg.instance_dir("web"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();
    let first = start(&cfg, &shutdown).await;
    let pid = wait_status(&first, &cfg, "running", |s| {
        state(s) == RuntimeState::Running
    })
    .await
    .pid;
    cleanup.pids.push(pid);
    first.detach().await;

    let second = start(&cfg, &shutdown).await;
    wait_status(&second, &cfg, "adopted", |s| s.pid == pid).await;
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let s = wait_status(&second, &cfg, "restarted", |s| {
        state(s) == RuntimeState::Running && s.pid != pid
    })
    .await;
    assert_eq!(s.restarts, 1);
    cleanup.pids.push(s.pid);
    second.stop().await.expect("stop");
    shutdown.cancel();
}

#[tokio::test]
async fn a_stale_pidfile_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), SLEEPER);
    let cleanup = Cleanup {
        dir: cfg.instance_dir("web"),
        pids: vec![],
    };
    std::fs::create_dir_all(&cleanup.dir).expect("mkdir");
    // Our own pid, with a start time that is not ours: a recycled pid.
    let me = std::process::id();
    std::fs::write(cleanup.dir.join(process::PID_FILE), format!("{me} 1\n")).expect("write");
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;
    let s = wait_status(&sup, &cfg, "running", |s| state(s) == RuntimeState::Running).await;
    assert_ne!(s.pid, me);
    sup.stop().await.expect("stop");
    shutdown.cancel();
}

#[tokio::test]
async fn stop_escalates_to_sigkill_for_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ignores SIGTERM, and has a child of its own in the group.
    let cfg = config(
        dir.path(),
        "name = \"stubborn\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; sleep 1000 & echo child $!; while :; do sleep 0.05; done\"]\nstop_timeout = \"300ms\"",
    );
    let mut cleanup = Cleanup {
        dir: cfg.instance_dir("stubborn"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;
    let pid = wait_status(&sup, &cfg, "running", |s| state(s) == RuntimeState::Running)
        .await
        .pid;
    cleanup.pids.push(pid);
    let log_path = cfg.instance_dir("stubborn").join(process::OUTPUT_FILE);
    wait_until("child pid in the log", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("child "))
    })
    .await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    let child: u32 = log
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|p| p.trim().parse().ok())
        .expect("child pid");

    let started = Instant::now();
    sup.stop().await.expect("stop");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited for stop_timeout"
    );
    wait_until("leader to exit", || !alive(pid)).await;
    wait_until("grandchild to exit", || !alive(child)).await;
    wait_status(&sup, &cfg, "stopped", |s| state(s) == RuntimeState::Stopped).await;
    shutdown.cancel();
}

#[tokio::test]
async fn applies_args_env_working_dir_and_appends_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("workdir");
    let cfg = config(
        dir.path(),
        &format!(
            "name = \"echo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo \\\"$GREETING $1\\\"; pwd; echo oops >&2; exec sleep 1000\", \"sh\", \"world\"]\nenv = {{ GREETING = \"hello\" }}\nworking_dir = \"{}\"",
            work.path().display()
        ),
    );
    let _cleanup = Cleanup {
        dir: cfg.instance_dir("echo"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;
    wait_status(&sup, &cfg, "running", |s| state(s) == RuntimeState::Running).await;
    let log_path = cfg.instance_dir("echo").join(process::OUTPUT_FILE);
    let workdir = work.path().display().to_string();
    wait_until("output in the log", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("oops") && l.contains(&workdir))
    })
    .await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("hello world\n"), "{log}");
    sup.stop().await.expect("stop");
    shutdown.cancel();
}

#[tokio::test]
async fn a_program_that_cannot_start_is_reported_crashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "name = \"ghost\"\ncommand = \"/nonexistent/bin/ghost\"",
    );
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;
    let s = wait_status(&sup, &cfg, "crashed", |s| state(s) == RuntimeState::Crashed).await;
    assert_eq!(s.pid, 0);
    let log =
        std::fs::read_to_string(cfg.instance_dir("ghost").join(process::OUTPUT_FILE)).expect("log");
    assert!(log.contains("/nonexistent/bin/ghost"), "{log}");
    sup.stop().await.expect("stop");
    wait_status(&sup, &cfg, "stopped", |s| state(s) == RuntimeState::Stopped).await;
    shutdown.cancel();
}

/// Answers every connection with `200 OK` while `healthy` is set, else 503.
async fn health_endpoint(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let ok = healthy.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let reply: &[u8] = if ok {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = sock.write_all(reply).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn health_follows_rise_and_fall_and_a_stopped_instance_is_unhealthy() {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let port = health_endpoint(flag.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!(
            "{SLEEPER}\n[instance.health]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2"
        ),
    );
    let _cleanup = Cleanup {
        dir: cfg.instance_dir("web"),
        pids: vec![],
    };
    let shutdown = CancellationToken::new();
    let sup = start(&cfg, &shutdown).await;
    let s = wait_status(&sup, &cfg, "healthy", |s| health(s) == HealthState::Healthy).await;
    assert!(s.consecutive_successes >= 2);
    assert_eq!(state(&s), RuntimeState::Running);

    flag.store(false, std::sync::atomic::Ordering::SeqCst);
    let s = wait_status(&sup, &cfg, "unhealthy", |s| {
        health(s) == HealthState::Unhealthy
    })
    .await;
    assert!(s.consecutive_failures >= 2);
    assert!(s.last_check_error.contains("503"), "{}", s.last_check_error);

    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_status(&sup, &cfg, "healthy again", |s| {
        health(s) == HealthState::Healthy
    })
    .await;

    sup.stop().await.expect("stop");
    let s = wait_status(&sup, &cfg, "unhealthy when stopped", |s| {
        health(s) == HealthState::Unhealthy
    })
    .await;
    assert_eq!(state(&s), RuntimeState::Stopped);
    assert_eq!(s.consecutive_successes, 0);
    shutdown.cancel();
}
