//! Hosts (`drover agents`, `drover agent show`) and the words for their
//! enums.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ReleaseJson, known, non_empty, rfc3339_ms};
use crate::v1::{
    AppMetrics, DiskUsage, DrainMethod, HealthState, HistogramBucket, Host, HostMetrics,
    HostStatus, InstanceStatus, LoadBalancerState, LoadBalancerView, RuntimeState, TrafficCounters,
};

impl HostStatus {
    /// The word in JSON and tables; `unknown` for `Unspecified`.
    pub fn as_text(self) -> &'static str {
        match self {
            HostStatus::Enrolled => "enrolled",
            HostStatus::Connected => "connected",
            HostStatus::Lost => "lost",
            HostStatus::Revoked => "revoked",
            HostStatus::Unspecified => "unknown",
        }
    }
}

impl RuntimeState {
    /// The word in JSON (`not_deployed`); `unknown` for `Unspecified`.
    pub fn as_text(self) -> &'static str {
        match self {
            RuntimeState::Running => "running",
            RuntimeState::Stopped => "stopped",
            RuntimeState::Crashed => "crashed",
            RuntimeState::Starting => "starting",
            RuntimeState::Stopping => "stopping",
            RuntimeState::NotDeployed => "not_deployed",
            RuntimeState::Unspecified => "unknown",
        }
    }
}

impl DrainMethod {
    /// The word in JSON and tables; `unknown` from an agent older than the
    /// field.
    pub fn as_text(self) -> &'static str {
        match self {
            DrainMethod::None => "none",
            DrainMethod::Haproxy => "haproxy",
            DrainMethod::Exec => "exec",
            DrainMethod::Unspecified => "unknown",
        }
    }
}

impl HealthState {
    /// The word in JSON and tables; `Unspecified` reads as `unknown`.
    pub fn as_text(self) -> &'static str {
        match self {
            HealthState::Unknown | HealthState::Unspecified => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::None => "none",
        }
    }
}

impl LoadBalancerState {
    /// The word in JSON; `Unspecified` reads as `unknown`.
    pub fn as_text(self) -> &'static str {
        match self {
            LoadBalancerState::Unknown | LoadBalancerState::Unspecified => "unknown",
            LoadBalancerState::Up => "up",
            LoadBalancerState::Down => "down",
            LoadBalancerState::Drain => "drain",
            LoadBalancerState::Maint => "maint",
            LoadBalancerState::Nolb => "nolb",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub instances: Vec<InstanceStatusJson>,
}

impl From<&Host> for HostJson {
    fn from(h: &Host) -> Self {
        let Host {
            host_id,
            status,
            labels,
            agent_version,
            last_seen_ms,
            metrics,
            instances,
            cert_serial,
            cert_not_after_ms,
            enrolled_at_ms,
            peer_addr,
            status_reason,
        } = h;
        HostJson {
            host_id: host_id.clone(),
            status: known::<HostStatus>(*status).as_text(),
            status_reason: status_reason.clone(),
            labels: (labels.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent_version: agent_version.clone(),
            last_seen: rfc3339_ms(*last_seen_ms),
            last_seen_ms: *last_seen_ms,
            cert_serial: cert_serial.clone(),
            cert_not_after: rfc3339_ms(*cert_not_after_ms),
            enrolled_at: rfc3339_ms(*enrolled_at_ms),
            peer_addr: peer_addr.clone(),
            metrics: metrics.as_ref().map(MetricsJson::from),
            instances: instances.iter().map(InstanceStatusJson::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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

impl From<&HostMetrics> for MetricsJson {
    fn from(m: &HostMetrics) -> Self {
        let HostMetrics {
            cpu_percent,
            load1,
            load5,
            load15,
            mem_total_bytes,
            mem_used_bytes,
            swap_total_bytes,
            swap_used_bytes,
            disks,
            uptime_secs,
            cpu_count,
        } = m;
        MetricsJson {
            cpu_percent: *cpu_percent,
            cpu_count: *cpu_count,
            load1: *load1,
            load5: *load5,
            load15: *load15,
            mem_total_bytes: *mem_total_bytes,
            mem_used_bytes: *mem_used_bytes,
            swap_total_bytes: *swap_total_bytes,
            swap_used_bytes: *swap_used_bytes,
            uptime_secs: *uptime_secs,
            disks: disks.iter().map(DiskJson::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskJson {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

impl From<&DiskUsage> for DiskJson {
    fn from(d: &DiskUsage) -> Self {
        let DiskUsage {
            mount,
            total_bytes,
            used_bytes,
        } = d;
        DiskJson {
            mount: mount.clone(),
            total_bytes: *total_bytes,
            used_bytes: *used_bytes,
        }
    }
}

/// One instance on a host, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStatusJson {
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
    /// What each load balancer the instance is registered with says of it.
    pub load_balancers: Vec<LoadBalancerJson>,
    /// Blue-green: `blue` or `green`; null when the instance has none.
    pub color: Option<String>,
    /// The weight drover holds on it in its load balancers (canary,
    /// blue-green); null when none is held (the configured weight).
    pub weight_held: Option<u32>,
    /// Times the agent set the held weight again after a load balancer
    /// lost it (an HAProxy reload).
    pub weight_reasserted: u32,
    /// From the instance's own `/metrics`; null when the agent does not
    /// scrape them.
    pub app_metrics: Option<AppMetricsJson>,
}

/// An instance's own request counter and latency histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppMetricsJson {
    pub read_at: Option<String>,
    pub read_at_ms: i64,
    /// Why the scrape failed; null when it worked.
    pub error: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Cumulative, `le` in seconds (`"+Inf"` for the last).
    pub latency_buckets: Vec<BucketJson>,
    pub latency_sum: f64,
    pub latency_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketJson {
    /// A number, or `"+Inf"`.
    pub le: serde_json::Value,
    pub count: u64,
}

impl From<&AppMetrics> for AppMetricsJson {
    fn from(m: &AppMetrics) -> Self {
        let AppMetrics {
            read_at_ms,
            error,
            requests,
            errors,
            latency_buckets,
            latency_sum,
            latency_count,
        } = m;
        AppMetricsJson {
            read_at: rfc3339_ms(*read_at_ms),
            read_at_ms: *read_at_ms,
            error: non_empty(error),
            requests: *requests,
            errors: *errors,
            latency_buckets: (latency_buckets.iter())
                .map(|b| {
                    let HistogramBucket { le, count } = b;
                    BucketJson {
                        le: serde_json::Number::from_f64(*le)
                            .map_or_else(|| "+Inf".into(), serde_json::Value::Number),
                        count: *count,
                    }
                })
                .collect(),
            latency_sum: if latency_sum.is_finite() {
                *latency_sum
            } else {
                0.0
            },
            latency_count: *latency_count,
        }
    }
}

impl From<&InstanceStatus> for InstanceStatusJson {
    fn from(i: &InstanceStatus) -> Self {
        let InstanceStatus {
            id,
            name,
            service,
            runtime,
            state,
            restarts,
            pid,
            health,
            last_check_latency_ms,
            consecutive_successes,
            consecutive_failures,
            last_check_error,
            release,
            drained,
            drain,
            load_balancers,
            color,
            app_metrics,
            weight_set,
            weight_held,
            weight_reasserted,
        } = i;
        InstanceStatusJson {
            id: id.clone(),
            name: name.clone(),
            service: service.clone(),
            runtime: runtime.clone(),
            state: known::<RuntimeState>(*state).as_text(),
            restarts: *restarts,
            pid: *pid,
            health: known::<HealthState>(*health).as_text(),
            last_check_latency_ms: *last_check_latency_ms,
            consecutive_successes: *consecutive_successes,
            consecutive_failures: *consecutive_failures,
            last_check_error: last_check_error.clone(),
            release: ReleaseJson::of(release.as_ref()),
            drained: *drained,
            drain: known::<DrainMethod>(*drain).as_text(),
            load_balancers: load_balancers.iter().map(LoadBalancerJson::from).collect(),
            color: non_empty(color),
            weight_held: weight_held.then_some(*weight_set),
            weight_reasserted: *weight_reasserted,
            app_metrics: app_metrics.as_ref().map(AppMetricsJson::from),
        }
    }
}

/// One load balancer's view of an instance, as its agent read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadBalancerJson {
    pub balancer: String,
    pub backend: String,
    pub server: String,
    /// up | down | drain | maint | nolb | unknown
    pub state: &'static str,
    /// The load balancer's own words (`DOWN 1/3`), or why nothing was read.
    pub status: String,
    pub weight: u32,
    /// On the agent's clock.
    pub read_at: Option<String>,
    pub read_at_ms: i64,
    /// The weight the server was configured with; 0 when unknown.
    pub configured_weight: u32,
    /// The backend's balance algorithm (`roundrobin`, `static-rr`, ...);
    /// null when it could not be read.
    pub algorithm: Option<String>,
    /// Whether HAProxy applies weight changes at run time with it.
    pub algorithm_dynamic: bool,
    /// HAProxy's counters for the server, cumulative; null when unknown.
    pub counters: Option<TrafficCountersJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficCountersJson {
    pub requests: u64,
    pub responses_5xx: u64,
    pub response_errors: u64,
    pub connection_errors: u64,
    pub responses: u64,
    pub response_time_ms: u32,
}

impl From<&TrafficCounters> for TrafficCountersJson {
    fn from(c: &TrafficCounters) -> Self {
        let TrafficCounters {
            requests,
            responses_5xx,
            response_errors,
            connection_errors,
            responses,
            response_time_ms,
        } = c;
        TrafficCountersJson {
            requests: *requests,
            responses_5xx: *responses_5xx,
            response_errors: *response_errors,
            connection_errors: *connection_errors,
            responses: *responses,
            response_time_ms: *response_time_ms,
        }
    }
}

impl From<&LoadBalancerView> for LoadBalancerJson {
    fn from(v: &LoadBalancerView) -> Self {
        let LoadBalancerView {
            balancer,
            backend,
            server,
            state,
            status,
            weight,
            read_at_ms,
            counters,
            configured_weight,
            algorithm,
            algorithm_dynamic,
        } = v;
        LoadBalancerJson {
            balancer: balancer.clone(),
            backend: backend.clone(),
            server: server.clone(),
            state: known::<LoadBalancerState>(*state).as_text(),
            status: status.clone(),
            weight: *weight,
            read_at: rfc3339_ms(*read_at_ms),
            read_at_ms: *read_at_ms,
            configured_weight: *configured_weight,
            algorithm: non_empty(algorithm),
            algorithm_dynamic: *algorithm_dynamic,
            counters: counters.as_ref().map(TrafficCountersJson::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::testing::{NOW, to_value};
    use serde_json::json;

    #[test]
    fn a_host_with_a_load_balancer_view_serialises_whole() {
        let h = Host {
            host_id: "h1".into(),
            status: HostStatus::Connected as i32,
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("env".into(), "prod".into()),
            ]
            .into_iter()
            .collect(),
            agent_version: "0.1.0".into(),
            last_seen_ms: NOW,
            metrics: Some(HostMetrics {
                cpu_percent: 12.5,
                cpu_count: 2,
                load1: 0.5,
                load5: 0.25,
                load15: 0.125,
                mem_total_bytes: 2048,
                mem_used_bytes: 1024,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
                disks: vec![DiskUsage {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 40,
                }],
                uptime_secs: 60,
            }),
            instances: vec![InstanceStatus {
                id: "web@h1".into(),
                name: "web".into(),
                service: "web".into(),
                runtime: "process".into(),
                state: RuntimeState::Running as i32,
                restarts: 0,
                pid: 42,
                health: HealthState::Healthy as i32,
                last_check_latency_ms: 2,
                consecutive_successes: 3,
                consecutive_failures: 0,
                last_check_error: String::new(),
                release: None,
                drained: false,
                drain: DrainMethod::Haproxy as i32,
                load_balancers: vec![LoadBalancerView {
                    balancer: "/run/haproxy.sock".into(),
                    backend: "web".into(),
                    server: "h1".into(),
                    state: LoadBalancerState::Down as i32,
                    status: "DOWN 1/3".into(),
                    weight: 1,
                    read_at_ms: NOW,
                    counters: Some(TrafficCounters {
                        requests: 100,
                        responses_5xx: 2,
                        response_errors: 1,
                        connection_errors: 0,
                        responses: 100,
                        response_time_ms: 12,
                    }),
                    configured_weight: 1,
                    algorithm: "roundrobin".into(),
                    algorithm_dynamic: true,
                }],
                color: "blue".into(),
                app_metrics: Some(AppMetrics {
                    read_at_ms: NOW,
                    error: String::new(),
                    requests: 90,
                    errors: 2,
                    latency_buckets: vec![
                        HistogramBucket {
                            le: 0.005,
                            count: 50,
                        },
                        HistogramBucket {
                            le: f64::INFINITY,
                            count: 90,
                        },
                    ],
                    latency_sum: 1.5,
                    latency_count: 90,
                }),
                weight_set: 16,
                weight_held: true,
                weight_reasserted: 1,
            }],
            cert_serial: "4a01".into(),
            cert_not_after_ms: 0,
            enrolled_at_ms: NOW,
            peer_addr: "127.0.0.1:5555".into(),
            status_reason: String::new(),
        };
        let instance = json!({
            "id": "web@h1", "name": "web", "service": "web", "runtime": "process",
            "state": "running", "restarts": 0, "pid": 42, "health": "healthy",
            "last_check_latency_ms": 2, "consecutive_successes": 3,
            "consecutive_failures": 0, "last_check_error": "",
            "release": {"version": "", "digest": ""},
            "drained": false, "drain": "haproxy",
            "load_balancers": [{
                "balancer": "/run/haproxy.sock", "backend": "web", "server": "h1",
                "state": "down", "status": "DOWN 1/3", "weight": 1,
                "read_at": "2026-09-21T14:13:20Z", "read_at_ms": NOW,
                "configured_weight": 1, "algorithm": "roundrobin",
                "algorithm_dynamic": true,
                "counters": {
                    "requests": 100, "responses_5xx": 2, "response_errors": 1,
                    "connection_errors": 0, "responses": 100, "response_time_ms": 12,
                },
            }],
            "color": "blue",
            "weight_held": 16,
            "weight_reasserted": 1,
            "app_metrics": {
                "read_at": "2026-09-21T14:13:20Z", "read_at_ms": NOW, "error": null,
                "requests": 90, "errors": 2,
                "latency_buckets": [{"le": 0.005, "count": 50}, {"le": "+Inf", "count": 90}],
                "latency_sum": 1.5, "latency_count": 90,
            },
        });
        assert_eq!(
            to_value(&HostJson::from(&h)),
            json!({
                "host_id": "h1",
                "status": "connected",
                "status_reason": "",
                "labels": {"env": "prod", "zone": "a"},
                "agent_version": "0.1.0",
                "last_seen": "2026-09-21T14:13:20Z",
                "last_seen_ms": NOW,
                "cert_serial": "4a01",
                "cert_not_after": null,
                "enrolled_at": "2026-09-21T14:13:20Z",
                "peer_addr": "127.0.0.1:5555",
                "metrics": {
                    "cpu_percent": 12.5, "cpu_count": 2,
                    "load1": 0.5, "load5": 0.25, "load15": 0.125,
                    "mem_total_bytes": 2048, "mem_used_bytes": 1024,
                    "swap_total_bytes": 0, "swap_used_bytes": 0,
                    "uptime_secs": 60,
                    "disks": [{"mount": "/", "total_bytes": 100, "used_bytes": 40}],
                },
                "instances": [instance],
            })
        );
    }

    #[test]
    fn enum_words_cover_every_value() {
        let statuses = [
            HostStatus::Enrolled,
            HostStatus::Connected,
            HostStatus::Lost,
            HostStatus::Revoked,
            HostStatus::Unspecified,
        ]
        .map(HostStatus::as_text);
        assert_eq!(
            statuses,
            ["enrolled", "connected", "lost", "revoked", "unknown"]
        );
        let states = [
            RuntimeState::Running,
            RuntimeState::Stopped,
            RuntimeState::Crashed,
            RuntimeState::Starting,
            RuntimeState::Stopping,
            RuntimeState::NotDeployed,
            RuntimeState::Unspecified,
        ]
        .map(RuntimeState::as_text);
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
        let drains = [
            DrainMethod::None,
            DrainMethod::Haproxy,
            DrainMethod::Exec,
            DrainMethod::Unspecified,
        ]
        .map(DrainMethod::as_text);
        assert_eq!(drains, ["none", "haproxy", "exec", "unknown"]);
        let health = [
            HealthState::Unknown,
            HealthState::Healthy,
            HealthState::Unhealthy,
            HealthState::None,
            HealthState::Unspecified,
        ]
        .map(HealthState::as_text);
        assert_eq!(
            health,
            ["unknown", "healthy", "unhealthy", "none", "unknown"]
        );
        let lb = [
            LoadBalancerState::Up,
            LoadBalancerState::Down,
            LoadBalancerState::Drain,
            LoadBalancerState::Maint,
            LoadBalancerState::Nolb,
            LoadBalancerState::Unknown,
            LoadBalancerState::Unspecified,
        ]
        .map(LoadBalancerState::as_text);
        assert_eq!(
            lb,
            ["up", "down", "drain", "maint", "nolb", "unknown", "unknown"]
        );
        // A state from a newer agent that this build does not know.
        let i = InstanceStatus {
            state: 99,
            health: 99,
            drain: 99,
            ..InstanceStatus::default()
        };
        let v = to_value(&InstanceStatusJson::from(&i));
        assert_eq!(
            (&v["state"], &v["health"], &v["drain"]),
            (&json!("unknown"), &json!("unknown"), &json!("unknown"))
        );
    }
}
