//! A client for the HAProxy runtime API (the "stats socket"), over a unix
//! socket or TCP: one command per connection, in HAProxy's non-interactive
//! mode, where it answers and closes.

use std::collections::HashMap;
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
    /// Effective weight (`weight`: lower than the user weight during
    /// slowstart).
    pub weight: Option<u32>,
    /// The user weight (`uweight`): the configured weight, or what `set
    /// server ... weight` last set.
    pub uweight: Option<u32>,
    /// The traffic counters, when `show stat` has their columns.
    pub counters: Option<Counters>,
}

/// A server's traffic counters from `show stat` (see the wire's
/// `TrafficCounters`): cumulative since HAProxy started or cleared them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// `req_tot`.
    pub requests: u64,
    /// `hrsp_5xx`.
    pub responses_5xx: u64,
    /// `eresp`.
    pub response_errors: u64,
    /// `econ`.
    pub connection_errors: u64,
    /// `hrsp_1xx` .. `hrsp_5xx` + `hrsp_other`.
    pub responses: u64,
    /// `rtime`, ms.
    pub response_time_ms: u32,
}

/// A backend's row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStat {
    pub name: String,
    /// The balance algorithm (see [`Algorithm`]).
    pub algorithm: Algorithm,
}

/// A backend's balance algorithm, read from the `algo` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    /// roundrobin, leastconn, random: weights change at run time.
    Dynamic(String),
    /// static-rr and first: HAProxy ignores weight changes (static-rr
    /// accepts only 0% and 100%; first fills servers in order whatever
    /// their weight).
    Static(String),
    /// A hash (source, uri, url_param, hdr, rdp-cookie, hash): dynamic
    /// only with `hash-type consistent`, which the runtime API of 2.6
    /// does not show.
    Hash(String),
    /// Anything else HAProxy may print.
    Other(String),
}

impl Algorithm {
    /// Reads the `algo` column. HAProxy 2.6 prints `unknown` for
    /// `balance random` (its `backend_lb_algo_str` has no case for it,
    /// and every other 2.6 algorithm has a name).
    pub fn from_algo(algo: &str) -> Algorithm {
        match algo {
            "roundrobin" | "leastconn" | "random" => Algorithm::Dynamic(algo.to_string()),
            "unknown" => Algorithm::Dynamic("random".to_string()),
            "static-rr" | "first" => Algorithm::Static(algo.to_string()),
            "source" | "uri" | "url_param" | "hdr" | "rdp-cookie" | "hash" => {
                Algorithm::Hash(algo.to_string())
            }
            other => Algorithm::Other(other.to_string()),
        }
    }

    /// The name, as reported.
    pub fn name(&self) -> &str {
        match self {
            Algorithm::Dynamic(n)
            | Algorithm::Static(n)
            | Algorithm::Hash(n)
            | Algorithm::Other(n) => n,
        }
    }
}

/// What one read of an HAProxy gives: every server and backend row of
/// `show stat`, and the configured weights from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub servers: Vec<ServerStat>,
    pub backends: Vec<BackendStat>,
    /// (backend, server) -> configured weight (`srv_iweight`); empty
    /// when `show servers state` could not be read.
    pub configured: HashMap<(String, String), u32>,
}

impl Snapshot {
    pub fn server(&self, backend: &str, server: &str) -> Option<&ServerStat> {
        find(&self.servers, backend, server)
    }

    pub fn backend(&self, name: &str) -> Option<&BackendStat> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn configured_weight(&self, backend: &str, server: &str) -> Option<u32> {
        self.configured
            .get(&(backend.to_string(), server.to_string()))
            .copied()
    }

    /// Whether `backend` takes weight changes at run time: its algorithm
    /// is dynamic, or a hash for which HAProxy shows a user weight other
    /// than 0 and the configured one (it accepts those only with
    /// `hash-type consistent`).
    pub fn weights_dynamic(&self, backend: &str) -> bool {
        match self.backend(backend).map(|b| &b.algorithm) {
            Some(Algorithm::Dynamic(_)) => true,
            Some(Algorithm::Hash(_)) => self.servers.iter().any(|s| {
                s.backend == backend
                    && match (s.uweight, self.configured_weight(&s.backend, &s.server)) {
                        (Some(u), Some(c)) => u != 0 && u != c,
                        _ => false,
                    }
            }),
            _ => false,
        }
    }
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
    quiet_within(addr, cmd, COMMAND_TIMEOUT).await
}

/// [`quiet`], the exchange bounded by `timeout`.
async fn quiet_within(
    addr: &HaproxyAddr,
    cmd: &str,
    timeout: Duration,
) -> Result<(), HaproxyError> {
    let answer = command_within(addr, cmd, timeout).await?;
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

/// A weight for `set server ... weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Absolute, 0..=256.
    Absolute(u32),
    /// `100%`: the configured weight.
    Configured,
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weight::Absolute(w) => write!(f, "{w}"),
            Weight::Configured => f.write_str("100%"),
        }
    }
}

/// `set server BACKEND/SERVER weight N`, for shifting traffic gradually.
pub async fn set_weight(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    weight: Weight,
) -> Result<(), HaproxyError> {
    set_weight_within(addr, backend, server, weight, COMMAND_TIMEOUT).await
}

/// [`set_weight`], the exchange bounded by `timeout`.
pub async fn set_weight_within(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    weight: Weight,
    timeout: Duration,
) -> Result<(), HaproxyError> {
    quiet_within(
        addr,
        &format!("set server {backend}/{server} weight {weight}"),
        timeout,
    )
    .await
}

/// Asks for the backends (type 2) and servers (type 4) of every proxy
/// (-1), and only those: one exchange answers for every instance behind
/// this HAProxy, with its backend's algorithm.
pub const SHOW_SERVERS: &str = "show stat -1 6 -1";
/// The configured weights (`srv_iweight`), which `show stat` lacks.
pub const SHOW_STATE: &str = "show servers state";

/// Every server and backend HAProxy at `addr` has, and the servers'
/// configured weights: `show stat` then `show servers state`, the whole
/// read bounded by `timeout`. Only the first is required: without the
/// second the configured weights are unknown.
pub async fn read(addr: &HaproxyAddr, timeout: Duration) -> Result<Snapshot, HaproxyError> {
    let started = tokio::time::Instant::now();
    let csv = command_within(addr, SHOW_SERVERS, timeout).await?;
    let protocol = |what| HaproxyError::Protocol {
        addr: addr.to_string(),
        what,
    };
    let servers = parse_servers(&csv).map_err(protocol)?;
    let backends = parse_backends(&csv).map_err(protocol)?;
    let left = timeout.saturating_sub(started.elapsed());
    let configured = if left.is_zero() {
        HashMap::new()
    } else {
        match command_within(addr, SHOW_STATE, left).await {
            Ok(text) => parse_servers_state(&text),
            Err(e) => {
                tracing::debug!(haproxy = %addr, "show servers state: {e}");
                HashMap::new()
            }
        }
    };
    Ok(Snapshot {
        servers,
        backends,
        configured,
    })
}

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
    let uweight = col("uweight").ok();
    let counters = CounterColumns::find(&col);
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
            uweight: uweight.and_then(|w| get(w).parse().ok()),
            counters: counters.as_ref().map(|c| c.read(&get)),
        });
    }
    Ok(out)
}

/// Where the counters are in `show stat`'s columns.
struct CounterColumns {
    req_tot: usize,
    hrsp: [usize; 6],
    eresp: usize,
    econ: usize,
    rtime: usize,
}

impl CounterColumns {
    /// None when any is missing (an HAProxy too old, or not `show stat`).
    fn find(col: &dyn Fn(&str) -> Result<usize, String>) -> Option<CounterColumns> {
        let c = |name: &str| col(name).ok();
        Some(CounterColumns {
            req_tot: c("req_tot")?,
            hrsp: [
                c("hrsp_1xx")?,
                c("hrsp_2xx")?,
                c("hrsp_3xx")?,
                c("hrsp_4xx")?,
                c("hrsp_5xx")?,
                c("hrsp_other")?,
            ],
            eresp: c("eresp")?,
            econ: c("econ")?,
            rtime: c("rtime")?,
        })
    }

    /// An empty field (a counter that does not apply) reads 0.
    fn read<'a>(&self, get: &dyn Fn(usize) -> &'a str) -> Counters {
        let n = |i: usize| get(i).parse::<u64>().unwrap_or(0);
        Counters {
            requests: n(self.req_tot),
            responses_5xx: n(self.hrsp[4]),
            response_errors: n(self.eresp),
            connection_errors: n(self.econ),
            responses: self
                .hrsp
                .iter()
                .map(|&i| n(i))
                .fold(0u64, u64::saturating_add),
            response_time_ms: u32::try_from(n(self.rtime)).unwrap_or(u32::MAX),
        }
    }
}

/// Every BACKEND row of `show stat` CSV output, with its `algo`.
pub fn parse_backends(csv: &str) -> Result<Vec<BackendStat>, String> {
    let mut lines = csv.lines();
    let header = lines
        .find(|l| l.starts_with('#'))
        .ok_or_else(|| format!("no CSV header in `show stat` answer: {:?}", first_line(csv)))?;
    let columns: Vec<&str> = header.trim_start_matches('#').trim().split(',').collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv)) = (col("pxname"), col("svname")) else {
        return Err("`show stat` has no `pxname` or `svname` column".to_string());
    };
    let Some(algo) = col("algo") else {
        return Ok(Vec::new());
    };
    Ok(lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let get = |i: usize| fields.get(i).copied().unwrap_or("");
            (get(sv) == "BACKEND" && !get(px).is_empty() && !get(algo).is_empty()).then(|| {
                BackendStat {
                    name: get(px).to_string(),
                    algorithm: Algorithm::from_algo(get(algo)),
                }
            })
        })
        .collect())
}

/// The configured weights (`srv_iweight`) in `show servers state`
/// output: a version line, a `# be_id be_name ...` header, then one
/// space-separated line per server. Columns are found by name; lines
/// that do not fit are skipped.
pub fn parse_servers_state(text: &str) -> HashMap<(String, String), u32> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    let Some(header) = lines.find(|l| l.starts_with('#')) else {
        return out;
    };
    let columns: Vec<&str> = header.trim_start_matches('#').split_whitespace().collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(be), Some(sv), Some(iw)) = (col("be_name"), col("srv_name"), col("srv_iweight"))
    else {
        return out;
    };
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(b), Some(s), Some(w)) = (fields.get(be), fields.get(sv), fields.get(iw)) else {
            continue;
        };
        if let Ok(w) = w.parse() {
            out.insert((b.to_string(), s.to_string()), w);
        }
    }
    out
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
                weight: Some(1),
                uweight: None,
                counters: None,
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

    /// `show stat -1 6 -1` and `show servers state` of HAProxy 2.6.12,
    /// captured after 60 requests through backend web (roundrobin; h1
    /// DOWN by its check, h2 at runtime weight 25 of 100 answering 200,
    /// 404 and 500, `gone` with nothing listening) and 5 through srr
    /// (static-rr); srcc (`balance source` + `hash-type consistent`) was
    /// set to weight 4 of 10, src is the same without hash-type.
    const TRAFFIC: &str = include_str!("testdata/show-stat-traffic-2.6.csv");
    const STATE: &str = include_str!("testdata/servers-state-2.6.txt");

    #[test]
    fn reads_the_counters_by_column_name() {
        let servers = parse_servers(TRAFFIC).expect("parse");
        let h2 = find(&servers, "web", "h2").expect("h2");
        assert_eq!((h2.weight, h2.uweight), (Some(25), Some(25)));
        assert_eq!(
            h2.counters,
            Some(Counters {
                requests: 12,
                responses_5xx: 2,
                response_errors: 0,
                connection_errors: 0,
                responses: 12,
                response_time_ms: 2,
            })
        );
        let gone = find(&servers, "web", "gone").expect("gone");
        assert_eq!(
            gone.counters.map(|c| (c.requests, c.connection_errors)),
            Some((0, 48))
        );
        // Servers only: the BACKEND rows are not servers.
        assert_eq!(servers.len(), 9);
        // A `show stat` without the counters' columns has none.
        let short = parse_servers(STAT).expect("parse");
        assert_eq!(short[0].counters, None);
    }

    #[test]
    fn reads_each_backends_algorithm() {
        let backends = parse_backends(TRAFFIC).expect("parse");
        let algo = |name: &str| {
            backends
                .iter()
                .find(|b| b.name == name)
                .map(|b| b.algorithm.clone())
        };
        assert_eq!(algo("web"), Some(Algorithm::Dynamic("roundrobin".into())));
        assert_eq!(algo("lc"), Some(Algorithm::Dynamic("leastconn".into())));
        // 2.6 names no `random`: it prints `unknown`.
        assert_eq!(algo("rnd"), Some(Algorithm::Dynamic("random".into())));
        assert_eq!(algo("srr"), Some(Algorithm::Static("static-rr".into())));
        assert_eq!(algo("fst"), Some(Algorithm::Static("first".into())));
        assert_eq!(algo("src"), Some(Algorithm::Hash("source".into())));
        assert_eq!(algo("srcc"), Some(Algorithm::Hash("source".into())));
        assert_eq!(backends.len(), 7);
        assert!(parse_backends(STAT).expect("no algo column").is_empty());
    }

    #[test]
    fn reads_configured_weights_from_servers_state() {
        let w = parse_servers_state(STATE);
        let get = |b: &str, s: &str| w.get(&(b.to_string(), s.to_string())).copied();
        assert_eq!(get("web", "h2"), Some(100));
        assert_eq!(get("srcc", "h1"), Some(10));
        assert_eq!(get("web", "nope"), None);
        assert!(parse_servers_state("Unknown command.\n").is_empty());
        let snap = Snapshot {
            servers: parse_servers(TRAFFIC).expect("parse"),
            backends: parse_backends(TRAFFIC).expect("parse"),
            configured: w,
        };
        assert!(snap.weights_dynamic("web") && snap.weights_dynamic("srcc"));
        assert!(!snap.weights_dynamic("src") && !snap.weights_dynamic("srr"));
        assert!(!snap.weights_dynamic("missing"));
    }
}
