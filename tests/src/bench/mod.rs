//! Benchmarks: programs that run the real binaries and report figures
//! (agent footprint, a rollout against Ansible, artifact fan-out). They
//! assert no speed; `drover-bench` prints one JSON object per measured
//! subject and `scripts/bench` folds them into a table.
//!
//! What every scenario shares lives here: reading a process's CPU time and
//! memory from /proc, the CPU time of reaped children, and the machine's
//! load at the moment a figure was taken (the machine is shared, so every
//! figure carries it).

pub mod ansible;
pub mod fanout;
pub mod footprint;
pub mod outage;
pub mod table;

use std::path::Path;
use std::time::Duration;

/// Bytes in a MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// CPU time and memory of one process at one moment, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime of the process itself (all its threads).
    pub cpu_secs: f64,
    /// cutime + cstime: children it has waited for.
    pub children_cpu_secs: f64,
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak RSS since the process started.
    pub hwm_kib: u64,
    /// Pss from smaps_rollup (0 if unreadable).
    pub pss_kib: u64,
    pub threads: u64,
    /// Nanoseconds on a CPU of the live threads (`/proc/PID/task/*/schedstat`):
    /// finer than utime + stime's 10 ms ticks, but a thread that exited
    /// takes its share with it.
    pub sched_ns: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `/proc/PID/{stat,status,smaps_rollup}`; `None` once the process
/// is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces:
    // state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    let tck = clock_ticks();
    let cpu_secs = (num(14)? + num(15)?) / tck;
    let children_cpu_secs = (num(16)? + num(17)?) / tck;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let mut sched_ns = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            sched_ns += std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(ProcSample {
        sched_ns,
        cpu_secs,
        children_cpu_secs,
        rss_kib: kib(&status, "VmRSS:"),
        hwm_kib: kib(&status, "VmHWM:"),
        pss_kib: kib(&rollup, "Pss:"),
        threads: kib(&status, "Threads:"),
    })
}

/// The pids of `root` and all its descendants (by parent pid in /proc).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) of this process's children that have been
/// waited for, and of their waited-for descendants (`RUSAGE_CHILDREN`).
pub fn children_cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given,
    // which points at a zeroed value of that type.
    #[allow(unsafe_code)]
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages, e.g. `"1.20 0.98 0.75"`.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

/// Seconds, with millisecond precision, for JSON.
pub fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64(), 3)
}

/// `x` rounded to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// KiB to MiB, two decimals.
pub fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 2)
}

/// Progress on stderr (stdout carries the JSON).
pub fn note(msg: &str) {
    eprintln!("drover-bench: {msg}");
}

/// Kills (SIGKILL) the process whose pid is in `pidfile` if it still runs
/// `exe`: for daemons a benchmark started outside the harness.
pub fn kill_pidfile(pidfile: &Path, exe: &Path) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let runs_exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|p| p.to_string_lossy().starts_with(&*exe.to_string_lossy()));
    if runs_exe {
        crate::harness::process::signal(pid as i32, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("sample self");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
        assert_eq!(load_avg().split_whitespace().count(), 3);
    }
}
