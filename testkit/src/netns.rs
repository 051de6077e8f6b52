//! A network namespace joined to the test's own namespace by a veth pair,
//! so a test can run a process "on another host" and cut its links while
//! the process keeps running.
//!
//! Each [`Netns`] gets a /30 of its own: the test's side of the pair is
//! [`Netns::host_ip`], the namespace's side [`Netns::ns_ip`]. Processes
//! started with [`Netns::command`] see only the namespace: their
//! `127.0.0.1` is the namespace's own loopback, and they reach the test's
//! side at `host_ip` (so servers they talk to must listen there too).
//! [`Netns::cut`] takes the namespace's end of the pair down: every packet
//! between the two sides is lost, established TCP connections included,
//! until [`Netns::restore`]. Needs root (CAP_NET_ADMIN) and `ip` from
//! iproute2. Dropping the value deletes the namespace and the pair.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// `10.200.0.0/16` in 16,384 slots of 4 addresses (a /30 each).
const SLOTS: u32 = 16_384;

/// A network namespace and its veth pair; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    slot_file: PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run `ip {}`: {e} (is iproute2 installed?)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Claims a free slot: a lock file holding our pid, reclaimed from dead pids.
fn claim_slot() -> Result<(u32, PathBuf), String> {
    let dir = std::env::temp_dir().join("drover-netns");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let me = std::process::id();
    let start = (me.wrapping_mul(2_654_435_761)) % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let path = dir.join(format!("slot-{slot}"));
        match File::options().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{me}").map_err(|e| format!("write {}: {e}", path.display()))?;
                return Ok((slot, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if owner.is_some_and(|pid| !pid_alive(pid)) {
                    // Left by a test process that died: take it over.
                    let _ = ip(&["netns", "del", &format!("drv{slot}")]);
                    let _ = ip(&["link", "del", &format!("drvh{slot}")]);
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e) => return Err(format!("create {}: {e}", path.display())),
        }
    }
    Err(format!(
        "no free network-namespace slot in {}",
        dir.display()
    ))
}

impl Netns {
    /// Creates the namespace `drv<slot>` with its loopback up, and the veth
    /// pair `drvh<slot>` (here) / `drvn<slot>` (there), addressed and up.
    /// Panics with `ip`'s error if the machine does not allow it.
    pub fn create() -> Netns {
        Self::try_create().unwrap_or_else(|e| {
            panic!("create a network namespace (tests that cut links need root and iproute2): {e}")
        })
    }

    /// [`Netns::create`], returning the error instead of panicking.
    pub fn try_create() -> Result<Netns, String> {
        let (slot, slot_file) = claim_slot()?;
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + slot * 4;
        let ns = Netns {
            name: format!("drv{slot}"),
            host_if: format!("drvh{slot}"),
            ns_if: format!("drvn{slot}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
            slot_file,
        };
        // On any error below, drop deletes what was made.
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns.ns_if,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This side's address of the pair: where processes in the namespace
    /// reach the test's servers.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address: where the test reaches its servers.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The argv prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "ip".to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
        ]
    }

    /// A command running `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Cuts the namespace off: its end of the pair goes down, so nothing
    /// crosses in either direction, while its processes keep running.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"])
            .unwrap_or_else(|e| panic!("cut {}: {e}", self.name));
    }

    /// Brings the link back after [`Netns::cut`].
    pub fn restore(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"])
            .unwrap_or_else(|e| panic!("restore {}: {e}", self.name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it
        // ours; the explicit delete covers a half-made pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = std::fs::remove_file(&self.slot_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A server in the namespace is reachable from here until the cut,
    /// and again after the restore; the namespace reaches our side too.
    #[test]
    fn cut_and_restore_the_link() {
        let ns = Netns::create();
        // Our side listens on host_ip; the namespace connects to it.
        let here = TcpListener::bind((ns.host_ip(), 0)).expect("bind host side");
        let port = here.local_addr().expect("local addr").port();
        let probe = |ns: &Netns| {
            ns.command("bash")
                .arg("-c")
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{port} && echo reached",
                    ns.host_ip()
                ))
                .output()
                .expect("run bash in the namespace")
        };
        let out = probe(&ns);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("reached"),
            "the namespace could not reach {}:{port}: {}",
            ns.host_ip(),
            String::from_utf8_lossy(&out.stderr)
        );
        let (_conn, _) = here.accept().expect("accept from the namespace");

        ns.cut();
        let out = probe(&ns);
        assert!(
            !out.status.success(),
            "still reached {}:{port} with the link cut",
            ns.host_ip()
        );
        // Our side cannot reach the namespace either (no listener is
        // needed: a SYN that is answered at all means a link).
        let there = TcpStream::connect_timeout(
            &std::net::SocketAddr::from((ns.ns_ip(), 9)),
            Duration::from_millis(300),
        );
        assert!(
            there
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused),
            "the namespace answered with its link cut: {there:?}"
        );

        ns.restore();
        let out = probe(&ns);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("reached"),
            "the link did not come back: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
