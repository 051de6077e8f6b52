//! A client for the HAProxy runtime API (the "stats socket"), over a unix
//! socket or TCP: one command per connection, in HAProxy's non-interactive
//! mode, where it answers and closes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use drover_proto::v1::LoadBalancerState;

use crate::config::HaproxyAddr;

/// Bounds one runtime API exchange (connect, send, read the answer).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read; `show stat` of a big configuration is the biggest.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy runtime API {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("HAProxy {addr}: `{command}` refused: {answer}")]
    Refused {
        addr: String,
        command: String,
        answer: String,
    },
    #[error("HAProxy {addr}: {what}")]
    Protocol { addr: String, what: String },
}

/// A server's row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// Current sessions.
    pub scur: u64,
    /// The `status` column as HAProxy wrote it: `UP`, `UP 1/2`, `DOWN`,
    /// `DOWN 1/3`, `DRAIN`, `MAINT`, `MAINT (via web/h1)`, `no check`, ...
    pub status: String,
    /// `status`, read.
    pub state: LoadBalancerState,
    /// Effective weight.
    pub weight: Option<u32>,
}

impl ServerStat {
    /// Up by its checks and neither drained nor in maintenance (the
    /// weight aside): what an undrain waits for.
    pub fn is_up(&self) -> bool {
        self.state == LoadBalancerState::Up
    }

    /// The status for people: `DOWN 1/3` reads `DOWN, 1/3 checks`.
    pub fn describe(&self) -> String {
        match self.status.split_once(' ') {
            Some((word, progress))
                if progress
                    .split_once('/')
                    .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()) =>
            {
                format!("{word}, {progress} checks")
            }
            _ => self.status.clone(),
        }
    }
}

/// What HAProxy's `status` column says, as a state. HAProxy shows one
/// word for the operational and admin states together: MAINT first, then
/// DOWN, then DRAIN, then NOLB, then UP (H26 `src/stats.c`
/// `stats_fill_sv_stats_computestate`).
pub fn state_of(status: &str) -> LoadBalancerState {
    let status = status.trim();
    let word = status.split([' ', '(']).next().unwrap_or("");
    match word {
        "UP" => LoadBalancerState::Up,
        "no" if status == "no check" => LoadBalancerState::Up,
        "DOWN" => LoadBalancerState::Down,
        "DRAIN" => LoadBalancerState::Drain,
        "MAINT" => LoadBalancerState::Maint,
        "NOLB" => LoadBalancerState::Nolb,
        _ => LoadBalancerState::Unknown,
    }
}

/// Admin states `set server B/S state` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// Sends one command and returns HAProxy's whole answer.
pub async fn command(addr: &HaproxyAddr, cmd: &str) -> Result<String, HaproxyError> {
    command_within(addr, cmd, COMMAND_TIMEOUT).await
}

/// [`command`], with the whole exchange bounded by `timeout`.
pub async fn command_within(
    addr: &HaproxyAddr,
    cmd: &str,
    timeout: Duration,
) -> Result<String, HaproxyError> {
    let text = addr.to_string();
    let unreachable = |reason: String| HaproxyError::Unreachable {
        addr: text.clone(),
        reason,
    };
    let fut = async {
        match addr {
            HaproxyAddr::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                exchange(s, cmd)
                    .await
                    .map_err(|e| unreachable(e.to_string()))
            }
            HaproxyAddr::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let _ = s.set_nodelay(true);
                exchange(s, cmd)
                    .await
                    .map_err(|e| unreachable(e.to_string()))
            }
        }
    };
    let bytes = tokio::time::timeout(timeout, fut).await.map_err(|_| {
        unreachable(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))
    })??;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cmd: &str,
) -> std::io::Result<Vec<u8>> {
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > MAX_ANSWER {
            return Err(std::io::Error::other("answer too large"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Runs a command whose success is an empty answer.
async fn quiet(addr: &HaproxyAddr, cmd: &str) -> Result<(), HaproxyError> {
    let answer = command(addr, cmd).await?;
    let answer = answer.trim();
    if answer.is_empty() {
        Ok(())
    } else {
        Err(HaproxyError::Refused {
            addr: addr.to_string(),
            command: cmd.to_string(),
            answer: answer.to_string(),
        })
    }
}

/// `set server BACKEND/SERVER state STATE`.
pub async fn set_state(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    state: AdminState,
) -> Result<(), HaproxyError> {
    quiet(
        addr,
        &format!("set server {backend}/{server} state {}", state.as_str()),
    )
    .await
}

/// `set server BACKEND/SERVER weight N`, for shifting traffic gradually.
pub async fn set_weight(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    weight: u32,
) -> Result<(), HaproxyError> {
    quiet(
        addr,
        &format!("set server {backend}/{server} weight {weight}"),
    )
    .await
}

/// Asks for the servers (type 4) of every proxy (-1), and only those:
/// one exchange answers for every instance behind this HAProxy.
pub const SHOW_SERVERS: &str = "show stat -1 4 -1";

/// Every server HAProxy at `addr` has, in one `show stat` exchange
/// bounded by `timeout`.
pub async fn servers(
    addr: &HaproxyAddr,
    timeout: Duration,
) -> Result<Vec<ServerStat>, HaproxyError> {
    let csv = command_within(addr, SHOW_SERVERS, timeout).await?;
    parse_servers(&csv).map_err(|what| HaproxyError::Protocol {
        addr: addr.to_string(),
        what,
    })
}

/// The server's row of `show stat` (asking for its backend's servers
/// only).
pub async fn server_stat(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
) -> Result<ServerStat, HaproxyError> {
    let csv = command(addr, &format!("show stat {backend} 4 -1")).await?;
    parse_stat(&csv, backend, server).map_err(|what| HaproxyError::Protocol {
        addr: addr.to_string(),
        what,
    })
}

/// Finds BACKEND/SERVER in `show stat` CSV output.
pub fn parse_stat(csv: &str, backend: &str, server: &str) -> Result<ServerStat, String> {
    find(&parse_servers(csv)?, backend, server)
        .cloned()
        .ok_or_else(|| format!("server {backend}/{server} not found in `show stat`"))
}

/// BACKEND/SERVER among `servers`.
pub fn find<'a>(servers: &'a [ServerStat], backend: &str, server: &str) -> Option<&'a ServerStat> {
    servers
        .iter()
        .find(|s| s.backend == backend && s.server == server)
}

/// Every server row of `show stat` CSV output (not the FRONTEND and
/// BACKEND rows). Columns are found by the header's names: their
/// positions change between HAProxy versions.
pub fn parse_servers(csv: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = csv.lines();
    let header = lines
        .find(|l| l.starts_with('#'))
        .ok_or_else(|| format!("no CSV header in `show stat` answer: {:?}", first_line(csv)))?;
    let columns: Vec<&str> = header.trim_start_matches('#').trim().split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("`show stat` has no `{name}` column"))
    };
    let (px, sv, scur, status) = (col("pxname")?, col("svname")?, col("scur")?, col("status")?);
    let weight = col("weight").ok();
    let mut out = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let (backend, server) = (get(px), get(sv));
        if backend.is_empty() || server.is_empty() || server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let status = get(status).to_string();
        out.push(ServerStat {
            backend: backend.to_string(),
            server: server.to_string(),
            scur: get(scur).parse().unwrap_or(0),
            state: state_of(&status),
            status,
            weight: weight.and_then(|w| get(w).parse().ok()),
        });
    }
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `show stat -1 4 -1` of HAProxy 2.6.12 (Debian bookworm), captured
    /// while checks ran (`inter 1s fall 2 rise 3`): web/up had just lost
    /// its backend (`UP 1/2`), web/down had just got one (`DOWN 1/3`);
    /// drain and maint were set over the runtime API, draindown is drained
    /// with nothing listening, nocheck has `no-check`, w0 has weight 0.
    const CAPTURED: &str = include_str!("testdata/show-stat-2.6.csv");

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act\n\
front,FRONTEND,,,3,5,100,10,0,0,0,0,0,,,,,OPEN,,\n\
web,h1-web,0,0,2,4,,9,0,0,,0,,0,0,0,0,DRAIN,1,1\n\
web,h2-web,0,0,1,4,,9,0,0,,0,,0,0,0,0,UP,1,1\n\
web,BACKEND,0,0,3,4,,9,0,0,,0,,0,0,0,0,UP,2,2\n\n";

    #[test]
    fn finds_the_server_row() {
        let s = parse_stat(STAT, "web", "h1-web").expect("row");
        assert_eq!(
            s,
            ServerStat {
                backend: "web".into(),
                server: "h1-web".into(),
                scur: 2,
                status: "DRAIN".into(),
                state: LoadBalancerState::Drain,
                weight: Some(1)
            }
        );
        assert_eq!(parse_stat(STAT, "web", "h2-web").expect("row").status, "UP");
        let e = parse_stat(STAT, "web", "h3-web").expect_err("missing");
        assert!(e.contains("web/h3-web not found"), "{e}");
        assert!(parse_stat("Unknown command.\n", "web", "h1").is_err());
        assert!(parse_stat("No such proxy.\n", "web", "h1").is_err());
        // FRONTEND and BACKEND rows are not servers.
        assert_eq!(parse_servers(STAT).expect("rows").len(), 2);
    }

    #[test]
    fn reads_every_state_haproxy_2_6_wrote() {
        let servers = parse_servers(CAPTURED).expect("parse the captured answer");
        let seen: Vec<(&str, &str, LoadBalancerState, Option<u32>)> = servers
            .iter()
            .map(|s| (s.backend.as_str(), s.server.as_str(), s.state, s.weight))
            .collect();
        use LoadBalancerState::*;
        assert_eq!(
            seen,
            vec![
                ("web", "up", Up, Some(1)),
                ("web", "down", Down, Some(1)),
                ("web", "drain", Drain, Some(1)),
                ("web", "maint", Maint, Some(1)),
                ("web", "draindown", Down, Some(1)),
                ("web", "nocheck", Up, Some(1)),
                ("web", "w0", Up, Some(0)),
                ("web", "slow", Up, Some(1)),
                ("other", "up", Up, Some(1)),
            ]
        );
        let by = |b: &str, s: &str| find(&servers, b, s).expect("listed");
        assert_eq!(by("web", "up").status, "UP 1/2");
        assert_eq!(by("web", "down").describe(), "DOWN, 1/3 checks");
        assert_eq!(by("web", "nocheck").describe(), "no check");
        assert!(by("web", "up").is_up() && by("web", "w0").is_up());
        assert!(!by("web", "drain").is_up() && !by("web", "maint").is_up());
        assert!(find(&servers, "web", "missing").is_none());
    }

    #[test]
    fn reads_the_states_only_some_setups_show() {
        assert_eq!(state_of("MAINT (via web/h1)"), LoadBalancerState::Maint);
        assert_eq!(state_of("MAINT (resolution)"), LoadBalancerState::Maint);
        assert_eq!(state_of("DRAIN (agent)"), LoadBalancerState::Drain);
        assert_eq!(state_of("DRAIN 1/2"), LoadBalancerState::Drain);
        assert_eq!(state_of("DOWN (agent)"), LoadBalancerState::Down);
        assert_eq!(state_of("NOLB 1/2"), LoadBalancerState::Nolb);
        assert_eq!(state_of(""), LoadBalancerState::Unknown);
        assert_eq!(state_of("no"), LoadBalancerState::Unknown);
    }
}
