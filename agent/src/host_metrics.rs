//! Host resource metrics for health reports, via sysinfo.
//!
//! One `System` lives as long as the collector: CPU use is a delta between
//! two refreshes, so keeping it is what makes the number meaningful, and
//! only CPU and memory are refreshed per report. The disk list (which mounts
//! exist) changes rarely and is re-read only every [`DISK_LIST_EVERY`];
//! space figures are refreshed per report.

use std::time::{Duration, Instant};

use drover_proto::v1::{DiskUsage, HostMetrics};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};

/// How often the list of mounts is re-read.
pub const DISK_LIST_EVERY: Duration = Duration::from_secs(60);

/// File systems that are not storage an operator cares about, on top of
/// the pseudo file systems sysinfo already skips.
const SKIP_FS: &[&str] = &[
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "nsfs",
    "tracefs",
    "debugfs",
    "securityfs",
    "configfs",
    "fusectl",
    "bpf",
    "binfmt_misc",
    "efivarfs",
    "autofs",
];

#[derive(Debug, thiserror::Error)]
#[error("read host metrics: {0}")]
pub struct MetricsError(#[from] sysinfo::Error);

pub struct HostMetricsCollector {
    sys: System,
    disks: Disks,
    disks_listed: Option<Instant>,
    cpu_count: u32,
}

impl std::fmt::Debug for HostMetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMetricsCollector")
            .finish_non_exhaustive()
    }
}

impl HostMetricsCollector {
    pub fn new() -> Result<HostMetricsCollector, MetricsError> {
        let mut sys = System::new()?;
        sys.refresh_cpu_list(CpuRefreshKind::nothing().with_usage());
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        let cpu_count = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
        Ok(HostMetricsCollector {
            sys,
            disks: Disks::new()?,
            disks_listed: None,
            cpu_count,
        })
    }

    /// Takes one sample. The first call's CPU figure covers the time since
    /// [`HostMetricsCollector::new`].
    pub fn collect(&mut self) -> HostMetrics {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());

        let storage = DiskRefreshKind::nothing().with_storage();
        if self
            .disks_listed
            .is_none_or(|t| t.elapsed() >= DISK_LIST_EVERY)
        {
            self.disks.refresh_specifics(true, storage);
            self.disks_listed = Some(Instant::now());
        } else {
            for disk in self.disks.iter_mut() {
                disk.refresh_specifics(storage);
            }
        }

        let mut disks: Vec<DiskUsage> = Vec::with_capacity(self.disks.len());
        for disk in self.disks.iter() {
            let fs = disk.file_system().to_string_lossy();
            let total = disk.total_space();
            if total == 0 || SKIP_FS.contains(&fs.as_ref()) {
                continue;
            }
            let mount = disk.mount_point().to_string_lossy();
            // Bind mounts and stacked mounts show up more than once.
            if disks.iter().any(|d| d.mount == mount) {
                continue;
            }
            disks.push(DiskUsage {
                mount: mount.into_owned(),
                total_bytes: total,
                used_bytes: total.saturating_sub(disk.available_space()),
            });
        }
        disks.sort_by(|a, b| a.mount.cmp(&b.mount));

        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        HostMetrics {
            cpu_percent: f64::from(self.sys.global_cpu_usage()),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            mem_total_bytes: self.sys.total_memory(),
            mem_used_bytes: self.sys.used_memory(),
            swap_total_bytes: self.sys.total_swap(),
            swap_used_bytes: self.sys.used_swap(),
            disks,
            uptime_secs: System::uptime().unwrap_or(0),
            cpu_count: self.cpu_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_plausible_numbers() {
        let mut c = HostMetricsCollector::new().expect("sysinfo");
        let _ = c.collect();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let m = c.collect();
        assert!(m.cpu_count >= 1);
        assert!((0.0..=100.0).contains(&m.cpu_percent), "{}", m.cpu_percent);
        assert!(m.mem_total_bytes > 0 && m.mem_used_bytes <= m.mem_total_bytes);
        assert!(m.uptime_secs > 0);
        for d in &m.disks {
            assert!(d.used_bytes <= d.total_bytes, "{d:?}");
            assert!(
                !d.mount.starts_with("/proc") && !d.mount.starts_with("/sys"),
                "{d:?}"
            );
        }
    }
}
