//! Weights no rollout owns. An agent holds the weight a canary gave its
//! instance, durably, and sets it again whenever HAProxy loses it. When the
//! canary ended while that host was away, the configured weight could not
//! be put back (the rollout says so and names the instance), and the agent
//! would hold the canary's weight for good. So, every
//! [`SWEEP_EVERY`], any connected instance that still holds a weight while
//! no rollout of its service runs is told to put back its configured weight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_model::selector::Selector;
use drover_proto::v1::{
    Command, CoordinatorMessage, Host, HostStatus, SetWeightCommand, command, coordinator_message,
};
use tokio_util::sync::CancellationToken;

use super::Rollouts;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How often held weights are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// An instance is told again at most this often.
const RETELL_AFTER: Duration = Duration::from_secs(60);
/// What the agent is given to put the weight back.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The rollout part of the command ids (rollout ids are `<service>-<n>`,
/// so none is this).
pub const OWNER: &str = "stray-weights";

/// `(host, instance id, instance name)` of every connected instance that
/// holds a weight while no rollout of its service runs.
pub fn strays(hosts: &[Host], busy: &BTreeSet<String>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for h in hosts {
        if h.status != HostStatus::Connected as i32 {
            continue;
        }
        for i in &h.instances {
            if i.weight_held && !busy.contains(&i.service) {
                out.push((h.host_id.clone(), i.id.clone(), i.name.clone()));
            }
        }
    }
    out
}

fn restore(id: String, instance: String) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id,
            instance,
            timeout_ms: u32::try_from(TIMEOUT.as_millis()).unwrap_or(u32::MAX),
            kind: Some(command::Kind::SetWeight(SetWeightCommand {
                weight: 0,
                restore: true,
            })),
        })),
    }
}

/// Puts back stray weights until `shutdown`.
pub async fn run(
    rollouts: Arc<Rollouts>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut told: BTreeMap<String, Instant> = BTreeMap::new();
    let everyone = Selector::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let busy = rollouts.running_services();
        let found = strays(&registry.list(&everyone), &busy);
        told.retain(|id, at| at.elapsed() < RETELL_AFTER && found.iter().any(|s| &s.1 == id));
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (host, id, name) in found {
            if told.contains_key(&id) {
                continue;
            }
            let Some(tx) = registry.session_sender(&host) else {
                continue;
            };
            let command_id = format!("{OWNER}/{id}/weight/{stamp}");
            if tx.try_send(Ok(restore(command_id, name))).is_ok() {
                tracing::info!(instance = %id, "no rollout owns the weight this instance holds; putting back its configured weight");
                metrics.stray_weights_released.inc();
                told.insert(id, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::v1::InstanceStatus;

    use super::*;

    fn host(id: &str, status: HostStatus, held: &[(&str, &str, bool)]) -> Host {
        Host {
            host_id: id.to_string(),
            status: status as i32,
            instances: (held.iter())
                .map(|(name, service, held)| InstanceStatus {
                    id: format!("{name}@{id}"),
                    name: name.to_string(),
                    service: service.to_string(),
                    weight_held: *held,
                    ..InstanceStatus::default()
                })
                .collect(),
            ..Host::default()
        }
    }

    #[test]
    fn only_held_weights_of_services_without_a_rollout_on_connected_hosts() {
        let hosts = [
            host(
                "h1",
                HostStatus::Connected,
                &[
                    ("web", "web", true),
                    ("api", "api", true),
                    ("db", "db", false),
                ],
            ),
            host("h2", HostStatus::Lost, &[("web", "web", true)]),
        ];
        let busy = BTreeSet::from(["api".to_string()]);
        assert_eq!(
            strays(&hosts, &busy),
            [("h1".to_string(), "web@h1".to_string(), "web".to_string())]
        );
    }
}
