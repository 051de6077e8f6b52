//! The JSON `drover rollout` prints (status, list, actions, dry run), read
//! leniently where the tests do not care and strictly where they do, plus
//! the checks tests make on a rollout's event history.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `{"version","digest"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReleaseView {
    pub version: String,
    #[serde(default)]
    pub digest: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CountsView {
    pub total: u32,
    #[serde(default)]
    pub pending: u32,
    #[serde(default)]
    pub in_progress: u32,
    #[serde(default)]
    pub done: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub skipped: u32,
    #[serde(default)]
    pub unreachable: u32,
    #[serde(default)]
    pub rolled_back: u32,
}

/// One instance in a rollout's JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct RolloutInstanceView {
    pub id: String,
    pub host: String,
    pub step: String,
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub release: Option<ReleaseView>,
    #[serde(default)]
    pub previous: Option<ReleaseView>,
    #[serde(default)]
    pub available: Option<bool>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

impl RolloutInstanceView {
    pub fn version(&self) -> Option<&str> {
        self.release.as_ref().map(|r| r.version.as_str())
    }

    pub fn error_text(&self) -> &str {
        self.error.as_deref().unwrap_or("")
    }
}

/// One event of a rollout's history.
#[derive(Debug, Clone, Deserialize)]
pub struct RolloutEventView {
    #[serde(default)]
    pub at_ms: i64,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    pub capacity: u32,
    pub floor: u32,
    #[serde(default)]
    pub message: String,
}

impl RolloutEventView {
    pub fn step_is(&self, step: &str) -> bool {
        self.step.as_deref() == Some(step)
    }

    pub fn instance_is(&self, id: &str) -> bool {
        self.instance.as_deref() == Some(id)
    }
}

impl std::fmt::Display for RolloutEventView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8}ms {:<10} {:<11} capacity {}/{} {}",
            self.at_ms,
            self.instance.as_deref().unwrap_or("-"),
            self.step.as_deref().unwrap_or("-"),
            self.capacity,
            self.floor,
            self.message
        )
    }
}

/// A rollout as `drover rollout status -o json` prints it. Fields the
/// tests rely on are required, so a deviation from the contract shows up
/// as a parse error with the raw JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct RolloutView {
    pub id: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub target: Option<ReleaseView>,
    pub phase: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub batch: u32,
    #[serde(default)]
    pub counts: CountsView,
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub floor: u32,
    #[serde(default)]
    pub lowest_capacity: u32,
    #[serde(default)]
    pub wait_reason: Option<String>,
    #[serde(default)]
    pub started_at_ms: i64,
    #[serde(default)]
    pub instances: Vec<RolloutInstanceView>,
    #[serde(default)]
    pub events: Vec<RolloutEventView>,
    /// Canary: its traffic steps; `None` for a rolling update.
    #[serde(default)]
    pub traffic: Option<TrafficView>,
}

/// A canary's traffic steps, as `-o json` prints them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TrafficView {
    #[serde(default)]
    pub step: u32,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub looks: u32,
    #[serde(default)]
    pub results: Vec<serde_json::Value>,
}

impl RolloutView {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.phase.as_str(),
            "succeeded" | "failed" | "rolled_back" | "aborted"
        )
    }

    pub fn reason_text(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }

    #[track_caller]
    pub fn instance(&self, host: &str) -> &RolloutInstanceView {
        self.instances
            .iter()
            .find(|i| i.host == host)
            .unwrap_or_else(|| panic!("no instance on {host} in rollout {}", self.id))
    }

    /// Instance id -> version of its release (as last reported).
    pub fn versions(&self) -> BTreeMap<String, Option<String>> {
        self.instances
            .iter()
            .map(|i| (i.id.clone(), i.version().map(str::to_string)))
            .collect()
    }

    /// Events where drover took an available instance down (`draining`,
    /// forward or back) and so pushed capacity under the floor: what must
    /// never happen. Draining an instance that was already unavailable
    /// costs nothing (capacity stays what the event before it said), so
    /// that is allowed under the floor.
    pub fn drains_under_floor(&self) -> Vec<&RolloutEventView> {
        let mut out = Vec::new();
        let mut before: Option<u32> = None;
        for e in &self.events {
            if e.step_is("draining") && e.capacity < e.floor && before != Some(e.capacity) {
                out.push(e);
            }
            before = Some(e.capacity);
        }
        out
    }

    /// Every event as a line, for messages.
    pub fn timeline(&self) -> String {
        let mut out = format!(
            "rollout {} phase={} reason={:?} batch={} capacity={} floor={} lowest={} wait={:?}\n",
            self.id,
            self.phase,
            self.reason,
            self.batch,
            self.capacity,
            self.floor,
            self.lowest_capacity,
            self.wait_reason
        );
        for i in &self.instances {
            out.push_str(&format!(
                "  {} step={} release={:?} previous={:?} error={:?} note={:?}\n",
                i.id,
                i.step,
                i.version(),
                i.previous.as_ref().map(|r| &r.version),
                i.error,
                i.note
            ));
        }
        for e in &self.events {
            out.push_str(&format!("  {e}\n"));
        }
        out
    }
}

/// One batch of a dry run's plan.
#[derive(Debug, Clone, Deserialize)]
pub struct PlannedBatchView {
    pub number: u32,
    pub instances: Vec<String>,
    #[serde(default)]
    pub waves: Vec<Vec<String>>,
    pub max_down: u32,
    pub lowest_capacity: u32,
}

/// `drover rollout start --dry-run -o json`.
#[derive(Debug, Clone, Deserialize)]
pub struct PlanView {
    pub total: u32,
    pub floor: u32,
    pub capacity: u32,
    #[serde(default)]
    pub skipped: Vec<serde_json::Value>,
    pub batches: Vec<PlannedBatchView>,
    pub lowest_capacity: u32,
    #[serde(default)]
    pub stalls: Option<String>,
}
