//! What the kernel says about a process and the machine: CPU time, memory,
//! load, and the open-file limit the simulator raises for itself and the
//! coordinator it starts.

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) reads a constant and touches no memory of ours.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, 12th and 13th after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`), as MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU use of one process and of the whole machine over a window.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    at: Instant,
    pid: u32,
    proc_secs: f64,
    own_secs: f64,
    machine: (u64, u64),
}

/// What a [`CpuWindow`] measured, in cores (1.0 = one core busy).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub secs: f64,
    pub process_cores: f64,
    pub process_cpu_secs: f64,
    pub simulator_cores: f64,
    pub machine_busy_cores: f64,
}

impl CpuUse {
    /// What the rest of the machine used (the CLI, anything else running):
    /// busy cores minus the coordinator and the simulator.
    pub fn others(&self) -> f64 {
        (self.machine_busy_cores - self.process_cores - self.simulator_cores).max(0.0)
    }
}

impl CpuWindow {
    pub fn start(pid: u32) -> CpuWindow {
        CpuWindow {
            at: Instant::now(),
            pid,
            proc_secs: cpu_secs(pid).unwrap_or(0.0),
            own_secs: cpu_secs(std::process::id()).unwrap_or(0.0),
            machine: machine_jiffies().unwrap_or((0, 0)),
        }
    }

    pub fn finish(&self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let proc_cpu = cpu_secs(self.pid).unwrap_or(self.proc_secs) - self.proc_secs;
        let own = cpu_secs(std::process::id()).unwrap_or(self.own_secs) - self.own_secs;
        let (busy, total) = machine_jiffies().unwrap_or(self.machine);
        let d_total = total.saturating_sub(self.machine.1) as f64;
        let d_busy = busy.saturating_sub(self.machine.0) as f64;
        let machine = if d_total > 0.0 {
            d_busy / d_total * cores() as f64
        } else {
            0.0
        };
        CpuUse {
            secs,
            process_cores: proc_cpu / secs,
            process_cpu_secs: proc_cpu,
            simulator_cores: own / secs,
            machine_busy_cores: machine,
        }
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn mem_total_mib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Raises RLIMIT_NOFILE (soft, and hard when allowed) to at least `want`.
/// Children spawned afterwards inherit it, which is how the coordinator
/// gets enough descriptors for every simulated session. Returns the soft
/// limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        // Raising the hard limit needs CAP_SYS_RESOURCE; without it take
        // what the hard limit allows.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The process listening on TCP `port` here (IPv4 or IPv6): the socket's
/// inode from `/proc/net/tcp{,6}`, then the process holding it among the
/// open descriptors of every process we may read. How a run finds the
/// etcd members it measures, whether it started them or not.
pub fn listener_pid(port: u16) -> Option<u32> {
    const LISTEN: &str = "0A";
    let mut sockets = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl, local_address (hex IP:PORT), rem_address, st, ..., inode (10th).
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                sockets.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if sockets.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && sockets.contains(target.to_string_lossy().as_ref())
            {
                return Some(pid);
            }
        }
    }
    None
}
