//! A real HAProxy (Debian's `haproxy`) in front of a fleet's instances, on
//! loopback, with its runtime API on a unix socket: what drover's drain
//! steps talk to and what the tests measure serving capacity with.
//!
//! HAProxy must be installed (`scripts/setup` does it); a test that needs it
//! fails, it does not skip, when it is missing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Proc;
use super::{free_port, pause, tail, wait_until_with};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bounds one runtime API exchange.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// One `server` line of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub port: u16,
    /// Where HAProxy reaches it: 127.0.0.1 unless it runs in a network
    /// namespace.
    pub addr: String,
    /// The configured weight; `None`: HAProxy's default (1). A server at
    /// weight 0 is registered and checked but takes no traffic (a DR site
    /// on standby).
    pub weight: Option<u32>,
}

impl Server {
    pub fn new(name: &str, port: u16) -> Server {
        Server {
            name: name.to_string(),
            port,
            addr: "127.0.0.1".to_string(),
            weight: None,
        }
    }

    /// The same server reached at `addr`.
    pub fn at(mut self, addr: &str) -> Server {
        self.addr = addr.to_string();
        self
    }

    /// The same server with configured weight `weight`.
    pub fn weight(mut self, weight: u32) -> Server {
        self.weight = Some(weight);
        self
    }
}

/// How HAProxy health-checks the backend's servers (`default-server check
/// inter I fall F rise R`). The default, `inter 300ms fall 2 rise 1`, is
/// what most tests use: HAProxy follows the instances closely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// Between two checks of a server, in HAProxy's syntax (`300ms`, `1s`).
    pub inter: String,
    /// Failed checks in a row that take a server DOWN.
    pub fall: u32,
    /// Passed checks in a row that bring it back UP.
    pub rise: u32,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            inter: "300ms".to_string(),
            fall: 2,
            rise: 1,
        }
    }
}

/// A running HAProxy: one HTTP frontend on a free loopback port, one
/// backend of health-checked servers, `retries 0` and no redispatch, so a
/// request sent to a dead server is a failed request the load generator
/// sees. SIGKILLed on drop.
#[derive(Debug)]
pub struct Haproxy {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub backend: String,
    socket: PathBuf,
    frontend_port: u16,
    proc: Proc,
}

/// Where the `haproxy` binary is: PATH first, then Debian's /usr/sbin.
pub fn haproxy_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join("haproxy");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "haproxy is not installed (looked in PATH, /usr/sbin, /usr/local/sbin): \
         run scripts/setup or `apt-get install haproxy`"
    );
}

impl Haproxy {
    /// Writes the config in `dir` and starts HAProxy with backend `backend`
    /// holding `servers`; waits until its runtime API answers and the
    /// frontend accepts connections. A frontend port taken in the meantime
    /// means another try on another port.
    pub fn start(dir: &Path, backend: &str, servers: &[Server]) -> Haproxy {
        Haproxy::start_with(dir, backend, servers, &Checks::default())
    }

    /// [`Haproxy::start`] with the health checks `checks`.
    pub fn start_with(dir: &Path, backend: &str, servers: &[Server], checks: &Checks) -> Haproxy {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut last_log = String::new();
        for attempt in 0..5 {
            match Haproxy::try_start(dir, backend, servers, checks, attempt) {
                Ok(h) => return h,
                Err(log) => last_log = log,
            }
        }
        panic!("haproxy could not bind a free port five times in a row; last log:\n{last_log}");
    }

    fn try_start(
        dir: &Path,
        backend: &str,
        servers: &[Server],
        checks: &Checks,
        attempt: u32,
    ) -> Result<Haproxy, String> {
        let socket = dir.join("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        let frontend_port = free_port();
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(
            &config_path,
            config(&socket, frontend_port, backend, servers, checks),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let log = dir.join(format!("haproxy-{attempt}.log"));
        let mut cmd = Command::new(haproxy_bin());
        cmd.arg("-db").arg("-f").arg(&config_path);
        let proc = Proc::spawn("haproxy", cmd, &log);
        let h = Haproxy {
            dir: dir.to_path_buf(),
            config_path,
            log,
            backend: backend.to_string(),
            socket,
            frontend_port,
            proc,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = h.proc.try_exit() {
                let text = std::fs::read_to_string(&h.log).unwrap_or_default();
                if text.contains("cannot bind") {
                    return Err(text);
                }
                panic!(
                    "haproxy exited ({status}) before it was ready:\n{}\n--- config:\n{}",
                    h.proc.describe(40),
                    std::fs::read_to_string(&h.config_path).unwrap_or_default()
                );
            }
            let api = h.command("show info").is_ok_and(|a| a.contains("Name:"));
            let front = std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], frontend_port).into(),
                Duration::from_secs(1),
            )
            .is_ok();
            if api && front {
                return Ok(h);
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "haproxy not ready after {:.0}s (runtime API answers: {api}, frontend accepts: {front}):\n{}",
                    READY_TIMEOUT.as_secs_f64(),
                    h.describe()
                );
            }
            pause(Duration::from_millis(25));
        }
    }

    /// The runtime API's unix socket (`stats socket ... level admin`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `127.0.0.1:PORT` of the frontend.
    pub fn frontend_addr(&self) -> String {
        format!("127.0.0.1:{}", self.frontend_port)
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Sends one runtime API command and returns the whole answer.
    pub fn command(&self, cmd: &str) -> Result<String, String> {
        command(&self.socket, cmd)
    }

    /// `show stat` of this HAProxy's backend servers.
    pub fn servers(&self) -> Result<Vec<ServerStat>, String> {
        let text = self.command("show stat")?;
        let all = parse_show_stat(&text)?;
        Ok(all
            .into_iter()
            .filter(|s| s.backend == self.backend && s.is_server())
            .collect())
    }

    /// Servers of the backend serving traffic right now.
    pub fn capacity(&self) -> Result<u32, String> {
        self.servers().map(|s| capacity(&s))
    }

    /// Waits until `n` servers of the backend serve traffic.
    #[track_caller]
    pub fn wait_serving(&self, n: u32, timeout: Duration) -> Vec<ServerStat> {
        wait_until_with(
            timeout,
            &format!("HAProxy has {n} servers UP and in service"),
            || {
                let servers = self.servers().ok()?;
                (capacity(&servers) >= n).then_some(servers)
            },
            || self.describe(),
        )
    }

    /// Log tail and the servers' states, for failure messages.
    pub fn describe(&self) -> String {
        let table = match self.servers() {
            Ok(servers) => format_servers(&servers),
            Err(e) => format!("    (show stat failed: {e})\n"),
        };
        format!(
            "{}--- haproxy servers of backend {} (frontend {}):\n{table}",
            self.proc.describe(40),
            self.backend,
            self.frontend_addr()
        )
    }

    /// The full log (one line per request, `option httplog`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log with a 5xx status or a termination state other
    /// than `--` (an aborted or refused request), at most `max`.
    pub fn failed_requests_logged(&self, max: usize) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("GET / HTTP") && request_failed(l))
            .take(max)
            .map(str::to_string)
            .collect()
    }

    /// Last `lines` of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Whether an `option httplog` line reports a failed request: a 5xx (or
/// `-1`) status, or a termination state that is not `--`.
fn request_failed(line: &str) -> bool {
    // ... fe be/srv Tq/Tw/Tc/Tr/Ta STATUS BYTES - - TERM ...
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some(timers) = fields.iter().position(|f| f.matches('/').count() == 4) else {
        return false;
    };
    let status = fields.get(timers + 1).copied().unwrap_or("");
    let term = fields.get(timers + 5).copied().unwrap_or("--");
    status.starts_with('5') || status == "-1" || !term.starts_with("--")
}

fn config(
    socket: &Path,
    frontend_port: u16,
    backend: &str,
    servers: &[Server],
    checks: &Checks,
) -> String {
    let mut t = format!(
        "global\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   log stdout format raw local0 info\n\
         \x20   nbthread 1\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   log global\n\
         \x20   option httplog\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 10s\n\
         \x20   timeout server 10s\n\
         \x20   timeout check 1s\n\
         \x20   retries 0\n\
         \n\
         frontend fe\n\
         \x20   bind 127.0.0.1:{frontend_port}\n\
         \x20   default_backend {backend}\n\
         \n\
         backend {backend}\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET /healthz\n\
         \x20   default-server check inter {inter} fall {fall} rise {rise}\n",
        socket = socket.display(),
        inter = checks.inter,
        fall = checks.fall,
        rise = checks.rise,
    );
    for s in servers {
        t.push_str(&format!("    server {} {}:{}", s.name, s.addr, s.port));
        if let Some(w) = s.weight {
            t.push_str(&format!(" weight {w}"));
        }
        t.push('\n');
    }
    t
}

/// One runtime API exchange over a unix socket: HAProxy answers one command
/// per connection and closes.
pub fn command(socket: &Path, cmd: &str) -> Result<String, String> {
    let what = |e: std::io::Error| format!("HAProxy runtime API {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(what)?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(what)?;
    s.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(what)?;
    s.write_all(format!("{cmd}\n").as_bytes()).map_err(what)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(what)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A server's (or frontend's, backend's) row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// The `status` column as HAProxy wrote it (`UP`, `UP 1/2`, `DOWN`,
    /// `DRAIN`, `MAINT`, `no check`, ...).
    pub status: String,
    pub state: ServerState,
    /// Current sessions.
    pub scur: u64,
    pub weight: Option<u64>,
    /// Last health check result (`L7OK`, `L4CON`, ...).
    pub check_status: String,
    /// What HAProxy says about it (`Layer7 wrong status`, ...).
    pub check_desc: String,
    /// Requests the server answered (`req_tot`), cumulative.
    pub req_tot: u64,
    /// 5xx responses the server sent (`hrsp_5xx`), cumulative.
    pub hrsp_5xx: u64,
}

impl ServerStat {
    fn is_server(&self) -> bool {
        self.server != "FRONTEND" && self.server != "BACKEND"
    }

    /// Receiving new requests: up by its checks, not drained nor in
    /// maintenance, weight above 0.
    pub fn serving(&self) -> bool {
        matches!(
            self.state,
            ServerState::Up | ServerState::GoingDown | ServerState::NoCheck
        ) && self.weight != Some(0)
    }
}

/// The `status` column, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    Up,
    /// `UP 1/2`: up, with failed checks toward `fall`; still serving.
    GoingDown,
    Down,
    /// `DOWN 1/2`: down, with passed checks toward `rise`; not serving.
    GoingUp,
    /// Drained (admin state drain), however its checks go.
    Drain,
    Maint,
    /// `NOLB`: up but refusing new traffic.
    NoLb,
    NoCheck,
    Other(String),
}

impl ServerState {
    pub fn parse(status: &str) -> ServerState {
        let s = status.trim();
        let word = s.split([' ', '(']).next().unwrap_or("");
        let transition = s.contains('/');
        match word {
            "UP" if transition => ServerState::GoingDown,
            "UP" => ServerState::Up,
            "DOWN" if transition => ServerState::GoingUp,
            "DOWN" => ServerState::Down,
            "DRAIN" => ServerState::Drain,
            "MAINT" => ServerState::Maint,
            "NOLB" => ServerState::NoLb,
            "no" if s == "no check" => ServerState::NoCheck,
            _ => ServerState::Other(s.to_string()),
        }
    }
}

/// Servers that serve traffic.
pub fn capacity(servers: &[ServerStat]) -> u32 {
    servers.iter().filter(|s| s.serving()).count() as u32
}

/// `name status scur` lines, for messages.
pub fn format_servers(servers: &[ServerStat]) -> String {
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!(
            "    {}/{} status={:?} scur={} weight={:?} check={} ({})\n",
            s.backend, s.server, s.status, s.scur, s.weight, s.check_status, s.check_desc
        ));
    }
    if out.is_empty() {
        out.push_str("    (no servers)\n");
    }
    out
}

/// Parses `show stat` CSV (header line `# pxname,svname,...`).
pub fn parse_show_stat(text: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("show stat: no `# pxname,...` header in {text:?}"))?;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let need = |name: &str| col(name).ok_or_else(|| format!("show stat: no column {name}"));
    let (px, sv, scur, status) = (
        need("pxname")?,
        need("svname")?,
        need("scur")?,
        need("status")?,
    );
    let (weight, check, desc) = (col("weight"), col("check_status"), col("check_desc"));
    let (req_tot, hrsp_5xx) = (col("req_tot"), col("hrsp_5xx"));
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let status_text = get(status).to_string();
        out.push(ServerStat {
            backend: get(px).to_string(),
            server: get(sv).to_string(),
            state: ServerState::parse(&status_text),
            status: status_text,
            scur: get(scur).parse().unwrap_or(0),
            weight: weight.and_then(|i| get(i).parse().ok()),
            check_status: check.map(|i| get(i).to_string()).unwrap_or_default(),
            check_desc: desc.map(|i| get(i).to_string()).unwrap_or_default(),
            req_tot: req_tot.and_then(|i| get(i).parse().ok()).unwrap_or(0),
            hrsp_5xx: hrsp_5xx.and_then(|i| get(i).parse().ok()).unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,\n\
fe,FRONTEND,,,1,2,262,5,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,\n\
web,h1,0,0,0,1,,3,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,10,0,,1,3,1,,3,,2,0,,1,L7OK,\n\
web,h2,0,0,2,2,,3,0,0,,0,,0,0,0,0,UP 1/2,1,1,0,1,0,10,0,,1,3,2,,3,,2,0,,1,L7STS,\n\
web,h3,0,0,0,1,,3,0,0,,0,,0,0,0,0,DRAIN,0,1,0,0,0,10,0,,1,3,3,,3,,2,0,,1,L7OK,\n\
web,h4,0,0,0,1,,3,0,0,,0,,0,0,0,0,DOWN,1,1,0,2,1,10,0,,1,3,4,,3,,2,0,,1,L4CON,\n\
web,h5,0,0,0,1,,3,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,10,0,,1,3,5,,3,,2,0,,1,L7OK,\n\
web,h6,0,0,0,1,,3,0,0,,0,,0,0,0,0,DOWN 1/2,1,1,0,2,1,10,0,,1,3,6,,3,,2,0,,1,L7OK,\n\
web,BACKEND,0,0,2,2,26,9,0,0,0,0,,0,0,0,0,UP,2,2,0,,0,10,0,,1,3,0,,9,,1,0,,2,,\n";

    #[test]
    fn parses_show_stat_and_counts_capacity() {
        let all = parse_show_stat(STAT).expect("parse");
        let servers: Vec<ServerStat> = all
            .into_iter()
            .filter(|s| s.backend == "web" && s.is_server())
            .collect();
        assert_eq!(servers.len(), 6);
        let states: Vec<&ServerState> = servers.iter().map(|s| &s.state).collect();
        assert_eq!(
            states,
            vec![
                &ServerState::Up,
                &ServerState::GoingDown,
                &ServerState::Drain,
                &ServerState::Down,
                &ServerState::Maint,
                &ServerState::GoingUp,
            ]
        );
        assert_eq!(servers[1].scur, 2);
        assert_eq!(servers[1].status, "UP 1/2");
        assert_eq!(servers[0].check_status, "L7OK");
        // h1 and h2 (still up, going down) serve; the rest do not.
        assert_eq!(capacity(&servers), 2);
    }

    #[test]
    fn reads_odd_states() {
        assert_eq!(ServerState::parse("no check"), ServerState::NoCheck);
        assert_eq!(ServerState::parse("DRAIN 1/2"), ServerState::Drain);
        assert_eq!(ServerState::parse("MAINT (via web/h1)"), ServerState::Maint);
        assert_eq!(ServerState::parse("NOLB"), ServerState::NoLb);
        assert!(parse_show_stat("Unknown command\n").is_err());
    }

    #[test]
    fn spots_failed_requests_in_httplog_lines() {
        let ok = "127.0.0.1:40000 [01/Jan/2026:00:00:00.000] fe web/h1 0/0/0/1/1 200 150 - - ---- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
        let refused = "127.0.0.1:40001 [01/Jan/2026:00:00:00.000] fe web/h2 0/0/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
        let none = "127.0.0.1:40002 [01/Jan/2026:00:00:00.000] fe web/<NOSRV> 0/-1/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
        assert!(!request_failed(ok));
        assert!(request_failed(refused));
        assert!(request_failed(none));
    }
}

/// One reading of a backend's servers: when (since the recorder started,
/// and on the wall clock, which the coordinator's events use too) and what.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Duration,
    pub unix_ms: i64,
    pub servers: Vec<ServerStat>,
}

/// Reads `show stat` for one backend every `every` on its own thread and
/// keeps every reading (at most `max`, failed reads counted), for tests
/// that check what HAProxy saw over a whole rollout.
pub struct StatRecorder {
    started: Instant,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<(Vec<Reading>, Vec<String>)>>,
}

impl StatRecorder {
    pub fn start(socket: &Path, backend: &str, every: Duration, max: usize) -> StatRecorder {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let socket = socket.to_path_buf();
        let backend = backend.to_string();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let (mut readings, mut errors) = (Vec::new(), Vec::new());
            let mut last = false;
            loop {
                let read = command(&socket, "show stat").and_then(|t| parse_show_stat(&t));
                match read {
                    Ok(all) => readings.push(Reading {
                        at: started.elapsed(),
                        unix_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                        servers: (all.into_iter())
                            .filter(|s| s.backend == backend && s.is_server())
                            .collect(),
                    }),
                    Err(e) => errors.push(e),
                }
                if last || readings.len() + errors.len() >= max {
                    break;
                }
                // The next reading is due in `every`; asked to stop (or the
                // recorder gone), one more at once, so the last sees the end.
                match rx.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => last = true,
                }
            }
            (readings, errors)
        });
        StatRecorder {
            started,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Time since the recorder started, on the readings' clock.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops after one last reading; every reading, and the read errors.
    pub fn stop(mut self) -> (Vec<Reading>, Vec<String>) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| (Vec::new(), vec!["the recorder panicked".to_string()]))
    }
}
