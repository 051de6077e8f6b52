//! Runs the operator's commands (hooks, exec drains): an argv from the
//! agent's own config, never shell text from the wire.
//!
//! Each command runs in its own process group, so when it hangs past its
//! timeout, or the step it belongs to is given up (the future dropped),
//! the whole group is killed: a hook that forked a `sleep` leaves nothing
//! behind.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::Signal;
use crate::runtime::process::kill_group;

/// Output kept from a failing command, for the message.
const MAX_OUTPUT: usize = 4096;
/// How long output is still collected after the command exited.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} {status}{}", detail(.output))]
    Failed {
        program: String,
        status: String,
        output: String,
    },
    #[error("{program} timed out after {} and was killed", humantime::format_duration(*.after))]
    TimedOut { program: String, after: Duration },
}

fn detail(output: &str) -> String {
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}

/// Kills the process group when dropped before the command finished.
struct GroupGuard {
    pgid: Option<u32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = kill_group(pgid, Signal::KILL);
        }
    }
}

/// Runs `argv` with `env` added to the agent's environment, bounded by
/// `timeout`. Ok when it exits 0.
pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Spawn {
            program: String::new(),
            reason: "empty command".into(),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    new_process_group(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| HookError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let mut guard = GroupGuard { pgid: child.id() };
    // The pipes are read by their own tasks to the end, so a chatty hook
    // never blocks on a full pipe; only the tail is kept.
    let out = child.stdout.take().map(|r| tokio::spawn(read_tail(r)));
    let err = child.stderr.take().map(|r| tokio::spawn(read_tail(r)));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            return Err(HookError::TimedOut {
                program: program.clone(),
                after: timeout,
            });
        }
        Ok(status) => status,
    };
    // The leader is gone; whatever it left running in its group goes too
    // (which also closes pipes a background process inherited).
    if let Some(pgid) = guard.pgid.take() {
        let _ = kill_group(pgid, Signal::KILL);
    }
    let mut output = String::new();
    for task in [out, err].into_iter().flatten() {
        if let Ok(Ok(text)) = tokio::time::timeout(OUTPUT_GRACE, task).await {
            output.push_str(&text);
        }
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(HookError::Failed {
            program: program.clone(),
            status: s.to_string(),
            output,
        }),
        Err(e) => Err(HookError::Spawn {
            program: program.clone(),
            reason: format!("wait: {e}"),
        }),
    }
}

async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_OUTPUT {
                    kept.drain(..kept.len() - MAX_OUTPUT);
                }
            }
        }
    }
    if kept.len() > MAX_OUTPUT {
        kept.drain(..kept.len() - MAX_OUTPUT);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Puts the child in a new process group (its pid) before exec.
#[allow(unsafe_code)]
fn new_process_group(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setpgid(2), which is async-signal-safe, and reads errno through
    // last_os_error, which allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn passes_env_reports_failures_and_kills_hung_groups() {
        let ok = run(
            &argv(&["/bin/sh", "-c", "test \"$DROVER_INSTANCE\" = web"]),
            &[("DROVER_INSTANCE", "web".into())],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(ok, Ok(()));

        let err = run(
            &argv(&["/bin/sh", "-c", "echo first; echo 'it broke' >&2; exit 3"]),
            &[],
            Duration::from_secs(5),
        )
        .await
        .expect_err("exit 3");
        assert!(
            err.to_string().contains("exit status: 3: it broke"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let err = run(
            &argv(&["/bin/sh", "-c", &script]),
            &[],
            Duration::from_millis(300),
        )
        .await
        .expect_err("hangs");
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        // The backgrounded sleep was in the hook's group and is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive = crate::runtime::process::proc_stat(pid as u32)
                .is_some_and(|s| !matches!(s.state, 'Z' | 'X'));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "grandchild {pid} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let err = run(&argv(&["/nonexistent/hook"]), &[], Duration::from_secs(1))
            .await
            .expect_err("missing");
        assert!(matches!(err, HookError::Spawn { .. }), "{err}");
    }
}
