//! How many more instances may go down right now: the floor, the cap on
//! concurrent chains and the per-label spread limit, measured once per pass
//! and updated as instances are taken so a pass stays linear in fleet size.

use std::collections::BTreeMap;

#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::reason::Block;
#[cfg(any(test, feature = "sim"))]
use super::state::Mode;
use super::state::{InstanceState, RolloutState};

pub(crate) struct Room {
    capacity: u32,
    inflight: u32,
    /// Unavailable instances per value of the spread label (missing label = "").
    zone_down: BTreeMap<String, u32>,
}

fn zone<'a>(st: &RolloutState, i: &'a InstanceState) -> Option<&'a str> {
    st.spec
        .spread_by
        .as_ref()
        .map(|s| i.labels.get(&s.label).map(String::as_str).unwrap_or(""))
}

impl Room {
    pub fn measure(st: &RolloutState) -> Room {
        let mut zone_down = BTreeMap::new();
        if st.spec.spread_by.is_some() {
            for i in &st.instances {
                let down = zone_down
                    .entry(zone(st, i).unwrap_or("").to_string())
                    .or_insert(0);
                if !i.available() {
                    *down += 1;
                }
            }
        }
        Room {
            capacity: st.capacity(),
            inflight: st.inflight(),
            zone_down,
        }
    }

    /// Whether taking `i` down now keeps every limit. An instance known to
    /// be down costs no capacity and no spread. One that may be serving
    /// (counted, or failed with its drain state unknown) is taken only if
    /// the others alone still hold the floor and its zone stays within the
    /// spread limit with it down.
    pub fn admit(&self, st: &RolloutState, i: &InstanceState) -> Result<(), Block> {
        if self.inflight.saturating_add(1) > st.limits.max_unavailable {
            return Err(Block::MaxUnavailable {
                inflight: self.inflight,
                max: st.limits.max_unavailable,
            });
        }
        if !i.maybe_available() {
            return Ok(());
        }
        let counted = u32::from(i.available());
        let floor = st.limits.floor;
        let others = self.capacity.saturating_sub(counted);
        let needed = floor;
        #[cfg(any(test, feature = "sim"))]
        let needed = if bugs::on(Bug::CapacityOffByOne) {
            floor.saturating_sub(1)
        } else if bugs::on(Bug::RollbackIgnoresFloor) && matches!(st.mode, Mode::Restoring { .. }) {
            0
        } else {
            needed
        };
        if others < needed {
            return Err(Block::Floor {
                capacity: self.capacity,
                floor,
            });
        }
        let spread_by = st.spec.spread_by.as_ref();
        #[cfg(any(test, feature = "sim"))]
        let spread_by = spread_by.filter(|_| !bugs::on(Bug::SpreadIgnored));
        if let (Some(spread), Some(value)) = (spread_by, zone(st, i)) {
            let down = self.zone_down.get(value).copied().unwrap_or(0);
            let others_down = down.saturating_sub(1 - counted);
            if others_down.saturating_add(1) > spread.max_unavailable {
                return Err(Block::Spread {
                    label: spread.label.clone(),
                    value: value.to_string(),
                    down,
                    max: spread.max_unavailable,
                });
            }
        }
        Ok(())
    }

    /// Records that `i` is being taken down. Call before its step changes.
    pub fn take(&mut self, st: &RolloutState, i: &InstanceState) {
        self.inflight = self.inflight.saturating_add(1);
        if i.available() {
            self.capacity = self.capacity.saturating_sub(1);
            if let Some(value) = zone(st, i) {
                *self.zone_down.entry(value.to_string()).or_insert(0) += 1;
            }
        }
    }
}
