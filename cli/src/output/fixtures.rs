//! Hosts as a coordinator would send them, for the output tests.

use drover_proto::v1::{
    DiskUsage, DrainMethod, HealthState, Host, HostMetrics, HostStatus, InstanceStatus, Release,
    RuntimeState,
};

pub const NOW: i64 = 1_790_000_000_000;
pub const GIB: u64 = 1024 * 1024 * 1024;

pub fn instance(id: &str, state: RuntimeState, health: HealthState) -> InstanceStatus {
    let name = id.split('@').next().unwrap_or(id).to_string();
    InstanceStatus {
        id: id.into(),
        name: name.clone(),
        service: name,
        runtime: "process".into(),
        state: state as i32,
        restarts: 1,
        pid: 4242,
        health: health as i32,
        last_check_latency_ms: 2,
        consecutive_successes: 5,
        consecutive_failures: 0,
        last_check_error: String::new(),
        release: Some(Release {
            version: "v1.2.3".into(),
            digest: "ab".repeat(32),
        }),
        drained: false,
        load_balancers: Vec::new(),
        drain: DrainMethod::Haproxy as i32,
        ..InstanceStatus::default()
    }
}

pub fn host(id: &str) -> Host {
    Host {
        host_id: id.into(),
        status: HostStatus::Connected as i32,
        labels: [
            ("zone".to_string(), "a".to_string()),
            ("env".into(), "prod".into()),
        ]
        .into_iter()
        .collect(),
        agent_version: "0.1.0".into(),
        last_seen_ms: NOW - 3_000,
        metrics: Some(HostMetrics {
            cpu_percent: 12.345,
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            mem_total_bytes: 8 * GIB,
            mem_used_bytes: 3 * GIB,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disks: vec![
                DiskUsage {
                    mount: "/".into(),
                    total_bytes: 100 * GIB,
                    used_bytes: 40 * GIB,
                },
                DiskUsage {
                    mount: "/var".into(),
                    total_bytes: 10 * GIB,
                    used_bytes: 9 * GIB,
                },
            ],
            uptime_secs: 3 * 86400 + 5 * 3600,
            cpu_count: 4,
        }),
        instances: vec![
            instance("web@h1", RuntimeState::Running, HealthState::Healthy),
            instance("api@h1", RuntimeState::Crashed, HealthState::Unhealthy),
        ],
        cert_serial: "4a01".into(),
        cert_not_after_ms: NOW + 20 * 3_600_000,
        enrolled_at_ms: NOW - 2 * 86_400_000,
        peer_addr: "127.0.0.1:5555".into(),
        status_reason: String::new(),
    }
}

pub fn bare_host(id: &str) -> Host {
    Host {
        host_id: id.into(),
        status: HostStatus::Enrolled as i32,
        ..Host::default()
    }
}
