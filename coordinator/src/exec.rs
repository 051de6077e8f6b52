//! Runs a program the coordinator's own config allows (a pre-traffic hook,
//! a DR plan's command): no shell, no stdin, killed at its timeout, its
//! output bounded.

use std::process::Stdio;
use std::time::{Duration, Instant};

/// How much of a program's stdout is kept.
const STDOUT_MAX: usize = 64 * 1024;
/// How much of its output goes into the one-line account of the run.
const OUTPUT_TAIL: usize = 400;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Exit status 0.
    pub ok: bool,
    /// Its stdout (the first 64 KiB), for programs that answer with data.
    pub stdout: String,
    /// One line for events and reports: `exit 3 after 1.2s: <the tail of
    /// its stderr, else stdout>`, or why it did not run or was killed.
    pub detail: String,
    pub took: Duration,
}

fn failed(detail: String, took: Duration) -> Ran {
    Ran {
        ok: false,
        stdout: String::new(),
        detail,
        took,
    }
}

/// Runs `cmd` (its program named `program` in messages) to its end or its
/// timeout. Never panics.
pub async fn run(mut cmd: tokio::process::Command, program: &str, timeout: Duration) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {program}: {e}"), started.elapsed()),
    };
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return failed(format!("waiting for {program}: {e}"), started.elapsed()),
        Err(_) => {
            return failed(
                format!(
                    "timed out after {} (killed)",
                    humantime::format_duration(timeout)
                ),
                started.elapsed(),
            );
        }
    };
    let took = started.elapsed();
    let took_text = humantime::format_duration(Duration::from_millis(
        u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
    ));
    let said = tail(&out.stderr)
        .or_else(|| tail(&out.stdout))
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    let mut stdout = out.stdout;
    stdout.truncate(STDOUT_MAX);
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let (ok, detail) = match out.status.code() {
        Some(0) => (true, format!("exit 0 after {took_text}{said}")),
        Some(code) => (false, format!("exit {code} after {took_text}{said}")),
        None => (false, format!("killed by a signal after {took_text}{said}")),
    };
    Ran {
        ok,
        stdout,
        detail,
        took,
    }
}

/// The last [`OUTPUT_TAIL`] bytes of `bytes`, trimmed, on one line.
fn tail(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let start = text.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Some(
        text[start..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}
