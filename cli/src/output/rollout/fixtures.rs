//! Rollouts and plans as a coordinator would send them, for the output tests.

use drover_proto::v1::{
    Direction, InstanceStep, PlannedBatch, PlannedSkip, PlannedWave, Release, Rollout,
    RolloutCounts, RolloutEvent, RolloutInstance, RolloutPhase, RolloutPlan,
};

use crate::output::fixtures::NOW;

pub fn release(v: &str) -> Option<Release> {
    Some(Release {
        version: v.into(),
        digest: "ab".repeat(32),
    })
}

pub fn rollout() -> Rollout {
    Rollout {
        traffic: None,
        id: "r7".into(),
        service: "web".into(),
        selector: "env=prod".into(),
        target: release("v2"),
        phase: RolloutPhase::Running as i32,
        // What a coordinator sends fills both; the fixtures leave the
        // deprecated text empty so the tests show the enum is what is read.
        phase_text: String::new(),
        reason: String::new(),
        batch: 2,
        counts: Some(RolloutCounts {
            total: 3,
            pending: 1,
            in_progress: 1,
            done: 1,
            ..RolloutCounts::default()
        }),
        capacity: 2,
        floor: 2,
        lowest_capacity: 2,
        wait_reason: String::new(),
        started_at_ms: NOW - 90_000,
        finished_at_ms: 0,
        instances: vec![
            RolloutInstance {
                id: "web@h1".into(),
                host: "h1".into(),
                step: InstanceStep::Done as i32,
                direction: Direction::Forward as i32,
                batch: 1,
                release: release("v2"),
                previous: release("v1"),
                available: true,
                reachable: true,
                ..RolloutInstance::default()
            },
            RolloutInstance {
                id: "web@h2".into(),
                host: "h2".into(),
                step: InstanceStep::Deploying as i32,
                direction: Direction::Forward as i32,
                batch: 2,
                release: release("v1"),
                previous: release("v1"),
                reachable: true,
                progress: "unpacking 40%".into(),
                ..RolloutInstance::default()
            },
            RolloutInstance {
                id: "web@h3".into(),
                host: "h3".into(),
                step: InstanceStep::Pending as i32,
                direction: Direction::Forward as i32,
                release: Some(Release::default()),
                previous: None,
                available: true,
                reachable: true,
                ..RolloutInstance::default()
            },
        ],
        events: Vec::new(),
        spec_toml: String::new(),
        started_by: "operator/alice".into(),
        wait: None,
        stop: None,
    }
}

pub fn event(at_ms: i64, instance: &str, step: &str, message: &str) -> RolloutEvent {
    RolloutEvent {
        at_ms,
        instance: instance.into(),
        step: InstanceStep::from_text(step) as i32,
        step_text: String::new(),
        capacity: 2,
        floor: 2,
        message: message.into(),
    }
}

pub fn plan() -> RolloutPlan {
    RolloutPlan {
        traffic_steps: Vec::new(),
        service: "web".into(),
        target: release("v2"),
        total: 4,
        floor: 3,
        capacity: 4,
        skipped: vec![PlannedSkip {
            instance: "web@h4".into(),
            reason: "already on v2".into(),
        }],
        batches: vec![
            PlannedBatch {
                number: 1,
                instances: vec!["web@h1".into()],
                waves: vec![PlannedWave {
                    instances: vec!["web@h1".into()],
                }],
                max_down: 1,
                lowest_capacity: 3,
            },
            PlannedBatch {
                number: 2,
                instances: vec!["web@h2".into(), "web@h3".into()],
                waves: vec![
                    PlannedWave {
                        instances: vec!["web@h2".into()],
                    },
                    PlannedWave {
                        instances: vec!["web@h3".into()],
                    },
                    // As the planner sends them: an empty one at the end.
                    PlannedWave { instances: vec![] },
                ],
                max_down: 1,
                lowest_capacity: 3,
            },
        ],
        lowest_capacity: 3,
        stalls: String::new(),
        spec_toml: String::new(),
    }
}
