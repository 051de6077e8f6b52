//! The engine's vocabulary: time, steps, commands, and its inputs and outputs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::reason::{Block, StopReason};
use super::spec::Release;

/// Milliseconds on the caller's clock. The engine never reads a clock; only
/// differences matter, so any monotonic origin works.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, d: Duration) -> Millis {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }

    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// One target instance as the registry sees it when the rollout starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `web@h1`.
    pub id: String,
    pub host: String,
    pub labels: BTreeMap<String, String>,
    /// What it runs now; `None` for an instance never deployed.
    pub release: Option<Release>,
    pub healthy: bool,
    pub in_service: bool,
    /// Whether its agent is connected.
    pub reachable: bool,
    /// The load balancers it is registered with, as its agent last read
    /// them: a canary weights it through every one of them.
    #[serde(default)]
    pub balancers: Vec<BalancerInfo>,
    /// Blue-green: which of its host's pair it is.
    #[serde(default)]
    pub color: Option<drover_model::Color>,
}

/// One load balancer an instance is registered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerInfo {
    /// For HAProxy, the runtime API address its agent uses.
    pub balancer: String,
    pub backend: String,
    /// The backend's balance algorithm; empty when it could not be read.
    pub algorithm: String,
    /// Whether weights changed at run time take effect with it.
    pub dynamic: bool,
    /// Whether its agent reports the server's counters there (an agent
    /// older than canary support does not).
    #[serde(default)]
    pub counted: bool,
}

/// Where an instance is in its chain. Rollback walks the same steps toward
/// the instance's previous release and ends in `RolledBack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Pending,
    /// Fetching, verifying and unpacking the release on the host while the
    /// instance still serves: a bad or unreachable artifact fails here,
    /// before anything is taken out of service.
    Staging,
    Draining,
    Stopping,
    Deploying,
    Starting,
    Verifying,
    Undraining,
    Done,
    Failed,
    Skipped,
    RolledBack,
    /// Not a step an instance is at: the verb of weight commands
    /// (`<rollout>/<instance>/weight/<generation>`), which canary and
    /// blue-green send beside the chain.
    Weighting,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pending => "pending",
            Step::Staging => "staging",
            Step::Draining => "draining",
            Step::Stopping => "stopping",
            Step::Deploying => "deploying",
            Step::Starting => "starting",
            Step::Verifying => "verifying",
            Step::Undraining => "undraining",
            Step::Done => "done",
            Step::Failed => "failed",
            Step::Skipped => "skipped",
            Step::RolledBack => "rolled back",
            Step::Weighting => "weighting",
        }
    }

    /// Steps during which a command is in flight and drover holds the instance down.
    pub fn in_chain(self) -> bool {
        matches!(
            self,
            Step::Staging
                | Step::Draining
                | Step::Stopping
                | Step::Deploying
                | Step::Starting
                | Step::Verifying
                | Step::Undraining
        )
    }

    /// Every step that sends a command, in chain order.
    pub const CHAIN: [Step; 7] = [
        Step::Staging,
        Step::Draining,
        Step::Stopping,
        Step::Deploying,
        Step::Starting,
        Step::Verifying,
        Step::Undraining,
    ];

    /// The chain step whose command verb is `verb` (the inverse of
    /// [`Step::verb`] on [`Step::CHAIN`]).
    pub fn from_verb(verb: &str) -> Option<Step> {
        (Step::CHAIN.into_iter())
            .chain([Step::Weighting])
            .find(|s| s.verb() == verb)
    }

    /// The command verb of a chain step, used in command ids.
    pub fn verb(self) -> &'static str {
        match self {
            Step::Staging => "stage",
            Step::Draining => "drain",
            Step::Stopping => "stop",
            Step::Deploying => "deploy",
            Step::Starting => "start",
            Step::Verifying => "verify",
            Step::Undraining => "undrain",
            Step::Weighting => "weight",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way an instance's chain goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Forward,
    Back,
}

/// Why an instance failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The agent reported the step failed.
    Failed { step: Step, message: String },
    /// No result within the step's timeout.
    TimedOut { step: Step, after: u64 },
    /// The step timed out while the host was lost; counted against
    /// `max_unreachable`, not `max_failures`.
    Unreachable { step: Step },
}

impl Fault {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Fault::Unreachable { .. })
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            Fault::Failed { step, .. }
            | Fault::TimedOut { step, .. }
            | Fault::Unreachable { step } => *step,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Failed { step, message } => write!(f, "{} failed: {message}", step.verb()),
            Fault::TimedOut { step, after } => write!(
                f,
                "{} timed out after {}",
                step.verb(),
                humantime::format_duration(Duration::from_millis(*after))
            ),
            Fault::Unreachable { step } => write!(f, "host lost during {}", step.verb()),
        }
    }
}

/// What an agent is asked to do to one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Fetch, verify and unpack the release beside the running one; no
    /// switch. Already staged is ok at once.
    Stage {
        release: Release,
    },
    Drain,
    Stop,
    /// Switch `current` to the (staged) release; fetch and unpack first if
    /// it is somehow not staged.
    Deploy {
        release: Release,
    },
    Start,
    /// Ok once the health check passed continuously for `min_healthy_time`,
    /// counted from the first passing check, within `healthy_deadline`.
    Verify {
        #[serde(with = "humantime_serde")]
        min_healthy_time: Duration,
        #[serde(with = "humantime_serde")]
        healthy_deadline: Duration,
    },
    Undrain,
    /// Set the instance's weight in every load balancer it is registered
    /// with; `None` puts back the weight it was configured with.
    SetWeight {
        weight: Option<u32>,
    },
}

/// Names one step attempt: the same for every send of the same step, so a
/// re-send after a crash or reconnect is answered from the agent's journal
/// instead of running again. Attempt 1 is the update, attempt 2 the
/// rollback.
///
/// On the wire and in stored state it is the text
/// `<rollout-id>/<instance>/<verb>/<attempt>` (rollout ids hold no `/`; an
/// instance may), made and read only here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId {
    pub rollout: String,
    /// `web@h1`.
    pub instance: String,
    /// A chain step (see [`Step::in_chain`]).
    pub step: Step,
    pub attempt: u32,
}

impl CommandId {
    pub fn new(rollout: &str, instance: &str, step: Step, attempt: u32) -> CommandId {
        CommandId {
            rollout: rollout.to_string(),
            instance: instance.to_string(),
            step,
            attempt,
        }
    }

    /// The host part of the instance id (`h1` of `web@h1`).
    pub fn host(&self) -> Option<&str> {
        self.instance.rsplit_once('@').map(|(_, h)| h)
    }
}

/// Why a text is not a command id drover issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a drover command id (<rollout>/<instance>/<step>/<attempt>)")]
pub struct BadCommandId(pub String);

impl std::str::FromStr for CommandId {
    type Err = BadCommandId;

    fn from_str(s: &str) -> Result<CommandId, BadCommandId> {
        let bad = || BadCommandId(s.to_string());
        let (rollout, rest) = s.split_once('/').ok_or_else(bad)?;
        let mut parts = rest.rsplitn(3, '/');
        let (attempt, verb, instance) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let step = Step::from_verb(verb).ok_or_else(bad)?;
        let attempt = attempt.parse().map_err(|_| bad())?;
        if rollout.is_empty() || instance.is_empty() {
            return Err(bad());
        }
        Ok(CommandId::new(rollout, instance, step, attempt))
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.rollout,
            self.instance,
            self.step.verb(),
            self.attempt
        )
    }
}

impl Serialize for CommandId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CommandId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The agent's final answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Ok,
    Failed(String),
    /// The agent gave up on it (a hung hook killed at the command's timeout).
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// Finish in-flight instances, start nothing new.
    Pause,
    Resume,
    /// Finish in-flight instances, return failed ones to their previous
    /// release, leave updated ones updated.
    Abort,
    /// Finish in-flight instances, then return every touched instance to its
    /// previous release.
    Rollback,
    /// Canary and blue-green: end the current step's bake now and go on,
    /// as if its analysis had passed (a human decision, recorded).
    Promote,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Time passed; deadlines and timeouts are checked on every input, a
    /// tick just carries no news.
    Tick,
    /// The latest observed state of one instance.
    Health {
        instance: String,
        healthy: bool,
        in_service: bool,
        release: Option<Release>,
    },
    CommandResult {
        id: CommandId,
        outcome: CommandOutcome,
    },
    HostLost {
        host: String,
    },
    /// The host's agent (re)connected; in-flight commands on it are re-sent.
    HostBack {
        host: String,
    },
    Operator(OperatorAction),
    /// What the instance served, as its agent read it: cumulative
    /// counters (a decrease means the source reset).
    Traffic {
        instance: String,
        sample: super::traffic::TrafficSample,
    },
    /// Blue-green: how run `attempt` of the pre-traffic hook ended
    /// (`ok` = exit code 0); `detail` says what it printed or why it failed.
    HookDone {
        attempt: u32,
        ok: bool,
        detail: String,
    },
}

/// One line of the rollout's history, with the numbers a capacity timeline needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub at: Millis,
    pub instance: Option<String>,
    pub step: Option<Step>,
    pub capacity: u32,
    pub floor: u32,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Succeeded,
    Failed {
        #[serde(deserialize_with = "super::reason::text_compat::deserialize")]
        reason: StopReason,
    },
    RolledBack {
        #[serde(deserialize_with = "super::reason::text_compat::deserialize")]
        reason: StopReason,
    },
    Aborted {
        #[serde(deserialize_with = "super::reason::text_compat::deserialize")]
        reason: StopReason,
    },
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
            Outcome::RolledBack { reason } => write!(f, "rolled back: {reason}"),
            Outcome::Aborted { reason } => write!(f, "aborted: {reason}"),
        }
    }
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// Durably save [`Engine::state`](super::Engine::state) before acting on
    /// anything after it. Always first in its batch.
    Persist,
    Send {
        id: CommandId,
        instance: String,
        host: String,
        kind: CommandKind,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
    /// Append to the rollout's event log (in the same write as the Persist
    /// of the batch, if there is one).
    Event(RolloutEvent),
    /// Why the rollout is waiting; `None` once it no longer is. Emitted only
    /// on change.
    WaitReason(Option<Block>),
    /// One look of a traffic step's analysis, with its numbers; store it
    /// in the same write as the Persist of the batch (the verdict acts
    /// only after that write).
    Judgement(Box<super::traffic::StepJudgement>),
    /// Blue-green: run the pre-traffic hook `name` from the coordinator's
    /// configuration against the idle color (`instances`, about to serve
    /// `release`), then feed [`Input::HookDone`] with the same `attempt`.
    RunHook {
        name: String,
        attempt: u32,
        color: drover_model::Color,
        instances: Vec<String>,
        release: Release,
    },
    /// The rollout reached its terminal state; nothing follows.
    Finished(Outcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step that sends a command reads back from its id: a step
    /// missing from [`Step::CHAIN`] would make its results unreadable.
    #[test]
    fn every_chain_step_round_trips_through_a_command_id() {
        let all = [
            Step::Pending,
            Step::Staging,
            Step::Draining,
            Step::Stopping,
            Step::Deploying,
            Step::Starting,
            Step::Verifying,
            Step::Undraining,
            Step::Done,
            Step::Failed,
            Step::Skipped,
            Step::RolledBack,
        ];
        for step in all.into_iter().filter(|s| s.in_chain()) {
            assert!(Step::CHAIN.contains(&step), "{step:?} not in CHAIN");
            let id = CommandId::new("web-1", "web@h1", step, 2);
            let text = id.to_string();
            assert_eq!(text.parse::<CommandId>(), Ok(id), "{text}");
        }
    }

    #[test]
    fn an_instance_may_hold_a_slash_and_a_bad_id_is_refused() {
        let id: CommandId = "web-3/web@rack/1/drain/1".parse().expect("parses");
        assert_eq!(id.rollout, "web-3");
        assert_eq!(id.instance, "web@rack/1");
        assert_eq!(id.host(), Some("rack/1"));
        for bad in [
            "",
            "web-3",
            "web-3/web@h1/explode/1",
            "web-3/web@h1/drain/x",
            "/web@h1/drain/1",
        ] {
            assert!(bad.parse::<CommandId>().is_err(), "{bad:?} parsed");
        }
    }
}
