//! The words the CLI prints and its JSON carries for the wire's enums
//! (`rolling_back`, `verifying`, `back`), and the way back from the
//! deprecated `*_text` fields an older peer fills.

use crate::v1::{Direction, InstanceStep, RolloutPhase};

impl RolloutPhase {
    /// The snake_case word; empty for `Unspecified`.
    pub fn as_text(self) -> &'static str {
        match self {
            RolloutPhase::Unspecified => "",
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Stopping => "stopping",
            RolloutPhase::RollingBack => "rolling_back",
            RolloutPhase::Aborting => "aborting",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::Failed => "failed",
            RolloutPhase::RolledBack => "rolled_back",
            RolloutPhase::Aborted => "aborted",
        }
    }

    pub const ALL: [RolloutPhase; 9] = [
        RolloutPhase::Running,
        RolloutPhase::Paused,
        RolloutPhase::Stopping,
        RolloutPhase::RollingBack,
        RolloutPhase::Aborting,
        RolloutPhase::Succeeded,
        RolloutPhase::Failed,
        RolloutPhase::RolledBack,
        RolloutPhase::Aborted,
    ];

    pub fn from_text(s: &str) -> RolloutPhase {
        Self::ALL
            .into_iter()
            .find(|p| p.as_text() == s)
            .unwrap_or(RolloutPhase::Unspecified)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutPhase::Succeeded
                | RolloutPhase::Failed
                | RolloutPhase::RolledBack
                | RolloutPhase::Aborted
        )
    }
}

impl InstanceStep {
    /// The snake_case word; empty for `Unspecified`.
    pub fn as_text(self) -> &'static str {
        match self {
            InstanceStep::Unspecified => "",
            InstanceStep::Pending => "pending",
            InstanceStep::Staging => "staging",
            InstanceStep::Draining => "draining",
            InstanceStep::Stopping => "stopping",
            InstanceStep::Deploying => "deploying",
            InstanceStep::Starting => "starting",
            InstanceStep::Verifying => "verifying",
            InstanceStep::Undraining => "undraining",
            InstanceStep::Done => "done",
            InstanceStep::Failed => "failed",
            InstanceStep::Skipped => "skipped",
            InstanceStep::RolledBack => "rolled_back",
            InstanceStep::Weighting => "weighting",
        }
    }

    pub const ALL: [InstanceStep; 13] = [
        InstanceStep::Pending,
        InstanceStep::Staging,
        InstanceStep::Draining,
        InstanceStep::Stopping,
        InstanceStep::Deploying,
        InstanceStep::Starting,
        InstanceStep::Verifying,
        InstanceStep::Undraining,
        InstanceStep::Done,
        InstanceStep::Failed,
        InstanceStep::Skipped,
        InstanceStep::RolledBack,
        InstanceStep::Weighting,
    ];

    pub fn from_text(s: &str) -> InstanceStep {
        Self::ALL
            .into_iter()
            .find(|p| p.as_text() == s)
            .unwrap_or(InstanceStep::Unspecified)
    }

    /// A command is in flight and drover holds the instance.
    pub fn in_chain(self) -> bool {
        matches!(
            self,
            InstanceStep::Staging
                | InstanceStep::Draining
                | InstanceStep::Stopping
                | InstanceStep::Deploying
                | InstanceStep::Starting
                | InstanceStep::Verifying
                | InstanceStep::Undraining
        )
    }
}

impl Direction {
    /// The snake_case word; empty for `Unspecified`.
    pub fn as_text(self) -> &'static str {
        match self {
            Direction::Unspecified => "",
            Direction::Forward => "forward",
            Direction::Back => "back",
        }
    }

    pub fn from_text(s: &str) -> Direction {
        [Direction::Forward, Direction::Back]
            .into_iter()
            .find(|d| d.as_text() == s)
            .unwrap_or(Direction::Unspecified)
    }
}

/// The typed field when it is set, else what the deprecated text says.
fn typed_or<T>(raw: i32, unspecified: T, text: impl FnOnce() -> T) -> T
where
    T: Copy + PartialEq + TryFrom<i32>,
{
    match T::try_from(raw) {
        Ok(v) if v != unspecified => v,
        _ => text(),
    }
}

impl crate::v1::Rollout {
    /// The phase, from the enum or, from a coordinator a release older, the text.
    pub fn phase_kind(&self) -> RolloutPhase {
        typed_or(self.phase, RolloutPhase::Unspecified, || {
            RolloutPhase::from_text(&self.phase_text)
        })
    }
}

impl crate::v1::RolloutInstance {
    pub fn step_kind(&self) -> InstanceStep {
        typed_or(self.step, InstanceStep::Unspecified, || {
            InstanceStep::from_text(&self.step_text)
        })
    }

    pub fn direction_kind(&self) -> Direction {
        typed_or(self.direction, Direction::Unspecified, || {
            Direction::from_text(&self.direction_text)
        })
    }
}

impl crate::v1::RolloutEvent {
    pub fn step_kind(&self) -> InstanceStep {
        typed_or(self.step, InstanceStep::Unspecified, || {
            InstanceStep::from_text(&self.step_text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Rollout, RolloutInstance};

    #[test]
    fn every_word_reads_back_as_its_enum() {
        for p in RolloutPhase::ALL {
            assert_eq!(RolloutPhase::from_text(p.as_text()), p);
        }
        for s in InstanceStep::ALL {
            assert_eq!(InstanceStep::from_text(s.as_text()), s);
        }
        for d in [Direction::Forward, Direction::Back] {
            assert_eq!(Direction::from_text(d.as_text()), d);
        }
        assert_eq!(
            RolloutPhase::from_text("nonsense"),
            RolloutPhase::Unspecified
        );
    }

    #[test]
    fn the_enum_wins_and_an_older_peer_is_read_from_its_text() {
        let mut r = Rollout {
            phase_text: "rolling_back".into(),
            ..Rollout::default()
        };
        assert_eq!(r.phase_kind(), RolloutPhase::RollingBack);
        r.set_phase(RolloutPhase::Paused);
        assert_eq!(r.phase_kind(), RolloutPhase::Paused);
        let i = RolloutInstance {
            step_text: "verifying".into(),
            direction_text: "back".into(),
            ..RolloutInstance::default()
        };
        assert_eq!(i.step_kind(), InstanceStep::Verifying);
        assert_eq!(i.direction_kind(), Direction::Back);
        // A value from a newer peer this build does not know.
        let r = Rollout {
            phase: 99,
            ..Rollout::default()
        };
        assert_eq!(r.phase_kind(), RolloutPhase::Unspecified);
    }
}
