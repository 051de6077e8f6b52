//! The `process` runtime: the agent runs the instance's program itself.
//!
//! - The child gets its own session (setsid), so a signal to the agent's
//!   process group or terminal never reaches it, and stop signals go to the
//!   child's whole group.
//! - `<dir>/pid` holds `PID STARTTIME` (STARTTIME: field 22 of
//!   `/proc/PID/stat`). A restarted agent adopts a live process whose start
//!   time still matches instead of starting a second copy; the start time
//!   guards against a recycled PID.
//! - Our own children are watched with `Child::wait` (which also reaps
//!   them); adopted processes, which are not our children, with a pidfd
//!   (readable on exit), or by polling `/proc` once a second where pidfds
//!   are unavailable.
//! - An unexpected exit is a crash: restarted with [`RestartBackoff`].
//! - Agent shutdown only stops watching; the instance keeps running.

use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover_proto::v1::RuntimeState;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Desired, Request, RestartBackoff, RuntimeError, RuntimeHandle, RuntimeStatus, publish,
};
use crate::config::{ProcessConfig, Signal};
use crate::fsutil;

/// Restart delay after a crash: 1 s doubling to 30 s, reset after 60 s up.
pub const RESTART_BACKOFF: RestartBackoff = RestartBackoff::new(
    Duration::from_secs(1),
    Duration::from_secs(30),
    Duration::from_secs(60),
);
/// How often an adopted process is checked when pidfds are unavailable.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for the process to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub const PID_FILE: &str = "pid";
pub const OUTPUT_FILE: &str = "output.log";

/// Starts or adopts the instance, then watches it from a new task.
pub async fn spawn(
    name: &str,
    cfg: ProcessConfig,
    dir: PathBuf,
    desired: Desired,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<RuntimeHandle, RuntimeError> {
    fsutil::create_dir(&dir, 0o755).map_err(|e| match e {
        fsutil::FsError::Io { path, source } => RuntimeError::Io { path, source },
        fsutil::FsError::Exists(path) => RuntimeError::Io {
            path,
            source: std::io::ErrorKind::AlreadyExists.into(),
        },
    })?;
    let (status_tx, status_rx) = watch::channel(RuntimeStatus::UNKNOWN);
    let (req_tx, req_rx) = mpsc::channel(8);
    let (pidfile_tx, pidfile_rx) = watch::channel(PidfileWish::Leave);
    tasks.spawn(write_pidfiles(dir.join(PID_FILE), pidfile_rx));
    let mut sup = ProcessSupervisor {
        name: name.to_string(),
        cfg,
        dir,
        desired,
        status: RuntimeStatus {
            state: RuntimeState::Starting,
            pid: 0,
            restarts: 0,
        },
        current: None,
        backoff: RESTART_BACKOFF,
        retry_at: None,
        status_tx,
        pidfile: pidfile_tx,
    };
    match sup.adopt() {
        Some(proc) => {
            tracing::info!(instance = %sup.name, pid = proc.pid, "adopted running instance");
            sup.set_running(proc);
        }
        None if desired == Desired::Stopped => {
            tracing::info!(instance = %sup.name, "instance was stopped by a command; leaving it stopped");
            sup.set_status(RuntimeState::Stopped, 0);
        }
        None => sup.start_or_schedule(),
    }
    tasks.spawn(sup.run(req_rx, shutdown));
    Ok(RuntimeHandle::new(status_rx, req_tx))
}

/// A process we are watching.
struct Watched {
    pid: u32,
    /// Field 22 of /proc/PID/stat, to tell the process from a recycled pid.
    start_time: u64,
    started: Instant,
    exit: ExitWatch,
}

enum ExitWatch {
    /// Started by this agent: `wait` also reaps it.
    Child(tokio::process::Child),
    /// Adopted: readable once the process has exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// Adopted, no pidfd support: poll `/proc`.
    Poll { start_time: u64 },
}

impl Watched {
    /// Resolves when the process has exited, with a description of how.
    /// Cancel-safe.
    async fn exited(&mut self) -> String {
        const ADOPTED: &str = "exited (adopted process, exit status unknown)";
        loop {
            match &mut self.exit {
                ExitWatch::Child(child) => {
                    return match child.wait().await {
                        Ok(status) => describe_exit(status),
                        Err(e) => format!("wait failed: {e}"),
                    };
                }
                ExitWatch::Pidfd(fd) => match fd.readable().await {
                    Ok(_guard) => return ADOPTED.to_string(),
                    // Should not happen; fall back to polling rather than
                    // report a live process as gone.
                    Err(e) => {
                        tracing::debug!(pid = self.pid, error = %e, "pidfd wait failed; polling")
                    }
                },
                ExitWatch::Poll { start_time } => {
                    let start_time = *start_time;
                    while is_alive(self.pid, start_time) {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                    return ADOPTED.to_string();
                }
            }
            self.exit = ExitWatch::Poll {
                start_time: self.start_time,
            };
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig}")
    } else {
        status.to_string()
    }
}

struct ProcessSupervisor {
    name: String,
    cfg: ProcessConfig,
    dir: PathBuf,
    desired: Desired,
    status: RuntimeStatus,
    current: Option<Watched>,
    backoff: RestartBackoff,
    /// When to try starting again after a crash or a failed start.
    retry_at: Option<Instant>,
    status_tx: watch::Sender<RuntimeStatus>,
    /// What the pidfile should say; [`write_pidfiles`] makes it so.
    pidfile: watch::Sender<PidfileWish>,
}

/// What the pidfile should be. Only the latest wish matters, so a watch
/// channel carries it: bounded, ordered, and a burst of restarts
/// coalesces into one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidfileWish {
    /// Nothing asked yet: leave the file as the last agent left it.
    Leave,
    /// Name this process.
    Write { pid: u32, start_time: u64 },
    /// This process is gone: remove the file if it still names it.
    Remove { pid: u32 },
}

/// Applies pidfile wishes in order, off the runtime thread: the write is
/// fsynced, and the agent's runtime has one thread that every instance
/// and the session share. Ends (after the last wish) when the supervisor
/// is dropped.
async fn write_pidfiles(path: PathBuf, mut wishes: watch::Receiver<PidfileWish>) {
    while wishes.changed().await.is_ok() {
        let wish = *wishes.borrow_and_update();
        let path = path.clone();
        let done = tokio::task::spawn_blocking(move || apply_pidfile(&path, wish)).await;
        if let Err(e) = done {
            tracing::error!("pidfile writer task failed: {e}");
        }
    }
}

fn apply_pidfile(path: &Path, wish: PidfileWish) {
    match wish {
        PidfileWish::Leave => {}
        PidfileWish::Write { pid, start_time } => {
            if let Err(e) = fsutil::write_atomic(
                path,
                format!("{pid} {start_time}\n").as_bytes(),
                fsutil::PUBLIC,
            ) {
                // The instance runs; only adoption after an agent restart
                // is affected. Say so, but do not kill a working instance.
                tracing::error!(pid, "write pidfile: {e}");
            }
        }
        PidfileWish::Remove { pid } => {
            let ours = fs::read_to_string(path)
                .ok()
                .and_then(|t| parse_pidfile(&t))
                .is_some_and(|(p, _)| p == pid);
            if ours {
                let _ = fs::remove_file(path);
            }
        }
    }
}

impl ProcessSupervisor {
    fn pid_path(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    fn set_status(&mut self, state: RuntimeState, pid: u32) {
        self.status.state = state;
        self.status.pid = pid;
        publish(&self.status_tx, self.status);
    }

    fn set_running(&mut self, proc: Watched) {
        let pid = proc.pid;
        self.current = Some(proc);
        self.retry_at = None;
        self.set_status(RuntimeState::Running, pid);
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        loop {
            let retry_at = self.retry_at.filter(|_| self.desired == Desired::Running);
            let current = &mut self.current;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                req = requests.recv() => match req {
                    Some(req) => self.handle(req).await,
                    // Every handle is gone: the instance's supervisor was
                    // dropped. Leave the process running.
                    None => break,
                },
                how = async {
                    match current.as_mut() {
                        Some(proc) => proc.exited().await,
                        None => std::future::pending().await,
                    }
                } => self.on_exit(&how),
                _ = async {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => self.start_or_schedule(),
            }
        }
        tracing::debug!(instance = %self.name, "no longer watching instance");
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Start(reply) => {
                self.desired = Desired::Running;
                let result = if self.current.is_some() {
                    Ok(())
                } else {
                    self.backoff.reset();
                    self.start()
                };
                if result.is_err() {
                    self.schedule_retry();
                }
                let _ = reply.send(result);
            }
            Request::Stop(reply) => {
                let result = self.stop().await;
                let _ = reply.send(result);
            }
        }
    }

    /// Appends a line from the agent to the instance's output log, so the
    /// log tells the whole story of restarts.
    fn note(&self, msg: &str) {
        let path = self.dir.join(OUTPUT_FILE);
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&path)
        {
            let _ = writeln!(f, "[drover-agent] {msg}");
        }
    }

    fn on_exit(&mut self, how: &str) {
        let Some(proc) = self.current.take() else {
            return;
        };
        self.remove_pidfile(proc.pid);
        if self.desired == Desired::Stopped {
            self.set_status(RuntimeState::Stopped, 0);
            return;
        }
        self.status.restarts = self.status.restarts.saturating_add(1);
        let delay = self.backoff.after_exit(proc.started.elapsed());
        self.retry_at = Some(Instant::now() + delay);
        let delay_text = humantime::format_duration(delay);
        tracing::warn!(instance = %self.name, pid = proc.pid, "instance {how}; restarting in {delay_text}");
        self.note(&format!(
            "pid {} {how}; restarting in {delay_text}",
            proc.pid
        ));
        self.set_status(RuntimeState::Crashed, 0);
    }

    /// Starts now; on failure marks the instance crashed and schedules a
    /// retry.
    fn start_or_schedule(&mut self) {
        if self.desired != Desired::Running || self.current.is_some() {
            self.retry_at = None;
            return;
        }
        // Nothing to run before a first deploy: say so, rather than crash
        // in a loop on a command that cannot exist yet. The start step of
        // the first rollout starts it.
        if self.not_deployed() {
            self.retry_at = None;
            if self.status.state != RuntimeState::NotDeployed {
                tracing::info!(instance = %self.name, "nothing deployed yet; waiting for a first rollout");
                self.note("nothing deployed yet; waiting for a first rollout to deploy a release");
            }
            self.set_status(RuntimeState::NotDeployed, 0);
            return;
        }
        if let Err(e) = self.start() {
            tracing::error!(instance = %self.name, "{e}");
            self.note(&e.to_string());
            self.schedule_retry();
        }
    }

    /// Whether the command runs from `<deploy_dir>/current` and that link
    /// does not exist yet.
    fn not_deployed(&self) -> bool {
        self.cfg.uses_current()
            && (self.cfg.current.as_ref()).is_some_and(|c| fs::symlink_metadata(c).is_err())
    }

    fn schedule_retry(&mut self) {
        let delay = self.backoff.after_exit(Duration::ZERO);
        self.retry_at = Some(Instant::now() + delay);
        self.set_status(RuntimeState::Crashed, 0);
    }

    fn start(&mut self) -> Result<(), RuntimeError> {
        let log_path = self.dir.join(OUTPUT_FILE);
        let io = |source| RuntimeError::Io {
            path: log_path.clone(),
            source,
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&log_path)
            .map_err(io)?;
        let log_err = log.try_clone().map_err(io)?;

        let cfg = match &self.cfg.current {
            Some(current) if self.cfg.uses_current() => self.cfg.expanded(&resolve_link(current)),
            _ => self.cfg.clone(),
        };
        let command_text = cfg.command.display().to_string();
        let mut cmd = tokio::process::Command::new(&cfg.command);
        cmd.args(&cfg.args)
            .envs(&cfg.env)
            // Not the instance's business, and it must not talk to systemd
            // on the agent's behalf.
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(false);
        if let Some(dir) = &cfg.working_dir {
            cmd.current_dir(dir);
        }
        new_session_on_exec(&mut cmd);
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            command: command_text.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            // Already exited and reaped: treat like an immediate crash.
            return Err(RuntimeError::Spawn {
                command: command_text,
                source: std::io::Error::other("exited immediately"),
            });
        };
        let start_time = proc_stat(pid).map_or(0, |s| s.start_time);
        self.pidfile
            .send_replace(PidfileWish::Write { pid, start_time });
        tracing::info!(instance = %self.name, pid, command = %command_text, "started instance");
        self.note(&format!("started pid {pid}: {command_text}"));
        self.set_running(Watched {
            pid,
            start_time,
            started: Instant::now(),
            exit: ExitWatch::Child(child),
        });
        Ok(())
    }

    /// Takes over a process a previous agent started, if the pidfile names
    /// one that is still alive with the same start time.
    fn adopt(&mut self) -> Option<Watched> {
        let path = self.pid_path();
        let text = fs::read_to_string(&path).ok()?;
        let stale = || {
            let _ = fs::remove_file(&path);
            None
        };
        let Some((pid, start_time)) = parse_pidfile(&text) else {
            tracing::warn!(instance = %self.name, pidfile = %path.display(), "ignoring unreadable pidfile");
            return stale();
        };
        if !is_alive(pid, start_time) {
            tracing::info!(instance = %self.name, pid, "pidfile names a process that is gone; starting afresh");
            return stale();
        }
        let exit = match pidfd_watch(pid) {
            Ok(fd) => ExitWatch::Pidfd(fd),
            Err(e) => {
                tracing::debug!(pid, error = %e, "no pidfd; polling /proc instead");
                ExitWatch::Poll { start_time }
            }
        };
        // The pid could have been recycled between the check and the open.
        if !is_alive(pid, start_time) {
            return stale();
        }
        Some(Watched {
            pid,
            start_time,
            started: Instant::now(),
            exit,
        })
    }

    fn remove_pidfile(&self, pid: u32) {
        self.pidfile.send_replace(PidfileWish::Remove { pid });
    }

    /// Sends the stop signal to the process group, waits up to
    /// stop_timeout, then SIGKILLs the group.
    async fn stop(&mut self) -> Result<(), RuntimeError> {
        self.desired = Desired::Stopped;
        self.retry_at = None;
        let Some(mut proc) = self.current.take() else {
            self.set_status(RuntimeState::Stopped, 0);
            return Ok(());
        };
        let pid = proc.pid;
        self.set_status(RuntimeState::Stopping, pid);
        let signal = self.cfg.stop_signal;
        tracing::info!(instance = %self.name, pid, %signal, "stopping instance");
        if let Err(e) = kill_group(pid, signal) {
            tracing::warn!(instance = %self.name, "{e}");
        }
        let how = match tokio::time::timeout(self.cfg.stop_timeout, proc.exited()).await {
            Ok(how) => how,
            Err(_) => {
                tracing::warn!(
                    instance = %self.name,
                    pid,
                    "still running {} after {signal}; sending SIGKILL",
                    humantime::format_duration(self.cfg.stop_timeout)
                );
                let _ = kill_group(pid, Signal::KILL);
                match tokio::time::timeout(KILL_WAIT, proc.exited()).await {
                    Ok(how) => how,
                    Err(_) => {
                        self.current = Some(proc);
                        self.set_status(RuntimeState::Stopping, pid);
                        return Err(RuntimeError::Unkillable { pid });
                    }
                }
            }
        };
        // Whatever the leader left behind in its group goes too.
        let _ = kill_group(pid, Signal::KILL);
        self.remove_pidfile(pid);
        self.note(&format!("stopped pid {pid}: {how}"));
        tracing::info!(instance = %self.name, pid, "instance stopped: {how}");
        self.set_status(RuntimeState::Stopped, 0);
        Ok(())
    }
}

/// Where the `current` symlink points now, so a started process is pinned
/// to the release that was current when it started even if `current` is
/// switched under it; the link itself when it cannot be read.
pub fn resolve_link(link: &Path) -> PathBuf {
    match fs::read_link(link) {
        Ok(target) if target.is_absolute() => target,
        Ok(target) => link.parent().map_or(target.clone(), |p| p.join(&target)),
        Err(_) => link.to_path_buf(),
    }
}

/// Parses `PID STARTTIME`.
pub fn parse_pidfile(text: &str) -> Option<(u32, u64)> {
    let mut it = text.split_whitespace();
    let pid: u32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    (pid > 1).then_some((pid, start))
}

/// The parts of `/proc/PID/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3; field 22 is 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Alive, not a zombie, and still the process that started at `start_time`.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    proc_stat(pid)
        .is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x') && s.start_time == start_time)
}

/// Makes the child a session (and process group) leader before exec.
#[allow(unsafe_code)]
fn new_session_on_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe, and reads errno through
    // last_os_error, which allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group `pgid`. A group that no longer
/// exists is not an error.
pub fn kill_group(pgid: u32, signal: Signal) -> Result<(), RuntimeError> {
    let Ok(pg) = libc::pid_t::try_from(pgid) else {
        return Ok(());
    };
    if pg <= 1 {
        return Ok(());
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects; the
    // negative pid addresses the group, and pg > 1 rules out -1 (every
    // process) and 0 (our own group).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(-pg, signal.number) };
    if rc == -1 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(RuntimeError::Signal { pgid, source: err });
        }
    }
    Ok(())
}

/// Opens a pidfd (Linux 5.3+) and registers it with the reactor: it turns
/// readable when the process exits, which lets us wait for a process that
/// is not our child without polling.
fn pidfd_watch(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new file
    // descriptor or -1; no memory is passed.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing
    // else owns it.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged until it
    // is dropped, which is when the AsyncFd is dropped.
    #[allow(unsafe_code)]
    let watched = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    watched.map_err(|e| e.into_parts().1)
}

/// Pid from a pidfile, for callers that only need to find the process.
pub fn read_pid(dir: &Path) -> Option<u32> {
    parse_pidfile(&fs::read_to_string(dir.join(PID_FILE)).ok()?).map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_awkward_names() {
        let mut fields = vec!["S"; 1];
        fields.extend(std::iter::repeat_n("0", 18));
        fields.push("123456");
        fields.extend(["1", "2"]);
        let text = format!("42 (we ird) (name)) {}", fields.join(" "));
        assert_eq!(
            parse_proc_stat(&text),
            Some(ProcStat {
                state: 'S',
                start_time: 123456
            })
        );
        assert_eq!(parse_proc_stat("42 (x) S 1 2"), None);
        let me = proc_stat(std::process::id()).expect("own stat");
        assert!(is_alive(std::process::id(), me.start_time));
        assert!(!is_alive(std::process::id(), me.start_time + 1));
    }

    #[test]
    fn parses_pidfiles() {
        assert_eq!(parse_pidfile("123 456\n"), Some((123, 456)));
        assert_eq!(parse_pidfile("123"), None);
        assert_eq!(parse_pidfile("1 5"), None);
        assert_eq!(parse_pidfile("x y"), None);
    }
}
