//! Child processes: long-running daemons killed on drop, and one-shot
//! commands run with a timeout.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{pause, tail};

/// Sends `sig` to `pid` (a process group when negative). Errors (no such
/// process) are ignored: callers use it to make sure something is gone.
pub fn signal(pid: i32, sig: libc::c_int) {
    if pid == 0 || pid == -1 {
        // 0 and -1 would signal our own group or every process we may.
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Makes the child its own process group leader (so a terminal's Ctrl-C goes
/// to the harness only, and the whole group can be killed at once) and asks
/// the kernel to SIGKILL it if the spawning thread dies, so a test killed by
/// its runner leaves no daemon behind.
fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A long-running child (coordinator, agent) whose stdout and stderr go to a
/// log file. Killed with SIGKILL (its whole process group) on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    log: PathBuf,
    exited: Mutex<Option<ExitStatus>>,
}

impl Proc {
    /// Spawns `cmd`, appending its output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {} for {name}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("clone log handle for {name}: {e}"));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        isolate(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            log: log.to_path_buf(),
            exited: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut exited = lock(&self.exited);
        if exited.is_none() {
            *exited = lock(&self.child).try_wait().ok().flatten();
        }
        *exited
    }

    pub fn is_running(&self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends `sig` to the process (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, sig: libc::c_int) {
        if self.try_exit().is_none() {
            signal(self.pid as i32, sig);
        }
    }

    /// SIGKILL to the process group, then reap.
    pub fn kill(&self) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            let pid = self.pid as i32;
            signal(-pid, libc::SIGKILL);
            signal(pid, libc::SIGKILL);
            let status = lock(&self.child).wait().ok();
            *lock(&self.exited) = status;
        }
        self.try_exit()
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    /// Returns the exit status and whether it exited on its own in time.
    pub fn terminate(&self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(status) = self.try_exit() {
            return (Some(status), true);
        }
        signal(self.pid as i32, libc::SIGTERM);
        match self.wait_exit(grace) {
            Some(status) => (Some(status), true),
            None => (self.kill(), false),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            pause(Duration::from_millis(20));
        }
    }

    /// A description of the process for failure messages: name, pid, exit
    /// status if any and the tail of its log.
    pub fn describe(&self, lines: usize) -> String {
        let state = match self.try_exit() {
            Some(status) => format!("exited: {}", describe_status(status)),
            None => "running".to_string(),
        };
        format!(
            "--- {} (pid {}, {state}) log {}:\n{}",
            self.name,
            self.pid,
            self.log.display(),
            tail(&self.log, lines)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Locks, ignoring poisoning: the data (a child handle, a status) stays
/// valid when a panicking test held the lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// What a one-shot command did.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub cmdline: String,
    /// Exit code; `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics, showing everything, unless the command exited 0.
    #[track_caller]
    pub fn expect_success(self) -> CmdOutput {
        if !self.success() {
            panic!("command failed, expected success:\n{self}");
        }
        self
    }

    /// Panics, showing everything, if the command exited 0 (or timed out).
    #[track_caller]
    pub fn expect_failure(self) -> CmdOutput {
        if self.success() || self.timed_out {
            panic!("command was expected to fail:\n{self}");
        }
        self
    }

    /// stdout and stderr together, for substring checks.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "$ {}", self.cmdline)?;
        match (self.timed_out, self.code) {
            (true, _) => writeln!(f, "(timed out, killed)")?,
            (false, Some(code)) => writeln!(f, "(exit code {code})")?,
            (false, None) => writeln!(f, "(killed by a signal)")?,
        }
        writeln!(f, "--- stdout:\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr:\n{}", self.stderr.trim_end())
    }
}

/// Runs `cmd` to completion, capturing output; kills it after `timeout`.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let cmdline = format_cmd(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    isolate(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{cmdline}`: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (output, timed_out) = match rx.recv_timeout(timeout) {
        Ok(out) => (out, false),
        Err(_) => {
            signal(-pid, libc::SIGKILL);
            signal(pid, libc::SIGKILL);
            (
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| Err(std::io::Error::other("no output after kill"))),
                true,
            )
        }
    };
    let output = output.unwrap_or_else(|e| panic!("wait for `{cmdline}`: {e}"));
    CmdOutput {
        cmdline,
        code: if timed_out {
            None
        } else {
            output.status.code()
        },
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        timed_out,
    }
}

/// `cmd` as a shell-like line (program and arguments only).
pub fn format_cmd(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            line.push_str(&format!("'{arg}'"));
        } else {
            line.push_str(&arg);
        }
    }
    line
}
