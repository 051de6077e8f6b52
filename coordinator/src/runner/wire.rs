//! Between the wire and the driver: what a registry entry or an agent's
//! command update says, in the driver's terms, and the commands the driver
//! decides, as the agent receives them. No decisions here.

use std::time::Duration;

use drover_proto::v1::{
    self as pb, Command, CommandUpdate, CoordinatorMessage, HealthState, Host, HostStatus,
    RuntimeState, command, command_update::Phase as WirePhase, coordinator_message,
};

use super::driver::{AgentUpdate, HostView, InstanceView, Observed, Outgoing, UpdateKind};
use crate::rollout::traffic::{AppCounters, BalancerCounters, TrafficSample};
use crate::rollout::{CommandId, CommandKind, CommandOutcome, Release};

/// What a report says of an instance. Without a health check, running
/// counts as healthy. The load balancers route to it when every one it is
/// registered with has it UP with a weight (an instance registered with
/// none, or reported by an agent too old to say, counts as routed).
pub fn observe(inst: &pb::InstanceStatus) -> Observed {
    let running = inst.state == RuntimeState::Running as i32;
    let healthy = running
        && match HealthState::try_from(inst.health).unwrap_or(HealthState::Unspecified) {
            HealthState::Healthy | HealthState::None => true,
            HealthState::Unspecified | HealthState::Unknown | HealthState::Unhealthy => false,
        };
    let release = inst
        .release
        .as_ref()
        .filter(|r| !r.version.is_empty())
        .map(|r| Release::new(r.version.clone(), r.digest.clone()));
    Observed {
        healthy,
        running,
        drained: inst.drained,
        lb_routes: (inst.load_balancers.iter())
            .all(|lb| lb.state == pb::LoadBalancerState::Up as i32 && lb.weight > 0),
        release,
    }
}

pub fn connected(host: &Host) -> bool {
    host.status == HostStatus::Connected as i32
}

/// What the instance served, as its agent last read it: HAProxy's counters
/// per load balancer that has them, and its own metrics when scraped.
/// `None` when the agent reports neither.
pub fn traffic(inst: &pb::InstanceStatus) -> Option<TrafficSample> {
    let balancers: Vec<BalancerCounters> = (inst.load_balancers.iter())
        .filter_map(|lb| {
            let c = lb.counters.as_ref()?;
            Some(BalancerCounters {
                balancer: lb.balancer.clone(),
                requests: c.requests,
                responses_5xx: c.responses_5xx,
                response_errors: c.response_errors,
                connection_errors: c.connection_errors,
                responses: c.responses,
                response_time_ms: c.response_time_ms,
            })
        })
        .collect();
    let app = (inst.app_metrics.as_ref())
        .filter(|m| m.error.is_empty() && m.read_at_ms > 0)
        .map(|m| AppCounters {
            requests: m.requests,
            errors: m.errors,
            latency: drover_analysis::Histogram {
                buckets: (m.latency_buckets.iter())
                    .map(|b| drover_analysis::Bucket {
                        le: b.le,
                        count: b.count,
                    })
                    .collect(),
                sum: m.latency_sum,
                count: m.latency_count,
            },
        });
    (!balancers.is_empty() || app.is_some()).then_some(TrafficSample { balancers, app })
}

/// A registry entry, reduced to the instances of `service`.
pub fn host_view(host: &Host, service: &str) -> HostView {
    HostView {
        host: host.host_id.clone(),
        connected: connected(host),
        instances: (host.instances.iter())
            .filter(|i| i.service == service)
            .map(|i| InstanceView {
                id: i.id.clone(),
                seen: observe(i),
                traffic: traffic(i),
            })
            .collect(),
    }
}

/// An agent's update on a command, or `None` for one that says nothing
/// (no phase) or names no command drover could have issued.
pub fn agent_update(u: CommandUpdate) -> Option<AgentUpdate> {
    let id: CommandId = u.command_id.parse().ok()?;
    let phase = WirePhase::try_from(u.phase).unwrap_or(WirePhase::Unspecified);
    let kind = match phase {
        WirePhase::Succeeded => UpdateKind::Result(CommandOutcome::Ok),
        WirePhase::Failed => UpdateKind::Result(CommandOutcome::Failed(u.message)),
        WirePhase::TimedOut => UpdateKind::Result(CommandOutcome::TimedOut),
        WirePhase::Accepted | WirePhase::Progress => UpdateKind::Progress(progress_text(&u)),
        WirePhase::Unspecified => return None,
    };
    Some(AgentUpdate { id, kind })
}

fn progress_text(u: &CommandUpdate) -> String {
    if let Some(pct) = u.bytes_done.saturating_mul(100).checked_div(u.bytes_total) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let head = if u.message.is_empty() {
            "fetching"
        } else {
            u.message.as_str()
        };
        format!(
            "{head} {:.1}/{:.1} MiB ({pct}%)",
            mib(u.bytes_done),
            mib(u.bytes_total)
        )
    } else {
        u.message.clone()
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The command as the agent receives it; `traceparent` is its step span's
/// context (empty when tracing is off).
pub fn command(send: &Outgoing, epoch: u64, traceparent: String) -> CoordinatorMessage {
    let release = |r: &crate::rollout::Release| pb::Release {
        version: r.version.clone(),
        digest: r.digest.clone(),
    };
    let kind = match &send.kind {
        CommandKind::Stage { release: r } => command::Kind::Stage(pb::StageCommand {
            release: Some(release(r)),
        }),
        CommandKind::Drain => command::Kind::Drain(pb::DrainCommand {}),
        CommandKind::Stop => command::Kind::Stop(pb::StopCommand {}),
        CommandKind::Deploy { release: r } => command::Kind::Deploy(pb::DeployCommand {
            release: Some(release(r)),
        }),
        CommandKind::Start => command::Kind::Start(pb::StartCommand {}),
        CommandKind::Verify {
            min_healthy_time,
            healthy_deadline,
        } => command::Kind::Verify(pb::VerifyCommand {
            min_healthy_time_ms: ms(*min_healthy_time),
            healthy_deadline_ms: ms(*healthy_deadline),
        }),
        CommandKind::Undrain => command::Kind::Undrain(pb::UndrainCommand {}),
        CommandKind::SetWeight { weight } => command::Kind::SetWeight(pb::SetWeightCommand {
            weight: weight.unwrap_or(0),
            restore: weight.is_none(),
        }),
    };
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id: send.id.to_string(),
            instance: send.instance.clone(),
            timeout_ms: ms(send.timeout).max(1),
            epoch,
            traceparent,
            kind: Some(kind),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: RuntimeState, health: HealthState, drained: bool) -> pb::InstanceStatus {
        pb::InstanceStatus {
            id: "web@h1".into(),
            service: "web".into(),
            state: state as i32,
            health: health as i32,
            drained,
            release: Some(pb::Release {
                version: "v1".into(),
                digest: "d1".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_instance_without_a_check_counts_as_healthy() {
        let o = observe(&status(RuntimeState::Running, HealthState::None, false));
        assert!(o.healthy && o.running && !o.drained);
        assert_eq!(
            o.release,
            Some(Release::new("v1".to_string(), "d1".to_string()))
        );
    }

    #[test]
    fn in_service_needs_every_load_balancer_to_route_to_it() {
        let lb = |state: pb::LoadBalancerState, weight: u32| pb::LoadBalancerView {
            backend: "web".into(),
            server: "h1".into(),
            state: state as i32,
            weight,
            ..Default::default()
        };
        let mut inst = status(RuntimeState::Running, HealthState::Healthy, false);
        inst.load_balancers = vec![lb(pb::LoadBalancerState::Up, 1)];
        assert!(observe(&inst).in_service());
        for (state, weight) in [
            (pb::LoadBalancerState::Down, 1),
            (pb::LoadBalancerState::Drain, 1),
            (pb::LoadBalancerState::Maint, 1),
            (pb::LoadBalancerState::Unknown, 1),
            (pb::LoadBalancerState::Up, 0),
        ] {
            inst.load_balancers = vec![lb(pb::LoadBalancerState::Up, 1), lb(state, weight)];
            let o = observe(&inst);
            assert!(o.healthy, "its own check still passes");
            assert!(
                !o.in_service(),
                "{state:?} weight {weight} counted in service"
            );
        }
    }

    #[test]
    fn an_unknown_health_or_a_stopped_instance_is_not_healthy() {
        assert!(!observe(&status(RuntimeState::Running, HealthState::Unknown, false)).healthy);
        assert!(!observe(&status(RuntimeState::Stopped, HealthState::Healthy, false)).healthy);
    }

    #[test]
    fn an_update_without_a_phase_or_with_a_foreign_id_says_nothing() {
        let u = |id: &str, phase: WirePhase| CommandUpdate {
            command_id: id.into(),
            phase: phase as i32,
            ..Default::default()
        };
        assert!(agent_update(u("web-1/web@h1/drain/1", WirePhase::Unspecified)).is_none());
        assert!(agent_update(u("not a drover id", WirePhase::Succeeded)).is_none());
        let got = agent_update(u("web-1/web@h1/drain/1", WirePhase::Succeeded));
        assert!(matches!(
            got,
            Some(AgentUpdate {
                kind: UpdateKind::Result(CommandOutcome::Ok),
                ..
            })
        ));
    }

    #[test]
    fn progress_with_bytes_reads_as_a_download() {
        let u = CommandUpdate {
            command_id: "web-1/web@h1/deploy/1".into(),
            phase: WirePhase::Progress as i32,
            bytes_done: 512 * 1024,
            bytes_total: 1024 * 1024,
            ..Default::default()
        };
        assert_eq!(progress_text(&u), "fetching 0.5/1.0 MiB (50%)");
    }
}
