//! Rollouts and plans as a coordinator would send them, for the output tests.

use drover_proto::v1::{
    AnalysisArm, AnalysisLook, Direction, InstanceStep, PlannedBatch, PlannedSkip,
    PlannedTrafficStep, PlannedWave, Release, Rollout, RolloutAnalysis, RolloutCounts,
    RolloutEvent, RolloutInstance, RolloutPhase, RolloutPlan, RolloutTraffic, Strategy,
    TrafficStepResult, rollout_traffic,
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
        traffic: None,
        trace_id: String::new(),
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
        traffic_steps: Vec::new(),
    }
}

/// A canary of 4 steps baking its second, 12 minutes to go, step 1 passed.
pub fn baking_traffic() -> RolloutTraffic {
    let mut t = RolloutTraffic {
        steps_basis_points: vec![500, 2500, 5000, 10_000],
        step: 2,
        counting_from_ms: NOW - 60_000,
        bake_ends_at_ms: NOW + 720_000,
        looks: 3,
        last_look: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass".into(),
        results: vec![TrafficStepResult {
            step: 1,
            share_basis_points: 500,
            verdict: "passed".into(),
            at_ms: NOW - 120_000,
            reason: "30 looks, errors canary 2/1,204 vs baseline 21/22,980".into(),
        }],
        ..RolloutTraffic::default()
    };
    t.set_strategy(Strategy::Canary);
    t.set_stage(rollout_traffic::Stage::Baking);
    t
}

/// [`rollout`] as a canary baking its second step.
pub fn canary() -> Rollout {
    let mut r = rollout();
    r.wait_reason = "step 2/4 (25%) bakes until 14:25:20".into();
    r.traffic = Some(baking_traffic());
    r
}

/// A canary plan's traffic steps over [`plan`]'s 4 instances: 16 of 316
/// is 5%, 100 of 400 is 25%.
pub fn planned_steps() -> Vec<PlannedTrafficStep> {
    let step = |number, bp, updated, new_weight, bake_ms| PlannedTrafficStep {
        number,
        share_basis_points: bp,
        updated,
        new_weight,
        old_weight: 100,
        bake_ms,
    };
    vec![
        step(1, 500, 1, 16, 1_800_000),
        step(2, 2500, 1, 100, 1_800_000),
        step(3, 5000, 2, 100, 1_800_000),
        step(4, 10_000, 4, 100, 0),
    ]
}

/// Two steps' looks: step 1 passed on its second, step 2 failed on its
/// first.
pub fn analysis() -> RolloutAnalysis {
    let arm = |attempts, errors, latency_ms| {
        Some(AnalysisArm {
            attempts,
            errors,
            latency_ms,
        })
    };
    let look = AnalysisLook {
        step: 1,
        share_basis_points: 500,
        look: 1,
        at_ms: NOW - 60_000,
        source: "haproxy".into(),
        canary_instances: 1,
        baseline_instances: 5,
        canary: arm(100, 0, Some(40.0)),
        baseline: arm(1900, 1, Some(39.5)),
        p_value: Some(1.0),
        verdict: "continue".into(),
        reason: "errors canary 0/100 (0.00%) vs baseline 1/1,900 (0.05%)".into(),
        last: false,
        judgement_json: "{}".into(),
    };
    RolloutAnalysis {
        id: "web-8".into(),
        looks: vec![
            look.clone(),
            AnalysisLook {
                look: 2,
                at_ms: NOW,
                canary: arm(612, 3, Some(41.5)),
                baseline: arm(2390, 9, None),
                p_value: Some(0.62),
                verdict: "pass".into(),
                reason: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%)".into(),
                last: true,
                ..look.clone()
            },
            AnalysisLook {
                step: 2,
                share_basis_points: 2500,
                look: 1,
                at_ms: NOW + 60_000,
                canary_instances: 2,
                baseline_instances: 4,
                canary: arm(150, 9, Some(42.0)),
                baseline: arm(3400, 2, Some(40.1)),
                p_value: Some(1.2e-9),
                verdict: "fail".into(),
                reason: "errors canary 9/150 (6.00%) vs baseline 2/3,400 (0.06%)".into(),
                ..look
            },
        ],
    }
}
