//! A client for the HAProxy runtime API (the "stats socket"), over a unix
//! socket or TCP: one command per connection, in HAProxy's non-interactive
//! mode, where it answers and closes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// A server's state as `show stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Current sessions.
    pub scur: u64,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, ...
    pub status: String,
    pub weight: Option<u64>,
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
    let bytes = tokio::time::timeout(COMMAND_TIMEOUT, fut)
        .await
        .map_err(|_| {
            unreachable(format!(
                "no answer within {}",
                humantime::format_duration(COMMAND_TIMEOUT)
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

/// The server's row of `show stat`.
pub async fn server_stat(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
) -> Result<ServerStat, HaproxyError> {
    let csv = command(addr, "show stat").await?;
    parse_stat(&csv, backend, server).map_err(|what| HaproxyError::Protocol {
        addr: addr.to_string(),
        what,
    })
}

/// Finds BACKEND/SERVER in `show stat` CSV output.
pub fn parse_stat(csv: &str, backend: &str, server: &str) -> Result<ServerStat, String> {
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
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(px) == Some(&backend) && fields.get(sv) == Some(&server) {
            let scur = fields.get(scur).and_then(|v| v.parse().ok()).unwrap_or(0);
            return Ok(ServerStat {
                scur,
                status: fields.get(status).unwrap_or(&"").to_string(),
                weight: weight
                    .and_then(|w| fields.get(w))
                    .and_then(|v| v.parse().ok()),
            });
        }
    }
    Err(format!(
        "server {backend}/{server} not found in `show stat`"
    ))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

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
                scur: 2,
                status: "DRAIN".into(),
                weight: Some(1)
            }
        );
        assert_eq!(parse_stat(STAT, "web", "h2-web").expect("row").status, "UP");
        let e = parse_stat(STAT, "web", "h3-web").expect_err("missing");
        assert!(e.contains("web/h3-web not found"), "{e}");
        assert!(parse_stat("Unknown command.\n", "web", "h1").is_err());
    }
}
