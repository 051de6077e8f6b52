//! One PostgreSQL server of a [`PgPair`](super::PgPair): how its processes are started
//! (under the node's prefix, as `postgres` when the tests run as root), asked, stopped and
//! killed, and how its data dir is made, configured and rewound.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    AUTO_CONF_HEADER, DATABASE, Lsn, OS_USER, POLL, PgEndpoint, PgError, REPLICA_CONF, Role,
    SUPERUSER, io_err,
};
use crate::pause;

/// One PostgreSQL server of the pair.
#[derive(Debug)]
pub struct PgNode {
    pub(super) name: &'static str,
    pub(super) bindir: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) log: PathBuf,
    pub(super) listen: IpAddr,
    pub(super) port: u16,
    pub(super) prefix: Vec<OsString>,
    pub(super) password: String,
    /// `Some((uid, gid))` of `postgres` when running as root.
    pub(super) owner: Option<(u32, u32)>,
    pub(super) role: Role,
    pub(super) child: Option<Child>,
}

impl PgNode {
    /// `a` or `b`.
    pub fn name(&self) -> &str {
        self.name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn listen(&self) -> IpAddr {
        self.listen
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log file (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The superuser on the `postgres` database.
    pub fn endpoint(&self) -> PgEndpoint {
        PgEndpoint {
            host: self.listen,
            port: self.port,
            user: SUPERUSER.to_string(),
            password: self.password.clone(),
            dbname: DATABASE.to_string(),
        }
    }

    /// Whether the server process the kit started is still there.
    pub(super) fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Runs one SQL command with `psql -X -A -t` (under the node's prefix) and returns its
    /// output, trimmed: rows on lines, columns split by `|`.
    pub fn query(&self, sql: &str) -> Result<String, PgError> {
        self.query_each(&[sql])
    }

    /// Runs each command in its own transaction (`psql -c` per command: `ALTER SYSTEM`
    /// cannot run inside a transaction block); stops at the first failing one.
    pub fn query_each(&self, sqls: &[&str]) -> Result<String, PgError> {
        let mut cmd = self.command("psql", false);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.listen.to_string())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", DATABASE]);
        for sql in sqls {
            cmd.arg("-c").arg(sql);
        }
        let shown = format!("psql -c {}", sqls.join(" -c "));
        Ok(self.run(cmd, &shown)?.trim().to_string())
    }

    /// `pg_is_in_recovery()`: true on a replica.
    pub fn in_recovery(&self) -> Result<bool, PgError> {
        self.query_bool("SELECT pg_is_in_recovery()")
    }

    /// The last `lines` lines of the server log, for a failing test's message.
    pub fn describe(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        let mut out = format!(
            "--- postgres {} ({}, {}:{}, {}) {}:\n",
            self.name,
            self.role,
            self.listen,
            self.port,
            if self.child.is_some() {
                "started"
            } else {
                "stopped"
            },
            self.log.display()
        );
        for line in &all[from..] {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The server log from byte `from` on.
    pub(super) fn log_since(&self, from: u64) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    pub(super) fn query_bool(&self, sql: &str) -> Result<bool, PgError> {
        match self.query(sql)?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(self.unexpected(sql, other, "t or f")),
        }
    }

    pub(super) fn query_lsn(&self, sql: &str) -> Result<Lsn, PgError> {
        let out = self.query(sql)?;
        Lsn::parse(&out).ok_or_else(|| self.unexpected(sql, &out, "a WAL position X/Y"))
    }

    pub(super) fn unexpected(&self, sql: &str, output: &str, expected: &'static str) -> PgError {
        PgError::Output {
            node: self.name.to_string(),
            command: format!("psql -c {sql}"),
            output: output.to_string(),
            expected,
        }
    }

    /// `prefix... [setpriv postgres] BINDIR/program`, with a clean libpq environment.
    fn command(&self, program: &str, as_postgres: bool) -> Command {
        let mut argv: Vec<OsString> = self.prefix.clone();
        if as_postgres && let Some((uid, gid)) = self.owner {
            argv.extend(
                [
                    "setpriv".to_string(),
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--init-groups".to_string(),
                    // setpriv's uid change clears a death signal set before it: set it after.
                    "--pdeathsig=KILL".to_string(),
                ]
                .map(OsString::from),
            );
        }
        argv.push(self.bindir.join(program).into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        for var in [
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
            "PGOPTIONS",
            "PGPASSFILE",
            "PGDATA",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", &self.dir)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGAPPNAME", "drover-testkit")
            .stdin(Stdio::null());
        if !as_postgres {
            // A dead peer or a cut link must not hang the test's queries.
            cmd.env("PGOPTIONS", "-c statement_timeout=30000");
        }
        cmd
    }

    fn run(&self, mut cmd: Command, shown: &str) -> Result<String, PgError> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| PgError::Spawn {
                node: self.name.to_string(),
                command: shown.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(PgError::Command {
                node: self.name.to_string(),
                command: shown.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates `path` with `text`, owned by postgres (it reads it from its 0700 data dir).
    pub(super) fn write_owned(&self, path: &Path, text: &str) -> Result<(), PgError> {
        fs::write(path, text).map_err(io_err(format!("write {}", path.display())))?;
        self.chown(path)
    }

    pub(super) fn chown(&self, path: &Path) -> Result<(), PgError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {} to {OS_USER}", path.display())))?;
        }
        Ok(())
    }

    pub(super) fn initdb(&self, pwfile: &Path) -> Result<(), PgError> {
        let mut cmd = self.command("initdb", true);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])
            // No fsync of the fresh cluster: a test's data dir does not outlive it.
            .arg("--no-sync")
            .arg(format!("--pwfile={}", pwfile.display()));
        self.run(cmd, "initdb")?;
        Ok(())
    }

    /// The settings both nodes share (a replica's copy comes with `pg_basebackup`).
    pub(super) fn write_config(&self, trusted: &[IpAddr]) -> Result<(), PgError> {
        let conf = self.data.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).map_err(io_err(format!("read {}", conf.display())))?;
        text.push_str(&format!(
            "\n# drover-testkit\n\
             unix_socket_directories = ''\n\
             wal_level = replica\n\
             max_wal_senders = 5\n\
             hot_standby = on\n\
             # pg_rewind needs it to rejoin a former primary\n\
             wal_log_hints = on\n\
             wal_keep_size = '256MB'\n\
             # replay positions reach pg_stat_replication within a second\n\
             wal_receiver_status_interval = '1s'\n\
             # a peer cut off is dropped after 10 s (default 60 s): pg_stat_replication\n\
             # stops listing it, and a clean stop of the old primary waits for it 10 s at most\n\
             wal_sender_timeout = '10s'\n\
             wal_receiver_timeout = '10s'\n\
             shared_buffers = '16MB'\n\
             max_connections = 40\n\
             include_if_exists = '{REPLICA_CONF}'\n"
        ));
        self.write_owned(&conf, &text)?;
        let mut hba = String::from("# drover-testkit: trust loopback and the pair's nodes\n");
        let mut trust = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ];
        for ip in trusted {
            if !trust.contains(ip) {
                trust.push(*ip);
            }
        }
        for ip in trust {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            hba.push_str(&format!("host all all {ip}/{bits} trust\n"));
            hba.push_str(&format!("host replication all {ip}/{bits} trust\n"));
        }
        hba.push_str("# everyone else needs the password\n");
        for net in ["0.0.0.0/0", "::/0"] {
            hba.push_str(&format!("host all all {net} scram-sha-256\n"));
            hba.push_str(&format!("host replication all {net} scram-sha-256\n"));
        }
        self.write_owned(&self.data.join("pg_hba.conf"), &hba)
    }

    /// Makes the next start a primary (`follow = None`) or a replica of `follow`; forgets
    /// whatever `ALTER SYSTEM` left (a copied data dir brings its source's).
    pub(super) fn configure_role(&self, follow: Option<&PgEndpoint>) -> Result<(), PgError> {
        self.write_owned(&self.data.join("postgresql.auto.conf"), AUTO_CONF_HEADER)?;
        let replica_conf = self.data.join(REPLICA_CONF);
        let signal = self.data.join("standby.signal");
        match follow {
            Some(primary) => {
                self.write_owned(
                    &replica_conf,
                    &format!(
                        "primary_conninfo = 'host={} port={} user={} password={} \
                         application_name={}'\n",
                        primary.host, primary.port, primary.user, primary.password, self.name
                    ),
                )?;
                self.write_owned(&signal, "")?;
            }
            None => {
                for path in [&replica_conf, &signal] {
                    match fs::remove_file(path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(io_err(format!("remove {}", path.display()))(e));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn spawn(&mut self) -> Result<(), PgError> {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_err(format!("open {}", self.log.display())))?;
        let err = log
            .try_clone()
            .map_err(io_err("clone the postgres log handle"))?;
        let mut cmd = self.command("postgres", true);
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-c")
            .arg(format!("listen_addresses={}", self.listen))
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!("cluster_name={}", self.name))
            .stdout(log)
            .stderr(err);
        // Its own process group: a terminal's Ctrl-C reaches the test only.
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|source| PgError::Spawn {
            node: self.name.to_string(),
            command: "postgres".to_string(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server it started says `ready` in its own `postmaster.pid` (so that a
    /// foreign server on the same port cannot pass for it), then answers `SELECT 1`.
    pub(super) fn wait_ready(&mut self, timeout: Duration, when: &str) -> Result<(), PgError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(PgError::Exited {
                    node: self.name.to_string(),
                    status: status.to_string(),
                    when: when.to_string(),
                    log: self.describe(30),
                });
            }
            let last = if self.says_ready() {
                match self.query("SELECT 1") {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                }
            } else {
                "postmaster.pid does not say ready (the prefix must exec postgres)".to_string()
            };
            if start.elapsed() >= timeout {
                return Err(PgError::Timeout {
                    node: self.name.to_string(),
                    what: format!("it answers queries ({when})"),
                    timeout,
                    detail: format!("last: {last}\n{}", self.describe(30)),
                });
            }
            pause(POLL);
        }
    }

    /// `postmaster.pid` names the process the kit started and its status line says `ready`
    /// (accepting connections; read-only ones on a replica).
    fn says_ready(&self) -> bool {
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        let Ok(text) = fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        lines.first().and_then(|pid| pid.parse::<u32>().ok()) == Some(child.id())
            && lines.get(7) == Some(&"ready")
    }

    /// The postmaster's pid from `postmaster.pid`, while the kit's server runs.
    fn postmaster_pid(&mut self) -> Option<i32> {
        if !self.is_running() {
            return None;
        }
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The System V segment id from `postmaster.pid` (line 7: key, id).
    fn shm_id(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
    }

    /// `pg_ctl stop -m fast`: a clean shutdown (a final checkpoint, replicas sent all WAL).
    pub(super) fn stop_clean(&mut self) -> Result<(), PgError> {
        if !self.is_running() {
            self.child = None;
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl", true);
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "30"]);
        let stopped = self.run(cmd, "pg_ctl stop -m fast");
        if let Some(mut child) = self.child.take() {
            if stopped.is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        stopped.map(drop)
    }

    /// SIGKILLs the postmaster and every process it had forked, at once, as a lost host
    /// would stop: no shutdown checkpoint, no last WAL sent.
    pub(super) fn kill(&mut self) {
        if let Some(pm) = self.postmaster_pid() {
            // Stopped, it cannot fork while its children are listed.
            signal(pm, libc::SIGSTOP);
            let mut pids = children_of(pm);
            pids.push(pm);
            for pid in pids {
                signal(pid, libc::SIGKILL);
            }
            // A killed postmaster leaves its small System V segment behind, as a crashed
            // host would not: remove it (it goes once the dying processes detach).
            if let Some(id) = self.shm_id() {
                remove_shm(id);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Immediate shutdown (SIGQUIT): the postmaster ends its children and frees its shared
    /// memory; SIGKILL after 10 s.
    fn shut_down_for_drop(&mut self) {
        let Some(pm) = self.postmaster_pid() else {
            self.child = None;
            return;
        };
        signal(pm, libc::SIGQUIT);
        let start = Instant::now();
        while self.is_running() && start.elapsed() < Duration::from_secs(10) {
            pause(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        self.shut_down_for_drop();
    }
}

/// Sends `sig` to `pid`; a pid that is gone is no error.
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; pid came from postmaster.pid or /proc of a
    // server this kit started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Marks System V shared memory segment `id` for removal.
fn remove_shm(id: i32) {
    // SAFETY: IPC_RMID takes no buffer (null is allowed); `id` is the segment our own
    // postmaster recorded in postmaster.pid while it ran.
    #[allow(unsafe_code)]
    unsafe {
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// Pids whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl PgNode {
    /// `pg_basebackup -X stream` from `source` into the (absent) data dir.
    pub(super) fn base_backup(&self, source: &PgEndpoint) -> Result<(), PgError> {
        let mut cmd = self.command("pg_basebackup", true);
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-h")
            .arg(source.host.to_string())
            .arg("-p")
            .arg(source.port.to_string())
            .args([
                "-U",
                &source.user,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
        self.run(cmd, &format!("pg_basebackup from {source}"))?;
        Ok(())
    }

    /// `pg_rewind` the (stopped) data dir onto `source`'s timeline. After a kill, pg_rewind
    /// first runs crash recovery itself.
    pub(super) fn rewind(&self, source: &PgEndpoint) -> Result<(), PgError> {
        let mut cmd = self.command("pg_rewind", true);
        cmd.arg("-D")
            .arg(&self.data)
            .arg(format!("--source-server={}", source.conninfo()))
            .arg("--no-sync");
        self.run(cmd, &format!("pg_rewind from {source}"))?;
        Ok(())
    }

    /// After a promotion: drop the replica settings so a restart stays a primary
    /// (postgres removed `standby.signal` itself).
    pub(super) fn forget_primary_conninfo(&self) -> Result<(), PgError> {
        match fs::remove_file(self.data.join(REPLICA_CONF)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(format!(
                "remove {}",
                self.data.join(REPLICA_CONF).display()
            ))(e)),
            _ => Ok(()),
        }
    }
}
