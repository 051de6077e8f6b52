//! Prometheus metrics, served in text exposition format on the side HTTP port.

mod rollouts;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use drover_model::Strategy;
use drover_proto::v1::HostStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::rollout::traffic::StepJudgement;
use crate::rollout::{CommandKind, CommandOutcome, Outcome};
use rollouts::RolloutMetrics;

/// A gauge that holds a fraction or a duration.
type FloatGauge = Gauge<f64, AtomicU64>;

/// Why the coordinator refused a peer or a request. Kept as an enum so the
/// label values stay a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// TLS handshake failed: unknown CA, expired, revoked, garbage.
    TlsHandshake,
    /// A call that needs a client certificate came without one.
    NoCertificate,
    /// A certificate whose role may not make this call.
    WrongRole,
    /// A revoked certificate on an established connection.
    Revoked,
    /// An agent speaking for a host other than its own.
    HostMismatch,
    /// A join token that is unknown, used or expired.
    Token,
    /// A message over the size limit.
    Oversized,
    /// Malformed request (bad CSR, missing Hello...).
    BadRequest,
    /// A connection without a client certificate over
    /// `agents.max_enrolling_connections`.
    EnrollingLimit,
    /// A connection without a client certificate that completed no
    /// `Enroll` within `agents.enroll_timeout`.
    EnrollTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::NoCertificate => "no_certificate",
            Refusal::WrongRole => "wrong_role",
            Refusal::Revoked => "revoked",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::Token => "token",
            Refusal::Oversized => "oversized",
            Refusal::BadRequest => "bad_request",
            Refusal::EnrollingLimit => "enrolling_limit",
            Refusal::EnrollTimeout => "enroll_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanCheckLabel {
    service: String,
    check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillLabel {
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillRecoveryLabels {
    service: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

const HOST_STATUSES: [HostStatus; 4] = [
    HostStatus::Enrolled,
    HostStatus::Connected,
    HostStatus::Lost,
    HostStatus::Revoked,
];
fn host_status_label(s: HostStatus) -> Option<&'static str> {
    match s {
        HostStatus::Enrolled => Some("enrolled"),
        HostStatus::Connected => Some("connected"),
        HostStatus::Lost => Some("lost"),
        HostStatus::Revoked => Some("revoked"),
        HostStatus::Unspecified => None,
    }
}

pub struct Metrics {
    registry: Registry,
    pub agents_connected: Gauge,
    pub agents_lost: Gauge,
    pub reports_received: Counter,
    pub session_errors: Counter,
    enrollments: Family<ResultLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    pub renewals: Counter,
    /// Rollouts halted because the store refused their state for good.
    pub rollout_store_failures: Counter,
    /// Commands not handed to a session because its queue was full (asked
    /// again shortly).
    pub commands_undelivered: Counter,
    pub stray_weights_released: Counter,
    /// Command updates ignored: not from the host that runs the instance,
    /// or for an instance outside the rollout.
    pub updates_ignored: Counter,
    /// Open TLS connections without a client certificate.
    pub enrolling_connections: Gauge,
    /// Fetches refused because the stored blob no longer matched its digest.
    pub artifacts_corrupt: Counter,
    /// Pushes refused because the archive failed the unpacking rules.
    pub artifacts_refused: Counter,
    /// 1 while this coordinator leads (always, without an election).
    pub leader: Gauge,
    /// The fencing epoch it leads with (0 without an election).
    pub epoch: Gauge,
    /// When it took the lead (unix seconds).
    pub leader_since: Gauge,
    /// Commands agents refused as coming from a deposed leader (a lower
    /// epoch), as their reports count them.
    agent_commands_fenced: Counter,
    /// Each host's last reported count, to add only what is new.
    fenced_seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// When each service's last drill succeeded (unix seconds).
    drill_last_success: Family<ServiceLabel, Gauge>,
    /// Drills, failovers and fail-backs that ended, by outcome.
    drills_ended: Family<DrillLabel, Counter>,
    /// Kept DR plans: 1 while the check passes, 0 when it fails.
    drill_plan_check_passing: Family<PlanCheckLabel, Gauge>,
    drill_plan_checked: Family<ServiceLabel, Gauge>,
    /// The recovery time of each service's last successful drill or
    /// failover, and the RTO it was held to.
    drill_recovery: Family<DrillRecoveryLabels, FloatGauge>,
    drill_rto: Family<ServiceLabel, FloatGauge>,
    /// Known hosts by status.
    hosts: Family<StatusLabel, Gauge>,
    rollouts: RolloutMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drover");
        let agents_connected = Gauge::default();
        let agents_lost = Gauge::default();
        let reports_received = Counter::default();
        let session_errors = Counter::default();
        let enrollments = Family::<ResultLabel, Counter>::default();
        let refusals = Family::<ReasonLabel, Counter>::default();
        let renewals = Counter::default();
        let rollout_store_failures = Counter::default();
        let commands_undelivered = Counter::default();
        let stray_weights_released = Counter::default();
        let updates_ignored = Counter::default();
        let enrolling_connections = Gauge::default();
        let artifacts_corrupt = Counter::default();
        let artifacts_refused = Counter::default();
        let leader = Gauge::default();
        let epoch = Gauge::default();
        let leader_since = Gauge::default();
        let agent_commands_fenced = Counter::default();
        registry.register(
            "agent_commands_fenced",
            "Commands agents refused because they came from a deposed leader (an epoch lower than the highest they saw)",
            agent_commands_fenced.clone(),
        );
        registry.register(
            "leader",
            "1 while this coordinator leads (HA on etcd: it won the election; alone: always)",
            leader.clone(),
        );
        registry.register(
            "epoch",
            "The fencing epoch this coordinator leads with: the revision of its election key (0 without an election)",
            epoch.clone(),
        );
        registry.register(
            "leader_since_timestamp_seconds",
            "When this coordinator took the lead, in unix seconds",
            leader_since.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents with a live session",
            agents_connected.clone(),
        );
        registry.register(
            "agents_lost",
            "Known agents without a live session or recent report",
            agents_lost.clone(),
        );
        registry.register(
            "reports_received",
            "Health reports received from agents",
            reports_received.clone(),
        );
        registry.register(
            "session_errors",
            "Agent sessions that ended with an error",
            session_errors.clone(),
        );
        registry.register(
            "enrollments",
            "Enrolment attempts by result",
            enrollments.clone(),
        );
        registry.register(
            "refusals",
            "Peers or requests refused, by reason",
            refusals.clone(),
        );
        registry.register(
            "cert_renewals",
            "Agent certificates renewed",
            renewals.clone(),
        );
        registry.register(
            "rollout_store_failures",
            "Rollouts halted because the store refused their state for good",
            rollout_store_failures.clone(),
        );
        registry.register(
            "stray_weights_released",
            "Weights held by agents that no running rollout owns (left by a canary that could not reach the host), sent back to the configured weight",
            stray_weights_released.clone(),
        );
        registry.register(
            "commands_undelivered",
            "Rollout commands not handed to an agent session because its queue was full",
            commands_undelivered.clone(),
        );
        registry.register(
            "command_updates_ignored",
            "Agent command updates ignored: from a host that does not run the instance, or outside the rollout",
            updates_ignored.clone(),
        );
        registry.register(
            "enrolling_connections",
            "Open TLS connections without a client certificate (agents enrolling)",
            enrolling_connections.clone(),
        );
        registry.register(
            "artifacts_corrupt",
            "Artifact fetches refused because the stored blob no longer matches its digest",
            artifacts_corrupt.clone(),
        );
        registry.register(
            "artifacts_refused",
            "Artifact pushes refused because the archive fails the agents' unpacking rules",
            artifacts_refused.clone(),
        );
        // Pre-create the label sets so a scrape shows zeros, not gaps.
        let drill_last_success = Family::<ServiceLabel, Gauge>::default();
        registry.register(
            "drill_last_success_timestamp_seconds",
            "When the service's last DR drill succeeded (unix seconds); its age is time() minus this",
            drill_last_success.clone(),
        );
        let drills_ended = Family::<DrillLabel, Counter>::default();
        registry.register(
            "drills_ended",
            "DR drills, failovers and fail-backs that ended, by kind and outcome",
            drills_ended.clone(),
        );
        let drill_plan_check_passing = Family::<PlanCheckLabel, Gauge>::default();
        registry.register(
            "drill_plan_check_passing",
            "Kept DR plans (drover drill plan --keep): 1 while the pre-check passes, 0 when it fails",
            drill_plan_check_passing.clone(),
        );
        let drill_plan_checked = Family::<ServiceLabel, Gauge>::default();
        registry.register(
            "drill_plan_last_check_timestamp_seconds",
            "When the service's kept DR plan was last checked (unix seconds)",
            drill_plan_checked.clone(),
        );
        let drill_recovery = Family::<DrillRecoveryLabels, FloatGauge>::default();
        registry.register(
            "drill_recovery_seconds",
            "Recovery time of the service's last successful drill or failover (kind), from the first step after the approval to the target site serving and verified",
            drill_recovery.clone(),
        );
        let drill_rto = Family::<ServiceLabel, FloatGauge>::default();
        registry.register(
            "drill_rto_seconds",
            "The RTO the service's last successful drill or failover was held to",
            drill_rto.clone(),
        );
        let hosts = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "hosts",
            "Known hosts by status (enrolled, connected, lost, revoked)",
            hosts.clone(),
        );
        for s in HOST_STATUSES {
            if let Some(status) = host_status_label(s) {
                hosts
                    .get_or_create(&StatusLabel {
                        status: status.into(),
                    })
                    .get();
            }
        }
        let rollouts = RolloutMetrics::register(&mut registry);
        for r in ["ok", "refused"] {
            enrollments
                .get_or_create(&ResultLabel { result: r.into() })
                .get();
        }
        for r in [Refusal::EnrollingLimit, Refusal::EnrollTimeout] {
            refusals
                .get_or_create(&ReasonLabel {
                    reason: r.as_str().into(),
                })
                .get();
        }
        Metrics {
            registry,
            agents_connected,
            agents_lost,
            reports_received,
            session_errors,
            enrollments,
            refusals,
            renewals,
            rollout_store_failures,
            commands_undelivered,
            stray_weights_released,
            updates_ignored,
            enrolling_connections,
            leader,
            epoch,
            leader_since,
            agent_commands_fenced,
            fenced_seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            artifacts_corrupt,
            artifacts_refused,
            drill_plan_check_passing,
            drill_plan_checked,
            drill_last_success,
            drills_ended,
            drill_recovery,
            drill_rto,
            hosts,
            rollouts,
        }
    }

    /// A host moved from `from` to `to` (either may be `Unspecified`: a
    /// host not yet counted, or no longer).
    pub fn host_status(&self, from: HostStatus, to: HostStatus) {
        if from == to {
            return;
        }
        if let Some(status) = host_status_label(from) {
            self.hosts
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .dec();
        }
        if let Some(status) = host_status_label(to) {
            self.hosts
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .inc();
        }
    }

    /// A rollout of `strategy` runs (started, or resumed after a restart).
    pub fn rollout_running(&self, strategy: Strategy) {
        self.rollouts.running(strategy);
    }

    /// A rollout's task ended (finished, halted, or the coordinator is
    /// stopping): it no longer runs here, and its own series go.
    pub fn rollout_stopped(&self, strategy: Strategy, rollout: &str, service: &str) {
        self.rollouts.stopped(strategy, rollout, service);
    }

    /// A rollout reached its end with `outcome` (`None`: halted, counted
    /// as failed).
    pub fn rollout_ended(&self, strategy: Strategy, outcome: Option<&Outcome>) {
        self.rollouts.ended(strategy, outcome);
    }

    /// A running rollout's capacity and floor, as its status says now.
    pub fn rollout_capacity(&self, rollout: &str, service: &str, capacity: u32, floor: u32) {
        self.rollouts.capacity(rollout, service, capacity, floor);
    }

    /// An agent answered a command of `kind` that was first sent `took` ago.
    pub fn rollout_step(&self, kind: &CommandKind, outcome: &CommandOutcome, took: Duration) {
        self.rollouts.step(kind, outcome, took);
    }

    /// A canary's (or blue-green's) analysis looked: its numbers per arm
    /// and its verdict replace the last look's.
    pub fn canary_look(&self, rollout: &str, service: &str, j: &StepJudgement) {
        self.rollouts.canary_look(rollout, service, j);
    }

    /// A drill or failover of `service` succeeded, recovering in
    /// `recovery` against an RTO of `rto`.
    pub fn drill_recovered(&self, service: &str, kind: &str, recovery: Duration, rto: Duration) {
        self.drill_recovery
            .get_or_create(&DrillRecoveryLabels {
                service: service.to_string(),
                kind: kind.to_string(),
            })
            .set(recovery.as_secs_f64());
        self.drill_rto
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .set(rto.as_secs_f64());
    }

    /// A drill of `service` succeeded at `at_secs`: kept if newer.
    pub fn drill_succeeded(&self, service: &str, at_secs: i64) {
        let g = self.drill_last_success.get_or_create(&ServiceLabel {
            service: service.to_string(),
        });
        if at_secs > g.get() {
            g.set(at_secs);
        }
    }

    /// An operation ended (`kind` drill|failover|failback, `outcome` its
    /// phase).
    pub fn drill_ended(&self, kind: &str, outcome: &str) {
        self.drills_ended
            .get_or_create(&DrillLabel {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A kept plan of `service` was checked at `at_secs`: each check by
    /// name, passed or not; `gone` are checks it no longer has.
    pub fn drill_plan_checked(
        &self,
        service: &str,
        at_secs: i64,
        checks: &[(&str, bool)],
        gone: &[&str],
    ) {
        let label = |check: &str| PlanCheckLabel {
            service: service.to_string(),
            check: check.to_string(),
        };
        for check in gone {
            self.drill_plan_check_passing.remove(&label(check));
        }
        for (check, passed) in checks {
            self.drill_plan_check_passing
                .get_or_create(&label(check))
                .set(i64::from(*passed));
        }
        self.drill_plan_checked
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .set(at_secs);
    }

    /// A kept plan was forgotten: its series go.
    pub fn drill_plan_forgotten(&self, service: &str, checks: &[&str]) {
        for check in checks {
            self.drill_plan_check_passing.remove(&PlanCheckLabel {
                service: service.to_string(),
                check: check.to_string(),
            });
        }
        self.drill_plan_checked.remove(&ServiceLabel {
            service: service.to_string(),
        });
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: why.as_str().to_string(),
            })
            .inc();
    }

    pub fn enrollment(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.enrollments
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Text exposition format.
    /// An agent's report says it refused `total` commands from deposed
    /// leaders since it started: counts what is new (all of it after the
    /// agent restarted and its count began again).
    pub fn agent_fenced(&self, host: &str, total: u64) {
        let mut seen = self
            .fenced_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if total == 0 && !seen.contains_key(host) {
            return;
        }
        let last = seen.insert(host.to_string(), total).unwrap_or(0);
        let new = if total >= last { total - last } else { total };
        if new > 0 {
            self.agent_commands_fenced.inc_by(new);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_by_name() {
        let m = Metrics::new();
        m.refused(Refusal::HostMismatch);
        m.reports_received.inc();
        let text = m.encode();
        assert!(
            text.contains("drover_refusals_total{reason=\"host_mismatch\"} 1"),
            "{text}"
        );
        assert!(text.contains("drover_reports_received_total 1"), "{text}");
        assert!(
            text.contains("drover_enrollments_total{result=\"ok\"} 0"),
            "{text}"
        );
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn hosts_are_counted_by_status_as_they_move() {
        let m = Metrics::new();
        m.host_status(HostStatus::Unspecified, HostStatus::Enrolled);
        m.host_status(HostStatus::Unspecified, HostStatus::Enrolled);
        m.host_status(HostStatus::Enrolled, HostStatus::Connected);
        m.host_status(HostStatus::Connected, HostStatus::Connected);
        m.host_status(HostStatus::Enrolled, HostStatus::Connected);
        m.host_status(HostStatus::Connected, HostStatus::Lost);
        let text = m.encode();
        assert_eq!(value(&text, "drover_hosts{status=\"enrolled\"}"), Some(0.0));
        assert_eq!(
            value(&text, "drover_hosts{status=\"connected\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "drover_hosts{status=\"lost\"}"), Some(1.0));
        assert_eq!(value(&text, "drover_hosts{status=\"revoked\"}"), Some(0.0));
    }

    #[test]
    fn a_drills_recovery_shows_against_its_rto() {
        let m = Metrics::new();
        m.drill_recovered(
            "db",
            "failover",
            Duration::from_millis(12_500),
            Duration::from_secs(60),
        );
        let text = m.encode();
        assert_eq!(
            value(
                &text,
                "drover_drill_recovery_seconds{service=\"db\",kind=\"failover\"}"
            ),
            Some(12.5),
            "{text}"
        );
        assert_eq!(
            value(&text, "drover_drill_rto_seconds{service=\"db\"}"),
            Some(60.0),
            "{text}"
        );
    }

    #[test]
    fn fenced_commands_count_what_each_report_adds() {
        let m = Metrics::new();
        let count = |m: &Metrics| {
            (m.encode().lines())
                .find_map(|l| l.strip_prefix("drover_agent_commands_fenced_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        assert_eq!(count(&m), 0);
        m.agent_fenced("h1", 2);
        m.agent_fenced("h1", 2); // the same report again: nothing new
        m.agent_fenced("h2", 1);
        assert_eq!(count(&m), 3);
        m.agent_fenced("h1", 5);
        assert_eq!(count(&m), 6);
        // h1's agent restarted: its count began again, all of it is new.
        m.agent_fenced("h1", 1);
        assert_eq!(count(&m), 7);
    }
}
