//! What the canary and blue-green end-to-end tests read of HAProxy and of a
//! rollout's traffic steps: requests per server in a window, each step's
//! bake, weights put back, and the load they run under.

use std::collections::BTreeMap;
use std::time::Duration;

use super::haproxy::Reading;
use super::load::LoadSpec;
use super::rollout::{RolloutView, WebFleet};

/// HAProxy's `show stat`, read this often.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Three minutes of samples at most.
pub const MAX_SAMPLES: usize = 1_800;

/// Requests each server answered between `from` and `to` (unix ms), from
/// the first and last readings in that window.
pub fn answered(samples: &[Reading], from: i64, to: i64) -> BTreeMap<String, u64> {
    let inside: Vec<&Reading> = (samples.iter())
        .filter(|r| r.unix_ms >= from && r.unix_ms <= to)
        .collect();
    let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
        return BTreeMap::new();
    };
    let before: BTreeMap<&str, u64> = (first.servers.iter())
        .map(|s| (s.server.as_str(), s.req_tot))
        .collect();
    (last.servers.iter())
        .map(|s| {
            let was = before.get(s.server.as_str()).copied().unwrap_or(0);
            (s.server.clone(), s.req_tot.saturating_sub(was))
        })
        .collect()
}

/// Every server is back at its configured weight (1 in the test HAProxy).
pub fn assert_weights_restored(web: &WebFleet, diag: &dyn Fn() -> String) {
    let servers = web.haproxy.servers().expect("show stat");
    for s in servers.iter().filter(|s| s.server != "BACKEND") {
        assert_eq!(
            s.weight,
            Some(1),
            "{} keeps weight {:?}\n{}",
            s.server,
            s.weight,
            diag()
        );
    }
}

/// When each step's bake began and ended, from the rollout's events.
pub fn bakes(rollout: &RolloutView) -> Vec<(i64, i64)> {
    let starts: Vec<i64> = (rollout.events.iter())
        .filter(|e| e.message.contains("in place: baking"))
        .map(|e| e.at_ms)
        .collect();
    let ends: Vec<i64> = (rollout.events.iter())
        .filter(|e| e.message.starts_with("traffic step") && e.message.contains(" passed"))
        .map(|e| e.at_ms)
        .collect();
    starts.into_iter().zip(ends).collect()
}

pub fn load_spec() -> LoadSpec {
    LoadSpec {
        max_requests: 60_000,
        max_duration: Duration::from_secs(150),
        ..LoadSpec::default()
    }
}
