//! A real etcd cluster on loopback for tests: 1 or 3 members (Debian's `etcd-server`), each on
//! its own free ports with its own data dir in a temp dir, killed on drop. Start-up waits on
//! every member's `/health` with a deadline, never on a sleep.
//!
//! Spawn from the test's own thread (a `#[tokio::test]` body runs there): members are killed
//! when the thread that started them ends, so that a test killed by its runner leaves no etcd
//! behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pause;

/// How long a fresh cluster may take to elect a leader and answer `/health`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `etcd` binary: `$DROVER_ETCD`, else `etcd` on the PATH (Debian `etcd-server`).
pub fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DROVER_ETCD") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "etcd not found on PATH (nor $DROVER_ETCD): install etcd-server (scripts/setup); \
         the etcd store's tests need a real etcd and are not skipped without one"
    );
}

/// Client TLS for a cluster: the members serve these and require client certificates
/// signed by `ca` (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The cluster; every member is SIGKILLed on drop and its data removed with the temp dir.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<EtcdTlsFiles>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3) on plain http and waits until all are healthy.
    pub fn start(members: usize) -> EtcdCluster {
        Self::start_with(members, None)
    }

    /// Like [`EtcdCluster::start`]; with `tls`, clients must speak https and present a
    /// certificate signed by its CA. Member-to-member traffic stays plain (loopback).
    pub fn start_with(members: usize, tls: Option<EtcdTlsFiles>) -> EtcdCluster {
        assert!(members >= 1, "an etcd cluster needs at least one member");
        let binary = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("drover-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temp dir for etcd: {e}"));
        let mut ports = free_ports(members * 2).into_iter();
        let mut list = Vec::new();
        for i in 0..members {
            let (Some(client_port), Some(peer_port)) = (ports.next(), ports.next()) else {
                unreachable!("free_ports returns as many ports as asked");
            };
            let name = format!("m{i}");
            list.push(Member {
                data_dir: dir.path().join(format!("{name}.etcd")),
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                child: None,
            });
        }
        let initial_cluster = list
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: list,
            initial_cluster,
            token: format!(
                "drover-test-{}-{}",
                std::process::id(),
                dir.path().display()
            ),
            tls,
            dir,
        };
        for i in 0..members {
            cluster.spawn(i, &binary);
        }
        cluster.wait_healthy(START_TIMEOUT);
        cluster
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize, binary: &Path) {
        let scheme = self.scheme();
        let m = &self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("open etcd log {}: {e}", m.log.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("clone etcd log handle: {e}"));
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Ignored once the data dir exists, so a restarted member rejoins.
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd {}: {e}", binary.display()));
        self.members[i].child = Some(child);
    }

    /// `scheme://127.0.0.1:port` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data dir; it rejoins the cluster. Does not wait.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member {i} is still running"
        );
        self.spawn(i, &etcd_binary());
    }

    /// Waits until every running member answers `/health` with `"health":"true"` (which in
    /// etcd 3.4 means it has a leader and a quorum read went through). Panics after
    /// `timeout` with the members' log tails. Only plain-http clusters can be asked; with TLS
    /// this waits until every member accepts TCP connections and leaves the rest to the test.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let mut all = true;
            for i in 0..self.members.len() {
                if self.members[i].child.is_none() {
                    continue;
                }
                if let Some(status) = self.members[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "etcd member {i} exited ({status}) while starting\n{}",
                        self.describe(40)
                    );
                }
                let port = self.members[i].client_port;
                let healthy = if self.tls.is_some() {
                    TcpStream::connect(("127.0.0.1", port)).is_ok()
                } else {
                    health(port).is_some_and(|body| body.contains("\"health\":\"true\""))
                };
                all &= healthy;
            }
            if all {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "etcd cluster not healthy after {:.1}s\n{}",
                    timeout.as_secs_f64(),
                    self.describe(40)
                );
            }
            pause(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of every member's log, for a failing test's message.
    pub fn describe(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "--- etcd {} (client port {}, {}) {}:\n",
                m.name,
                m.client_port,
                if m.child.is_some() {
                    "running"
                } else {
                    "stopped"
                },
                m.log.display()
            ));
            for line in &all[from..] {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The temp dir holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// GET /health on a member's plain client port; None when it does not answer.
fn health(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// `n` distinct ports that were free a moment ago, below the kernel's ephemeral range (where
/// only another explicit bind can take them before etcd does).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let mut ports = Vec::with_capacity(n);
    let mut attempt = 0u64;
    while ports.len() < n {
        attempt += 1;
        assert!(attempt < 10_000, "no free ports for etcd on 127.0.0.1");
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// Own process group (a terminal's Ctrl-C reaches the test only), and SIGKILL when the
/// spawning thread dies, so a test killed by its runner leaves no etcd running.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
