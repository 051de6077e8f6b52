//! The contract's JSON for a host: serde structs converted from the wire
//! types, enums as lowercase strings, times as RFC 3339 UTC.

use std::collections::BTreeMap;

use drover_proto::v1::{
    DiskUsage, DrainMethod, HealthState, Host, HostMetrics, HostStatus, InstanceStatus,
    RuntimeState,
};
use serde::Serialize;

use super::rfc3339_ms;

pub fn status_str(s: HostStatus) -> &'static str {
    match s {
        HostStatus::Enrolled => "enrolled",
        HostStatus::Connected => "connected",
        HostStatus::Lost => "lost",
        HostStatus::Revoked => "revoked",
        HostStatus::Unspecified => "unknown",
    }
}

pub fn state_str(s: RuntimeState) -> &'static str {
    match s {
        RuntimeState::Running => "running",
        RuntimeState::Stopped => "stopped",
        RuntimeState::Crashed => "crashed",
        RuntimeState::Starting => "starting",
        RuntimeState::Stopping => "stopping",
        RuntimeState::NotDeployed => "not_deployed",
        RuntimeState::Unspecified => "unknown",
    }
}

pub fn drain_str(d: DrainMethod) -> &'static str {
    match d {
        DrainMethod::None => "none",
        DrainMethod::Haproxy => "haproxy",
        DrainMethod::Exec => "exec",
        // An agent older than the field.
        DrainMethod::Unspecified => "unknown",
    }
}

pub fn health_str(h: HealthState) -> &'static str {
    match h {
        HealthState::Unknown | HealthState::Unspecified => "unknown",
        HealthState::Healthy => "healthy",
        HealthState::Unhealthy => "unhealthy",
        HealthState::None => "none",
    }
}

#[derive(Debug, Serialize)]
pub struct HostJson {
    pub host_id: String,
    pub status: &'static str,
    pub status_reason: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub last_seen: Option<String>,
    pub last_seen_ms: i64,
    pub cert_serial: String,
    pub cert_not_after: Option<String>,
    pub enrolled_at: Option<String>,
    pub peer_addr: String,
    pub metrics: Option<MetricsJson>,
    pub instances: Vec<InstanceJson>,
}

#[derive(Debug, Serialize)]
pub struct MetricsJson {
    pub cpu_percent: f64,
    pub cpu_count: u32,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub uptime_secs: u64,
    pub disks: Vec<DiskJson>,
}

#[derive(Debug, Serialize)]
pub struct DiskJson {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct InstanceJson {
    pub id: String,
    pub name: String,
    pub service: String,
    pub runtime: String,
    pub state: &'static str,
    pub restarts: u32,
    pub pid: u32,
    pub health: &'static str,
    pub last_check_latency_ms: u32,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_check_error: String,
    pub release: ReleaseJson,
    pub drained: bool,
    /// none | haproxy | exec | unknown (an agent that does not say)
    pub drain: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ReleaseJson {
    pub version: String,
    pub digest: String,
}

impl From<&DiskUsage> for DiskJson {
    fn from(d: &DiskUsage) -> Self {
        DiskJson {
            mount: d.mount.clone(),
            total_bytes: d.total_bytes,
            used_bytes: d.used_bytes,
        }
    }
}

impl From<&HostMetrics> for MetricsJson {
    fn from(m: &HostMetrics) -> Self {
        MetricsJson {
            cpu_percent: m.cpu_percent,
            cpu_count: m.cpu_count,
            load1: m.load1,
            load5: m.load5,
            load15: m.load15,
            mem_total_bytes: m.mem_total_bytes,
            mem_used_bytes: m.mem_used_bytes,
            swap_total_bytes: m.swap_total_bytes,
            swap_used_bytes: m.swap_used_bytes,
            uptime_secs: m.uptime_secs,
            disks: m.disks.iter().map(DiskJson::from).collect(),
        }
    }
}

impl From<&InstanceStatus> for InstanceJson {
    fn from(i: &InstanceStatus) -> Self {
        let release = i.release.as_ref();
        InstanceJson {
            id: i.id.clone(),
            name: i.name.clone(),
            service: i.service.clone(),
            runtime: i.runtime.clone(),
            state: state_str(i.state()),
            restarts: i.restarts,
            pid: i.pid,
            health: health_str(i.health()),
            last_check_latency_ms: i.last_check_latency_ms,
            consecutive_successes: i.consecutive_successes,
            consecutive_failures: i.consecutive_failures,
            last_check_error: i.last_check_error.clone(),
            release: ReleaseJson {
                version: release.map(|r| r.version.clone()).unwrap_or_default(),
                digest: release.map(|r| r.digest.clone()).unwrap_or_default(),
            },
            drained: i.drained,
            drain: drain_str(i.drain()),
        }
    }
}

impl From<&Host> for HostJson {
    fn from(h: &Host) -> Self {
        HostJson {
            host_id: h.host_id.clone(),
            status: status_str(h.status()),
            status_reason: h.status_reason.clone(),
            labels: h
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent_version: h.agent_version.clone(),
            last_seen: rfc3339_ms(h.last_seen_ms),
            last_seen_ms: h.last_seen_ms,
            cert_serial: h.cert_serial.clone(),
            cert_not_after: rfc3339_ms(h.cert_not_after_ms),
            enrolled_at: rfc3339_ms(h.enrolled_at_ms),
            peer_addr: h.peer_addr.clone(),
            metrics: h.metrics.as_ref().map(MetricsJson::from),
            instances: h.instances.iter().map(InstanceJson::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{GIB, NOW, bare_host, host};

    #[test]
    fn json_has_the_contract_shape() {
        let mut h = host("h1");
        h.instances[0].release = None;
        let v = serde_json::to_value(HostJson::from(&h)).expect("json");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "host_id",
            "status",
            "status_reason",
            "labels",
            "agent_version",
            "last_seen",
            "last_seen_ms",
            "cert_serial",
            "cert_not_after",
            "enrolled_at",
            "peer_addr",
            "metrics",
            "instances",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(v["status"], "connected");
        assert_eq!(v["labels"]["env"], "prod");
        assert_eq!(v["last_seen"], "2026-09-21T14:13:17Z");
        assert_eq!(v["last_seen_ms"], NOW - 3_000);
        assert_eq!(v["cert_not_after"], "2026-09-22T10:13:20Z");
        assert_eq!(v["metrics"]["cpu_count"], 4);
        assert_eq!(v["metrics"]["mem_total_bytes"], 8 * GIB);
        assert_eq!(v["metrics"]["disks"][1]["mount"], "/var");
        let inst = &v["instances"][0];
        let mut inst_keys: Vec<&str> = inst
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        inst_keys.sort_unstable();
        let mut expected = vec![
            "id",
            "name",
            "service",
            "runtime",
            "state",
            "restarts",
            "pid",
            "health",
            "last_check_latency_ms",
            "consecutive_successes",
            "consecutive_failures",
            "last_check_error",
            "release",
            "drained",
            "drain",
        ];
        expected.sort_unstable();
        assert_eq!(inst_keys, expected);
        assert_eq!(inst["state"], "running");
        assert_eq!(inst["health"], "healthy");
        assert_eq!(
            inst["release"],
            serde_json::json!({"version": "", "digest": ""})
        );
        assert_eq!(inst["drain"], "haproxy");
        assert_eq!(v["instances"][1]["state"], "crashed");
        assert_eq!(v["instances"][1]["health"], "unhealthy");

        let bare = serde_json::to_value(HostJson::from(&bare_host("h3"))).expect("json");
        assert_eq!(bare["status"], "enrolled");
        assert!(bare["metrics"].is_null());
        assert!(bare["last_seen"].is_null());
        assert_eq!(bare["instances"], serde_json::json!([]));
    }

    #[test]
    fn enum_strings_cover_every_value() {
        let statuses: Vec<_> = [
            HostStatus::Enrolled,
            HostStatus::Connected,
            HostStatus::Lost,
            HostStatus::Revoked,
        ]
        .map(status_str)
        .into();
        assert_eq!(statuses, ["enrolled", "connected", "lost", "revoked"]);
        let states: Vec<_> = [
            RuntimeState::Running,
            RuntimeState::Stopped,
            RuntimeState::Crashed,
            RuntimeState::Starting,
            RuntimeState::Stopping,
            RuntimeState::NotDeployed,
            RuntimeState::Unspecified,
        ]
        .map(state_str)
        .into();
        assert_eq!(
            states,
            [
                "running",
                "stopped",
                "crashed",
                "starting",
                "stopping",
                "not_deployed",
                "unknown"
            ]
        );
        let drains: Vec<_> = [
            DrainMethod::None,
            DrainMethod::Haproxy,
            DrainMethod::Exec,
            DrainMethod::Unspecified,
        ]
        .map(drain_str)
        .into();
        assert_eq!(drains, ["none", "haproxy", "exec", "unknown"]);
        let health: Vec<_> = [
            HealthState::Unknown,
            HealthState::Healthy,
            HealthState::Unhealthy,
            HealthState::None,
        ]
        .map(health_str)
        .into();
        assert_eq!(health, ["unknown", "healthy", "unhealthy", "none"]);
    }
}
