//! The contract's JSON: what `drover ... -o json` prints, and what the
//! coordinator can serve as is (a web view), built from the wire types.
//!
//! Every view is made by destructuring its message with every field named
//! and no `..`, so a field added to a `.proto` file does not compile here
//! until someone decides how it shows in JSON; a field left out is bound to
//! `_` with the reason next to it.
//!
//! The shape scripts rely on: an empty string that means "none" and a
//! release of unknown version are `null`; times are RFC 3339 UTC with second
//! precision next to the raw unix milliseconds; enums are snake_case words
//! (`rolling_back`, `not_deployed`); a typed reason is an object whose `kind`
//! says which fields it has.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::v1::{
    DiskUsage, DrainMethod, HealthState, Host, HostMetrics, HostStatus, InstanceStatus,
    LoadBalancerState, LoadBalancerView, PlannedBatch, PlannedSkip, PlannedWave, Release, Rollout,
    RolloutCounts, RolloutEvent, RolloutInstance, RolloutPlan, RolloutStop, RolloutWait,
    RuntimeState, rollout_stop, rollout_wait,
};

/// RFC 3339 UTC with second precision (`2026-11-26T06:00:00Z`); `None` for
/// 0 or negative, which the wire uses for "never".
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    (ms > 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
    })
}

/// `None` for the wire's empty string.
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// An enum field as its type; a number this build does not know (from a
/// newer peer) reads as the type's default, `UNSPECIFIED`.
fn known<T: TryFrom<i32> + Default>(raw: i32) -> T {
    T::try_from(raw).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Enum words

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

// ---------------------------------------------------------------------------
// Rollouts

/// `{"version","digest"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseJson {
    pub version: String,
    pub digest: String,
}

impl ReleaseJson {
    /// Empty strings when there is no release.
    pub fn of(r: Option<&Release>) -> ReleaseJson {
        match r {
            Some(Release { version, digest }) => ReleaseJson {
                version: version.clone(),
                digest: digest.clone(),
            },
            None => ReleaseJson {
                version: String::new(),
                digest: String::new(),
            },
        }
    }

    /// `None` when there is no release or it has no version (the wire's
    /// "unknown").
    pub fn known(r: Option<&Release>) -> Option<ReleaseJson> {
        r.filter(|r| !r.version.is_empty())
            .map(|r| ReleaseJson::of(Some(r)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountsJson {
    pub total: u32,
    pub pending: u32,
    pub in_progress: u32,
    pub done: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unreachable: u32,
    pub rolled_back: u32,
}

impl From<&RolloutCounts> for CountsJson {
    fn from(c: &RolloutCounts) -> Self {
        let RolloutCounts {
            total,
            pending,
            in_progress,
            done,
            failed,
            skipped,
            unreachable,
            rolled_back,
        } = *c;
        CountsJson {
            total,
            pending,
            in_progress,
            done,
            failed,
            skipped,
            unreachable,
            rolled_back,
        }
    }
}

/// One instance of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutInstanceJson {
    pub id: String,
    pub host: String,
    pub step: String,
    pub direction: String,
    pub batch: Option<u32>,
    pub release: Option<ReleaseJson>,
    pub previous: Option<ReleaseJson>,
    pub available: bool,
    pub reachable: bool,
    pub error: Option<String>,
    pub note: Option<String>,
    pub progress: Option<String>,
}

impl From<&RolloutInstance> for RolloutInstanceJson {
    fn from(i: &RolloutInstance) -> Self {
        let RolloutInstance {
            id,
            host,
            // Read with the deprecated texts (an older coordinator fills
            // only those) by `step_kind` and `direction_kind` below.
            step: _,
            direction: _,
            step_text: _,
            direction_text: _,
            batch,
            release,
            previous,
            available,
            reachable,
            error,
            note,
            progress,
        } = i;
        RolloutInstanceJson {
            id: id.clone(),
            host: host.clone(),
            step: i.step_kind().as_text().to_string(),
            direction: i.direction_kind().as_text().to_string(),
            batch: (*batch > 0).then_some(*batch),
            release: ReleaseJson::known(release.as_ref()),
            previous: ReleaseJson::known(previous.as_ref()),
            available: *available,
            reachable: *reachable,
            error: non_empty(error),
            note: non_empty(note),
            progress: non_empty(progress),
        }
    }
}

/// One event of a rollout's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventJson {
    pub at: Option<String>,
    pub at_ms: i64,
    pub instance: Option<String>,
    pub step: Option<String>,
    pub capacity: u32,
    pub floor: u32,
    pub message: String,
}

impl From<&RolloutEvent> for EventJson {
    fn from(e: &RolloutEvent) -> Self {
        let RolloutEvent {
            at_ms,
            instance,
            // Read with the deprecated text by `step_kind` below.
            step: _,
            step_text: _,
            capacity,
            floor,
            message,
        } = e;
        EventJson {
            at: rfc3339_ms(*at_ms),
            at_ms: *at_ms,
            instance: non_empty(instance),
            step: non_empty(e.step_kind().as_text()),
            capacity: *capacity,
            floor: *floor,
            message: message.clone(),
        }
    }
}

/// Why a rollout waits (`RolloutWait`): `kind` is the enum's name in
/// snake_case, with only the fields that kind uses. `other`: only the
/// rollout's `wait_reason` text says why (stored by an older coordinator,
/// sent by one that does not type it yet, or a kind this build does not
/// know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitJson {
    /// Another instance down would put capacity under the floor.
    Floor {
        capacity: u32,
        floor: u32,
    },
    /// Drover already works on `max` (max_unavailable) instances.
    MaxUnavailable {
        in_progress: u32,
        max: u32,
    },
    /// The next instance's spread group `label=value` is at its limit.
    Spread {
        label: String,
        value: String,
        down: u32,
        max: u32,
    },
    Paused,
    /// Reports awaited after a restart or reconnect.
    HealthReports {
        instances: u32,
    },
    /// What could start next is on these lost hosts.
    LostHosts {
        hosts: Vec<String>,
    },
    /// Stopping; in-flight instances finish first.
    Stopping {
        instances: u32,
    },
    Other,
}

impl From<&RolloutWait> for WaitJson {
    fn from(w: &RolloutWait) -> Self {
        use rollout_wait::Kind;
        let RolloutWait {
            kind,
            capacity,
            floor,
            in_progress,
            max,
            label,
            value,
            down,
            instances,
            hosts,
        } = w;
        let (capacity, floor, in_progress, max, down, instances) =
            (*capacity, *floor, *in_progress, *max, *down, *instances);
        match known(*kind) {
            Kind::Floor => WaitJson::Floor { capacity, floor },
            Kind::MaxUnavailable => WaitJson::MaxUnavailable { in_progress, max },
            Kind::Spread => WaitJson::Spread {
                label: label.clone(),
                value: value.clone(),
                down,
                max,
            },
            Kind::Paused => WaitJson::Paused,
            Kind::HealthReports => WaitJson::HealthReports { instances },
            Kind::LostHosts => WaitJson::LostHosts {
                hosts: hosts.clone(),
            },
            Kind::Stopping => WaitJson::Stopping { instances },
            Kind::Other | Kind::Unspecified => WaitJson::Other,
        }
    }
}

/// Why a rollout stopped going forward or ended other than succeeded
/// (`RolloutStop`): `kind` with the fields it uses, plus `unfinished` and
/// `problems` when the restore that followed ended incomplete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopJson {
    #[serde(flatten)]
    pub why: StopKindJson,
    /// What the restore could not finish; absent when it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<UnfinishedJson>,
    /// The instances the restore left, as `id: why`; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `RolloutStop.Kind` in snake_case, with the fields it uses. `other`: only
/// the rollout's `reason` text says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopKindJson {
    /// More failed than max_failures (`max`); `instances` as `id: what happened`.
    FailureBudget {
        count: u32,
        max: u32,
        instances: Vec<String>,
    },
    /// More on lost hosts than max_unreachable.
    UnreachableBudget {
        count: u32,
        max: u32,
        instances: Vec<String>,
    },
    /// Nothing progressed for `after_ms`, waiting for `waiting` (`null`:
    /// for instances in progress).
    ProgressDeadline {
        after_ms: u64,
        waiting: Option<WaitJson>,
    },
    OperatorAbort,
    OperatorRollback,
    /// Every instance finished, some failed within the budget.
    FailedWithinBudget {
        instances: Vec<String>,
    },
    /// The coordinator could not store the rollout's state.
    Halted,
    Other,
}

/// `RolloutStop.Unfinished` in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnfinishedJson {
    Rollback,
    Abort,
    HostLost,
}

impl From<&RolloutStop> for StopJson {
    fn from(s: &RolloutStop) -> Self {
        use rollout_stop::{Kind, Unfinished};
        let RolloutStop {
            kind,
            count,
            max,
            instances,
            after_ms,
            waiting,
            unfinished,
            problems,
        } = s;
        let (count, max) = (*count, *max);
        let why = match known(*kind) {
            Kind::FailureBudget => StopKindJson::FailureBudget {
                count,
                max,
                instances: instances.clone(),
            },
            Kind::UnreachableBudget => StopKindJson::UnreachableBudget {
                count,
                max,
                instances: instances.clone(),
            },
            Kind::ProgressDeadline => StopKindJson::ProgressDeadline {
                after_ms: *after_ms,
                waiting: waiting.as_ref().map(WaitJson::from),
            },
            Kind::OperatorAbort => StopKindJson::OperatorAbort,
            Kind::OperatorRollback => StopKindJson::OperatorRollback,
            Kind::FailedWithinBudget => StopKindJson::FailedWithinBudget {
                instances: instances.clone(),
            },
            Kind::Halted => StopKindJson::Halted,
            Kind::Other | Kind::Unspecified => StopKindJson::Other,
        };
        StopJson {
            why,
            unfinished: match known(*unfinished) {
                Unfinished::Unspecified => None,
                Unfinished::Rollback => Some(UnfinishedJson::Rollback),
                Unfinished::Abort => Some(UnfinishedJson::Abort),
                Unfinished::HostLost => Some(UnfinishedJson::HostLost),
            },
            problems: problems.clone(),
        }
    }
}

/// A rollout, as `rollout status|list|watch|start|<action>` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutJson {
    pub id: String,
    pub service: String,
    pub selector: String,
    pub target: ReleaseJson,
    pub phase: String,
    pub reason: Option<String>,
    /// `reason`, typed; `null` exactly when `reason` is.
    pub stop: Option<StopJson>,
    pub batch: u32,
    pub counts: CountsJson,
    pub capacity: u32,
    pub floor: u32,
    pub lowest_capacity: u32,
    pub wait_reason: Option<String>,
    /// `wait_reason`, typed; `null` exactly when `wait_reason` is.
    pub wait: Option<WaitJson>,
    pub started_at: Option<String>,
    pub started_at_ms: i64,
    pub finished_at: Option<String>,
    pub finished_at_ms: Option<i64>,
    pub started_by: String,
    pub instances: Vec<RolloutInstanceJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventJson>,
}

impl From<&Rollout> for RolloutJson {
    fn from(r: &Rollout) -> Self {
        let Rollout {
            id,
            service,
            selector,
            target,
            // Read with the deprecated text by `phase_kind` below.
            phase: _,
            phase_text: _,
            reason,
            batch,
            counts,
            capacity,
            floor,
            lowest_capacity,
            wait_reason,
            started_at_ms,
            finished_at_ms,
            instances,
            events,
            // Not shown: the spec is what `start` was given, and the text
            // view does not print it either.
            spec_toml: _,
            started_by,
            wait,
            stop,
        } = r;
        let reason = non_empty(reason);
        let wait_reason = non_empty(wait_reason);
        RolloutJson {
            id: id.clone(),
            service: service.clone(),
            selector: selector.clone(),
            target: ReleaseJson::of(target.as_ref()),
            phase: r.phase_kind().as_text().to_string(),
            // A coordinator older than the typed field sends the text only.
            stop: match stop {
                Some(s) => Some(StopJson::from(s)),
                None => reason.as_ref().map(|_| StopJson {
                    why: StopKindJson::Other,
                    unfinished: None,
                    problems: Vec::new(),
                }),
            },
            reason,
            batch: *batch,
            counts: CountsJson::from(&counts.unwrap_or_default()),
            capacity: *capacity,
            floor: *floor,
            lowest_capacity: *lowest_capacity,
            wait: match wait {
                Some(w) => Some(WaitJson::from(w)),
                None => wait_reason.as_ref().map(|_| WaitJson::Other),
            },
            wait_reason,
            started_at: rfc3339_ms(*started_at_ms),
            started_at_ms: *started_at_ms,
            finished_at: rfc3339_ms(*finished_at_ms),
            finished_at_ms: (*finished_at_ms > 0).then_some(*finished_at_ms),
            started_by: started_by.clone(),
            instances: instances.iter().map(RolloutInstanceJson::from).collect(),
            events: events.iter().map(EventJson::from).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Plans (`rollout start --dry-run`)

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkipJson {
    pub instance: String,
    pub reason: String,
}

impl From<&PlannedSkip> for SkipJson {
    fn from(s: &PlannedSkip) -> Self {
        let PlannedSkip { instance, reason } = s;
        SkipJson {
            instance: instance.clone(),
            reason: reason.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchJson {
    pub number: u32,
    pub instances: Vec<String>,
    pub waves: Vec<Vec<String>>,
    pub max_down: u32,
    pub lowest_capacity: u32,
}

impl From<&PlannedBatch> for BatchJson {
    fn from(b: &PlannedBatch) -> Self {
        let PlannedBatch {
            number,
            instances,
            waves,
            max_down,
            lowest_capacity,
        } = b;
        BatchJson {
            number: *number,
            instances: instances.clone(),
            // An empty wave says nothing; the planner may leave one at the end.
            waves: (waves.iter())
                .map(|PlannedWave { instances }| instances)
                .filter(|w| !w.is_empty())
                .cloned()
                .collect(),
            max_down: *max_down,
            lowest_capacity: *lowest_capacity,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanJson {
    pub service: String,
    pub target: ReleaseJson,
    pub total: u32,
    pub floor: u32,
    pub capacity: u32,
    pub skipped: Vec<SkipJson>,
    pub batches: Vec<BatchJson>,
    pub lowest_capacity: u32,
    pub stalls: Option<String>,
}

impl From<&RolloutPlan> for PlanJson {
    fn from(p: &RolloutPlan) -> Self {
        let RolloutPlan {
            service,
            target,
            total,
            floor,
            capacity,
            skipped,
            batches,
            lowest_capacity,
            stalls,
            // Not shown: the spec is what `--dry-run` was given, and the
            // text view does not print it either.
            spec_toml: _,
        } = p;
        PlanJson {
            service: service.clone(),
            target: ReleaseJson::of(target.as_ref()),
            total: *total,
            floor: *floor,
            capacity: *capacity,
            skipped: skipped.iter().map(SkipJson::from).collect(),
            batches: batches.iter().map(BatchJson::from).collect(),
            lowest_capacity: *lowest_capacity,
            stalls: non_empty(stalls),
        }
    }
}

// ---------------------------------------------------------------------------
// Hosts (`agents`, `agent show`)

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Direction, InstanceStep, RolloutPhase};
    use serde_json::{Value, json};

    const NOW: i64 = 1_790_000_000_000;

    fn release(v: &str) -> Option<Release> {
        Some(Release {
            version: v.into(),
            digest: "ab".repeat(32),
        })
    }

    fn to_value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).expect("serialise")
    }

    /// The word the proto gives a kind: `KIND_LOST_HOSTS` -> `lost_hosts`.
    fn proto_word(name: &str) -> String {
        name.strip_prefix("KIND_").unwrap_or(name).to_lowercase()
    }

    fn floor_wait() -> RolloutWait {
        let mut w = RolloutWait {
            capacity: 3,
            floor: 4,
            ..RolloutWait::default()
        };
        w.set_kind(rollout_wait::Kind::Floor);
        w
    }

    /// A rollout that waited on the floor, then failed on its budget and
    /// could not roll everything back: every typed reason, every field.
    fn failed_rollout() -> Rollout {
        let mut stop = RolloutStop {
            count: 2,
            max: 1,
            instances: vec![
                "web@h1: verify: unhealthy".into(),
                "web@h2: start: exit 1".into(),
            ],
            problems: vec!["web@h2: host lost".into()],
            ..RolloutStop::default()
        };
        stop.set_kind(rollout_stop::Kind::FailureBudget);
        stop.set_unfinished(rollout_stop::Unfinished::Rollback);
        let mut r = Rollout {
            id: "web-3".into(),
            service: "web".into(),
            selector: "env=prod".into(),
            target: release("v2"),
            phase_text: "failed".into(),
            reason: "2 failed, max_failures 1 (web@h1, web@h2); rollback incomplete".into(),
            batch: 1,
            counts: Some(RolloutCounts {
                total: 5,
                pending: 3,
                failed: 2,
                ..RolloutCounts::default()
            }),
            capacity: 3,
            floor: 4,
            lowest_capacity: 3,
            wait_reason: "waiting: 3 healthy, floor 4".into(),
            started_at_ms: NOW - 60_000,
            finished_at_ms: NOW,
            instances: vec![RolloutInstance {
                id: "web@h1".into(),
                host: "h1".into(),
                step: InstanceStep::Failed as i32,
                direction: Direction::Forward as i32,
                batch: 1,
                release: release("v2"),
                previous: release("v1"),
                available: false,
                reachable: true,
                error: "verify: unhealthy".into(),
                ..RolloutInstance::default()
            }],
            events: vec![RolloutEvent {
                at_ms: NOW,
                instance: "web@h1".into(),
                step: InstanceStep::Failed as i32,
                step_text: "failed".into(),
                capacity: 3,
                floor: 4,
                message: "verify: unhealthy".into(),
            }],
            spec_toml: "service = \"web\"\n".into(),
            started_by: "operator/alice".into(),
            wait: Some(floor_wait()),
            stop: Some(stop),
            ..Rollout::default()
        };
        r.set_phase(RolloutPhase::Failed);
        r
    }

    #[test]
    fn a_failed_rollout_that_waited_on_the_floor_serialises_whole() {
        let v = to_value(&RolloutJson::from(&failed_rollout()));
        let digest = "ab".repeat(32);
        assert_eq!(
            v,
            json!({
                "id": "web-3",
                "service": "web",
                "selector": "env=prod",
                "target": {"version": "v2", "digest": digest},
                "phase": "failed",
                "reason": "2 failed, max_failures 1 (web@h1, web@h2); rollback incomplete",
                "stop": {
                    "kind": "failure_budget",
                    "count": 2,
                    "max": 1,
                    "instances": ["web@h1: verify: unhealthy", "web@h2: start: exit 1"],
                    "unfinished": "rollback",
                    "problems": ["web@h2: host lost"],
                },
                "batch": 1,
                "counts": {"total": 5, "pending": 3, "in_progress": 0, "done": 0,
                           "failed": 2, "skipped": 0, "unreachable": 0, "rolled_back": 0},
                "capacity": 3,
                "floor": 4,
                "lowest_capacity": 3,
                "wait_reason": "waiting: 3 healthy, floor 4",
                "wait": {"kind": "floor", "capacity": 3, "floor": 4},
                "started_at": "2026-09-21T14:12:20Z",
                "started_at_ms": NOW - 60_000,
                "finished_at": "2026-09-21T14:13:20Z",
                "finished_at_ms": NOW,
                "started_by": "operator/alice",
                "instances": [{
                    "id": "web@h1",
                    "host": "h1",
                    "step": "failed",
                    "direction": "forward",
                    "batch": 1,
                    "release": {"version": "v2", "digest": digest},
                    "previous": {"version": "v1", "digest": digest},
                    "available": false,
                    "reachable": true,
                    "error": "verify: unhealthy",
                    "note": null,
                    "progress": null,
                }],
                "events": [{
                    "at": "2026-09-21T14:13:20Z",
                    "at_ms": NOW,
                    "instance": "web@h1",
                    "step": "failed",
                    "capacity": 3,
                    "floor": 4,
                    "message": "verify: unhealthy",
                }],
            })
        );
    }

    /// The typed reasons sit next to their texts, so a reader of the
    /// pretty JSON finds `stop` under `reason` and `wait` under
    /// `wait_reason`.
    #[test]
    fn typed_reasons_follow_their_texts() {
        let text = serde_json::to_string(&RolloutJson::from(&failed_rollout())).expect("serialise");
        let at = |key: &str| {
            text.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {text}"))
        };
        assert!(at("reason") < at("stop") && at("stop") < at("batch"));
        assert!(at("wait_reason") < at("wait") && at("wait") < at("started_at"));
    }

    #[test]
    fn every_wait_kind_is_named_after_its_enum_and_carries_only_its_fields() {
        use rollout_wait::Kind;
        let expected: [(Kind, &[&str]); 8] = [
            (Kind::Floor, &["capacity", "floor"]),
            (Kind::MaxUnavailable, &["in_progress", "max"]),
            (Kind::Spread, &["label", "value", "down", "max"]),
            (Kind::Paused, &[]),
            (Kind::HealthReports, &["instances"]),
            (Kind::LostHosts, &["hosts"]),
            (Kind::Stopping, &["instances"]),
            (Kind::Other, &[]),
        ];
        // Every kind the proto has is listed above.
        let listed: Vec<i32> = expected.iter().map(|(k, _)| *k as i32).collect();
        for raw in 1..=20 {
            assert_eq!(
                Kind::try_from(raw).is_ok(),
                listed.contains(&raw),
                "wait kind {raw}"
            );
        }
        for (kind, fields) in expected {
            let w = RolloutWait {
                kind: kind as i32,
                capacity: 1,
                floor: 2,
                in_progress: 3,
                max: 4,
                label: "zone".into(),
                value: "a".into(),
                down: 5,
                instances: 6,
                hosts: vec!["h2".into()],
            };
            let v = to_value(&WaitJson::from(&w));
            assert_eq!(v["kind"], proto_word(kind.as_str_name()), "{v}");
            let mut keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.push("kind");
            want.sort_unstable();
            assert_eq!(keys, want, "{v}");
            let wire = json!({"capacity": 1, "floor": 2, "in_progress": 3, "max": 4,
                "label": "zone", "value": "a", "down": 5, "instances": 6, "hosts": ["h2"]});
            for f in fields {
                assert_eq!(v[f], wire[f], "{} carries {f}", kind.as_str_name());
            }
        }
        let v = to_value(&WaitJson::from(&RolloutWait {
            kind: Kind::LostHosts as i32,
            hosts: vec!["h2".into(), "h4".into()],
            ..RolloutWait::default()
        }));
        assert_eq!(v, json!({"kind": "lost_hosts", "hosts": ["h2", "h4"]}));
    }

    #[test]
    fn every_stop_kind_is_named_after_its_enum_and_carries_only_its_fields() {
        use rollout_stop::Kind;
        let expected: [(Kind, &[&str]); 8] = [
            (Kind::FailureBudget, &["count", "max", "instances"]),
            (Kind::UnreachableBudget, &["count", "max", "instances"]),
            (Kind::ProgressDeadline, &["after_ms", "waiting"]),
            (Kind::OperatorAbort, &[]),
            (Kind::OperatorRollback, &[]),
            (Kind::FailedWithinBudget, &["instances"]),
            (Kind::Halted, &[]),
            (Kind::Other, &[]),
        ];
        let listed: Vec<i32> = expected.iter().map(|(k, _)| *k as i32).collect();
        for raw in 1..=20 {
            assert_eq!(
                Kind::try_from(raw).is_ok(),
                listed.contains(&raw),
                "stop kind {raw}"
            );
        }
        for (kind, fields) in expected {
            let s = RolloutStop {
                kind: kind as i32,
                count: 2,
                max: 1,
                instances: vec!["web@h1: failed".into()],
                after_ms: 600_000,
                waiting: Some(floor_wait()),
                unfinished: 0,
                problems: Vec::new(),
            };
            let v = to_value(&StopJson::from(&s));
            assert_eq!(v["kind"], proto_word(kind.as_str_name()), "{v}");
            let mut keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.push("kind");
            want.sort_unstable();
            assert_eq!(keys, want, "{v}");
        }
        let mut deadline = RolloutStop {
            after_ms: 600_000,
            ..RolloutStop::default()
        };
        deadline.set_kind(Kind::ProgressDeadline);
        assert_eq!(
            to_value(&StopJson::from(&deadline)),
            json!({"kind": "progress_deadline", "after_ms": 600_000, "waiting": null})
        );
        deadline.waiting = Some(floor_wait());
        assert_eq!(
            to_value(&StopJson::from(&deadline))["waiting"],
            json!({"kind": "floor", "capacity": 3, "floor": 4})
        );
        // An incomplete restore says what it could not finish.
        for (u, word) in [
            (rollout_stop::Unfinished::Rollback, "rollback"),
            (rollout_stop::Unfinished::Abort, "abort"),
            (rollout_stop::Unfinished::HostLost, "host_lost"),
        ] {
            let mut s = RolloutStop {
                problems: vec!["web@h2: host lost".into()],
                ..RolloutStop::default()
            };
            s.set_kind(Kind::OperatorAbort);
            s.set_unfinished(u);
            assert_eq!(
                proto_word(u.as_str_name().replace("UNFINISHED_", "").as_str()),
                word
            );
            assert_eq!(
                to_value(&StopJson::from(&s)),
                json!({"kind": "operator_abort", "unfinished": word, "problems": ["web@h2: host lost"]})
            );
        }
    }

    /// `wait` is null exactly when `wait_reason` is, and `stop` when
    /// `reason` is, whatever the coordinator's release.
    #[test]
    fn typed_reasons_are_null_exactly_when_their_texts_are() {
        let mut r = failed_rollout();
        r.wait = None;
        r.stop = None;
        // A coordinator older than the typed fields sends only the text.
        let v = to_value(&RolloutJson::from(&r));
        assert_eq!(v["wait"], json!({"kind": "other"}));
        assert_eq!(v["stop"], json!({"kind": "other"}));
        r.wait_reason.clear();
        r.reason.clear();
        let v = to_value(&RolloutJson::from(&r));
        assert!(v["wait"].is_null() && v["wait_reason"].is_null());
        assert!(v["stop"].is_null() && v["reason"].is_null());
        // A kind from a newer coordinator that this build does not know:
        // the text says why.
        let mut r = failed_rollout();
        if let Some(w) = r.wait.as_mut() {
            w.kind = 99;
        }
        if let Some(s) = r.stop.as_mut() {
            s.kind = 99;
            s.unfinished = 99;
        }
        let v = to_value(&RolloutJson::from(&r));
        assert_eq!(v["wait"], json!({"kind": "other"}));
        assert_eq!(
            v["stop"],
            json!({"kind": "other", "problems": ["web@h2: host lost"]})
        );
    }

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
                }],
            }],
            cert_serial: "4a01".into(),
            cert_not_after_ms: 0,
            enrolled_at_ms: NOW,
            peer_addr: "127.0.0.1:5555".into(),
            status_reason: String::new(),
        };
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
                "instances": [{
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
                    }],
                }],
            })
        );
    }

    #[test]
    fn a_plan_drops_empty_waves_and_says_when_it_stalls() {
        let p = RolloutPlan {
            service: "web".into(),
            target: release("v2"),
            total: 2,
            floor: 2,
            capacity: 2,
            skipped: vec![PlannedSkip {
                instance: "web@h3".into(),
                reason: "already on v2".into(),
            }],
            batches: vec![PlannedBatch {
                number: 1,
                instances: vec!["web@h1".into()],
                waves: vec![
                    PlannedWave {
                        instances: vec!["web@h1".into()],
                    },
                    PlannedWave::default(),
                ],
                max_down: 1,
                lowest_capacity: 1,
            }],
            lowest_capacity: 1,
            stalls: "waiting: 1 healthy, floor 2".into(),
            spec_toml: "service = \"web\"\n".into(),
        };
        let v = to_value(&PlanJson::from(&p));
        assert_eq!(v["batches"][0]["waves"], json!([["web@h1"]]));
        assert_eq!(v["stalls"], "waiting: 1 healthy, floor 2");
        assert_eq!(
            v["skipped"],
            json!([{"instance": "web@h3", "reason": "already on v2"}])
        );
        assert!(v.get("spec_toml").is_none());
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

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_ms(NOW).as_deref(), Some("2026-09-21T14:13:20Z"));
        assert_eq!(
            rfc3339_ms(NOW + 999).as_deref(),
            Some("2026-09-21T14:13:20Z")
        );
        assert_eq!(rfc3339_ms(0), None);
        assert_eq!(rfc3339_ms(-1), None);
        assert_eq!(non_empty(""), None);
        assert_eq!(non_empty("x").as_deref(), Some("x"));
    }
}
