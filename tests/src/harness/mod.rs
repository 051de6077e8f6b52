//! Building blocks: locating binaries, waiting on conditions, ports, logs and
//! a tiny HTTP client for the coordinator's plain side port.

pub mod agent;
pub mod cli;
pub mod coordinator;
pub mod etcd;
pub mod fleet;
pub mod haproxy;
pub mod load;
pub mod pki;
pub mod process;
pub mod release;
pub mod rollout;
pub mod sites;
pub mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often [`holds_for`] checks.
const POLL: Duration = drover_testkit::POLL;

/// Path of one of the workspace's binaries (`drover`, `drover-agent`, ...).
///
/// They sit in `target/<profile>/`; test executables run from
/// `target/<profile>/deps/`, so this looks beside the current executable and
/// one level up. `DROVER_BIN_DIR` overrides the search.
pub fn bin_path(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("DROVER_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_path_buf());
        }
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("binary `{name}` not found in {dirs:?}: run `cargo build --workspace --bins` first");
}

// Waiting on conditions is shared with the agent's tests: one helper.
pub use drover_testkit::{Poll, pause, wait_until, wait_until_with};

/// Checks `f` every 25 ms for `duration` and panics with `what` and
/// `diagnostics()` the first time it is false: for what must stay true
/// (a paused rollout starts nothing) rather than what must become true.
pub fn holds_for(
    duration: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
    diagnostics: impl FnOnce() -> String,
) {
    let start = Instant::now();
    loop {
        if !f() {
            panic!(
                "stopped holding after {:.1}s: {what}\n{}",
                start.elapsed().as_secs_f64(),
                diagnostics()
            );
        }
        if start.elapsed() >= duration {
            return;
        }
        pause(POLL);
    }
}

/// A port that was free a moment ago on 127.0.0.1. For processes that need a
/// fixed port (sample instances, a coordinator restarted on the same port).
pub fn free_port() -> u16 {
    // Pick below the kernel's ephemeral range (32768 and up): a port taken
    // from port 0 is released before its user binds it, and in that window
    // any outgoing connection on the machine may be given it. Below the
    // range only another explicit bind can collide, and random picks across
    // 12,000 ports make that rare even with many tests in parallel.
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("read the free port's address")
        .port()
}

/// The last `lines` lines of a log file, or a note why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = String::new();
            for line in &all[start..] {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
            if out.is_empty() {
                out.push_str("    (empty)\n");
            }
            out
        }
        Err(e) => format!("    (cannot read {}: {e})\n", path.display()),
    }
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no address for {addr}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: drover-tests\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("HTTP response without a header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP status line: {head}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sums every sample of metric `name` (all label sets) in a Prometheus text
/// exposition. Missing metric: 0.
pub fn metrics_sum(text: &str, name: &str) -> f64 {
    metrics_samples(text, name).iter().map(|(_, v)| v).sum()
}

/// The samples of metric `name`: (label part, value).
pub fn metrics_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(after) = rest.strip_prefix('{') {
            match after.split_once('}') {
                Some((labels, value)) => (labels.to_string(), value),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            (String::new(), rest)
        } else {
            continue;
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            out.push((labels, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metrics() {
        let text = "# HELP drover_refusals_total x\n\
                    # TYPE drover_refusals_total counter\n\
                    drover_refusals_total{reason=\"no cert\"} 2\n\
                    drover_refusals_total{reason=\"revoked\"} 1\n\
                    drover_refusals_total_other 7\n\
                    drover_agents_connected 3\n";
        assert_eq!(metrics_sum(text, "drover_refusals_total"), 3.0);
        assert_eq!(metrics_sum(text, "drover_agents_connected"), 3.0);
        assert_eq!(metrics_sum(text, "drover_agents_lost"), 0.0);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn waits_and_returns_values() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), "n reaches 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got, 3);
    }
}
