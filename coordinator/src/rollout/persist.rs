//! How a rollout's state is laid out in the store, so that a write costs
//! what changed rather than the whole fleet.
//!
//! - `rollout-state/<id>`: the rollout without its instances, and how many
//!   instances it has;
//! - `rollout-instances/<id>/<n>`: instance `n` (plan order, zero-padded).
//!
//! Every `Persist` writes the head and each instance changed since the
//! previous write, in one `put_many`, so the store always holds the state as
//! of the last write, as a whole-state write would. A head written whole by
//! an older coordinator (instances inline) is still read.

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::state::{InstanceState, RolloutState};

/// Key prefix of rollout heads; a scan of it finds every rollout.
pub const STATE: &str = "rollout-state/";
const INSTANCES: &str = "rollout-instances/";
const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Head {
    format: u32,
    instances: usize,
    state: RolloutState,
}

/// The key of a rollout's head.
pub fn head_key(id: &str) -> String {
    format!("{STATE}{id}")
}

/// The prefix under which a rollout's instances are stored; scan it and
/// hand the records to [`decode`].
pub fn instances_prefix(id: &str) -> String {
    format!("{INSTANCES}{id}/")
}

fn instance_key(id: &str, n: usize) -> String {
    format!("{INSTANCES}{id}/{n:08}")
}

impl Engine {
    /// The writes that bring the store up to date with this engine: the
    /// head and every instance changed since the last call (all of them the
    /// first time). Call it for every `Persist`, and write the result whole.
    pub fn persist_writes(&mut self) -> Result<Vec<(String, Vec<u8>)>, serde_json::Error> {
        let st = self.state();
        let id = st.id().to_string();
        let head = Head {
            format: FORMAT,
            instances: st.instances.len(),
            state: st.head(),
        };
        let changed = self.take_changed();
        let st = self.state();
        let mut writes = Vec::with_capacity(changed.len() + 1);
        writes.push((head_key(&id), serde_json::to_vec(&head)?));
        for n in changed {
            writes.push((instance_key(&id, n), serde_json::to_vec(&st.instances[n])?));
        }
        Ok(writes)
    }
}

/// The state stored under a head and its instance records (as scanned from
/// [`instances_prefix`], in key order). The error names what is wrong.
pub fn decode(head: &[u8], records: &[(String, Vec<u8>)]) -> Result<RolloutState, String> {
    let head: Head = match serde_json::from_slice::<Head>(head) {
        Ok(h) => h,
        Err(split) => {
            return serde_json::from_slice::<RolloutState>(head)
                .map_err(|_| format!("rollout head: {split}"));
        }
    };
    if head.format != FORMAT {
        return Err(format!(
            "rollout head has format {}, this coordinator reads {FORMAT}",
            head.format
        ));
    }
    let id = head.state.id().to_string();
    if records.len() != head.instances {
        return Err(format!(
            "rollout {id} has {} instance records, its head says {}",
            records.len(),
            head.instances
        ));
    }
    let mut state = head.state;
    state.instances.reserve(records.len());
    for (n, (key, bytes)) in records.iter().enumerate() {
        if key != &instance_key(&id, n) {
            return Err(format!(
                "rollout {id}: expected instance record {}, found {key}",
                instance_key(&id, n)
            ));
        }
        let i: InstanceState = serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
        state.instances.push(i);
    }
    Ok(state)
}
