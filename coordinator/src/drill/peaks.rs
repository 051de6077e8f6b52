//! The serving peaks a DR plan's capacity check compares against: for every
//! service and every host label value (`site=primary`), the most instances
//! that served at once, per hour, over the last week.
//!
//! Sampled every [`SAMPLE_EVERY`] from the registry and kept in the store
//! under [`KEY`] (one small record, written when a peak grows: a few times
//! an hour at most), so a restarted or newly elected coordinator knows
//! yesterday's peak.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::registry::{Registry, now_ms};
use crate::runner::wire::observe;
use crate::selector::Selector;
use crate::store::Store;

pub const KEY: &str = "drill-peaks";
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const HOUR_MS: i64 = 3_600_000;
/// Hours kept: a week.
const KEEP_HOURS: i64 = 7 * 24;

/// `(service, label, value)`.
type Key = (String, String, String);

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Saved {
    /// `service\tlabel\tvalue` -> hour (unix ms at its start) -> peak.
    peaks: BTreeMap<String, BTreeMap<i64, u32>>,
}

#[derive(Debug, Default)]
struct State {
    peaks: BTreeMap<Key, BTreeMap<i64, u32>>,
    dirty: bool,
}

/// Serving peaks by service and site.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    state: Arc<Mutex<State>>,
}

impl Peaks {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads what the store holds; an unreadable record starts empty (the
    /// peaks then grow back from the fleet).
    pub async fn load(store: &dyn Store) -> Peaks {
        let peaks = Peaks::default();
        if let Ok(Some(bytes)) = store.get(KEY).await {
            match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => {
                    let mut st = peaks.lock();
                    for (k, hours) in saved.peaks {
                        let mut parts = k.splitn(3, '\t');
                        if let (Some(s), Some(l), Some(v)) =
                            (parts.next(), parts.next(), parts.next())
                        {
                            st.peaks
                                .insert((s.to_string(), l.to_string(), v.to_string()), hours);
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    "{KEY} in the store is unreadable ({e}); serving peaks start over"
                ),
            }
        }
        peaks
    }

    /// Records `count` serving instances of `service` on hosts with
    /// `label=value` at `now_ms`.
    pub fn record(&self, service: &str, label: &str, value: &str, count: u32, now_ms: i64) {
        let hour = now_ms - now_ms.rem_euclid(HOUR_MS);
        let mut st = self.lock();
        let hours = st
            .peaks
            .entry((service.to_string(), label.to_string(), value.to_string()))
            .or_default();
        let slot = hours.entry(hour).or_insert(0);
        let grew = count > *slot;
        if grew {
            *slot = count;
        }
        hours.retain(|h, _| *h > hour - KEEP_HOURS * HOUR_MS);
        if grew {
            st.dirty = true;
        }
    }

    /// The most serving instances over `window` before `now_ms` (by whole
    /// hours: the hour that began within the window counts whole).
    pub fn peak(
        &self,
        service: &str,
        label: &str,
        value: &str,
        window: Duration,
        now_ms: i64,
    ) -> u32 {
        let since = now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2) - HOUR_MS;
        let st = self.lock();
        st.peaks
            .get(&(service.to_string(), label.to_string(), value.to_string()))
            .map(|hours| hours.range(since..).map(|(_, n)| *n).max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts serving instances by service and host label in `registry`
    /// and records them.
    pub fn sample(&self, registry: &Registry, now_ms: i64) {
        let mut counts: BTreeMap<Key, u32> = BTreeMap::new();
        for host in registry.list(&Selector::everything()) {
            if !crate::runner::wire::connected(&host) {
                continue;
            }
            for inst in &host.instances {
                let seen = observe(inst);
                let serving = seen.healthy && seen.in_service();
                for (label, value) in &host.labels {
                    let n = counts
                        .entry((inst.service.clone(), label.clone(), value.clone()))
                        .or_insert(0);
                    if serving {
                        *n += 1;
                    }
                }
            }
        }
        for ((service, label, value), n) in counts {
            self.record(&service, &label, &value, n, now_ms);
        }
    }

    async fn save(&self, store: &dyn Store) {
        let saved = {
            let mut st = self.lock();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            Saved {
                peaks: (st.peaks.iter())
                    .map(|((s, l, v), hours)| (format!("{s}\t{l}\t{v}"), hours.clone()))
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        if let Err(e) = store.put(KEY, bytes).await {
            tracing::warn!("save the serving peaks: {e}; trying again later");
            self.lock().dirty = true;
        }
    }

    /// Samples every [`SAMPLE_EVERY`], saving what grew, until `shutdown`.
    pub async fn run(
        self,
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) {
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = sample.tick() => {
                    self.sample(&registry, now_ms());
                    self.save(store.as_ref()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_hourly_peak_over_the_window_and_survives_a_reload() {
        let p = Peaks::default();
        let t0 = 1_000 * HOUR_MS;
        p.record("web", "site", "primary", 4, t0);
        p.record("web", "site", "primary", 2, t0 + 10);
        p.record("web", "site", "primary", 3, t0 + 5 * HOUR_MS);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(p.peak("web", "site", "primary", day, t0 + 5 * HOUR_MS), 4);
        // Two days later the 4 is out of a 24 h window; the 3 too.
        assert_eq!(p.peak("web", "site", "primary", day, t0 + 48 * HOUR_MS), 0);
        assert_eq!(p.peak("web", "site", "dr", day, t0), 0);

        let store = crate::store::memory::MemoryStore::new();
        p.save(&store).await;
        let again = Peaks::load(&store).await;
        assert_eq!(
            again.peak("web", "site", "primary", day, t0 + 5 * HOUR_MS),
            4
        );
    }
}
