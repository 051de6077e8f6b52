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

use drover_proto::v1::{
    Command, CoordinatorMessage, SetWeightCommand, command, coordinator_message,
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

/// `(host, instance id, instance name)` of the instances in `held` (as
/// [`Registry::held_weights`] lists them) whose service has no rollout
/// running.
pub fn strays(
    held: Vec<(String, String, String, String)>,
    busy: &BTreeSet<String>,
) -> Vec<(String, String, String)> {
    (held.into_iter())
        .filter(|(_, _, _, service)| !busy.contains(service))
        .map(|(host, id, name, _)| (host, id, name))
        .collect()
}

fn restore(id: String, instance: String, epoch: u64) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id,
            instance,
            timeout_ms: u32::try_from(TIMEOUT.as_millis()).unwrap_or(u32::MAX),
            epoch,
            traceparent: String::new(),
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let busy = rollouts.weight_owners();
        let found = strays(registry.held_weights(), &busy);
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
            if tx
                .try_send(Ok(restore(command_id, name, rollouts.epoch())))
                .is_ok()
            {
                tracing::info!(instance = %id, "no rollout owns the weight this instance holds; putting back its configured weight");
                metrics.stray_weights_released.inc();
                told.insert(id, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_held_weights_of_services_without_a_rollout() {
        let held = |h: &str, name: &str, service: &str| {
            (
                h.to_string(),
                format!("{name}@{h}"),
                name.to_string(),
                service.to_string(),
            )
        };
        let busy = BTreeSet::from(["api".to_string()]);
        assert_eq!(
            strays(
                vec![held("h1", "web", "web"), held("h1", "api", "api")],
                &busy
            ),
            [("h1".to_string(), "web@h1".to_string(), "web".to_string())]
        );
    }
}
