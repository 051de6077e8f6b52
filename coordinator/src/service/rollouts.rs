//! The rollout half of `ControlService`: spec resolution and the
//! conversions between the engine's types and the wire.

use drover_proto::v1 as pb;
use tonic::Status;

use crate::rollout::{
    Block, DigestRule, Direction, Engine, Phase, Plan, PlanError, Release, RolloutEvent,
    RolloutSpec, Step, StopReason, Unfinished,
};
use crate::runner::{Snapshot, target_instances};

use super::Ctx;

/// The spec the CLI sent, checked, without its digest resolved yet.
pub fn read_spec(wire: Option<&pb::RolloutSpec>) -> Result<RolloutSpec, Status> {
    let wire = wire.ok_or_else(|| {
        Status::invalid_argument(
            "rollout spec: the request carries no spec; a drover CLI older than this \
             coordinator sends it as TOML text, which is no longer read: upgrade the CLI",
        )
    })?;
    let spec = RolloutSpec::try_from(wire)
        .map_err(|e| Status::invalid_argument(format!("rollout spec: {e}")))?;
    // Everything but the digest, before the artifact is looked up by
    // service and version; the same check the CLI ran.
    spec.check(DigestRule::MayBeEmpty)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// Reads the spec the CLI sent and fills in the artifact's digest.
pub async fn resolve_spec(
    ctx: &Ctx,
    wire: Option<&pb::RolloutSpec>,
) -> Result<RolloutSpec, Status> {
    let mut spec = read_spec(wire)?;
    let artifact = ctx
        .artifacts
        .get(&spec.service, &spec.target.version)
        .await?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no artifact for service {} version {}; push one with `drover artifact push FILE --service {} --version {}`",
                spec.service, spec.target.version, spec.service, spec.target.version
            ))
        })?;
    if spec.target.digest.is_empty() {
        spec.target.digest = artifact.digest;
    } else if spec.target.digest != artifact.digest {
        return Err(Status::invalid_argument(format!(
            "target.digest: expected {} (the artifact pushed as {} {}), got {}",
            artifact.digest, spec.service, spec.target.version, spec.target.digest
        )));
    }
    spec.validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

pub fn plan(ctx: &Ctx, spec: &RolloutSpec) -> Result<pb::RolloutPlan, Status> {
    let instances = target_instances(&ctx.registry, spec);
    ctx.rollouts
        .fits(instances.len())
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    let plan = crate::runner::hooks::check(spec, ctx.rollouts.hooks());
    let plan = plan
        .and_then(|()| Engine::plan(spec, instances))
        .map_err(|e| match e {
            PlanError::Spec(_) | PlanError::BadId(_) => Status::invalid_argument(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
    Ok(plan_to_proto(plan, spec.to_toml()))
}

fn release(r: &Release) -> pb::Release {
    pb::Release {
        version: r.version.clone(),
        digest: r.digest.clone(),
    }
}

fn ms(m: crate::rollout::Millis) -> i64 {
    i64::try_from(m.0).unwrap_or(i64::MAX)
}

pub fn phase(p: Phase) -> pb::RolloutPhase {
    match p {
        Phase::Running => pb::RolloutPhase::Running,
        Phase::Paused => pb::RolloutPhase::Paused,
        Phase::Stopping => pb::RolloutPhase::Stopping,
        Phase::RollingBack => pb::RolloutPhase::RollingBack,
        Phase::Aborting => pb::RolloutPhase::Aborting,
        Phase::Succeeded => pb::RolloutPhase::Succeeded,
        Phase::Failed => pb::RolloutPhase::Failed,
        Phase::RolledBack => pb::RolloutPhase::RolledBack,
        Phase::Aborted => pb::RolloutPhase::Aborted,
    }
}

pub fn step(s: Step) -> pb::InstanceStep {
    match s {
        Step::Pending => pb::InstanceStep::Pending,
        Step::Staging => pb::InstanceStep::Staging,
        Step::Draining => pb::InstanceStep::Draining,
        Step::Stopping => pb::InstanceStep::Stopping,
        Step::Deploying => pb::InstanceStep::Deploying,
        Step::Starting => pb::InstanceStep::Starting,
        Step::Verifying => pb::InstanceStep::Verifying,
        Step::Undraining => pb::InstanceStep::Undraining,
        Step::Done => pb::InstanceStep::Done,
        Step::Failed => pb::InstanceStep::Failed,
        Step::Skipped => pb::InstanceStep::Skipped,
        Step::RolledBack => pb::InstanceStep::RolledBack,
        Step::Weighting => pb::InstanceStep::Weighting,
    }
}

pub fn direction(d: Direction) -> pb::Direction {
    match d {
        Direction::Forward => pb::Direction::Forward,
        Direction::Back => pb::Direction::Back,
    }
}

pub fn event_to_proto(e: &RolloutEvent) -> pb::RolloutEvent {
    let step = e.step.map_or(pb::InstanceStep::Unspecified, step);
    pb::RolloutEvent {
        at_ms: ms(e.at),
        instance: e.instance.clone().unwrap_or_default(),
        step: step as i32,
        step_text: step.as_text().to_string(),
        capacity: e.capacity,
        floor: e.floor,
        message: e.message.clone(),
    }
}

pub fn wait(b: &Block) -> pb::RolloutWait {
    use pb::rollout_wait::Kind;
    let mut w = pb::RolloutWait::default();
    let kind = match b {
        Block::Floor { capacity, floor } => {
            (w.capacity, w.floor) = (*capacity, *floor);
            Kind::Floor
        }
        Block::MaxUnavailable { inflight, max } => {
            (w.in_progress, w.max) = (*inflight, *max);
            Kind::MaxUnavailable
        }
        Block::Spread {
            label,
            value,
            down,
            max,
        } => {
            (w.label, w.value) = (label.clone(), value.clone());
            (w.down, w.max) = (*down, *max);
            Kind::Spread
        }
        Block::Paused => Kind::Paused,
        Block::HealthReports { instances } => {
            w.instances = *instances;
            Kind::HealthReports
        }
        Block::LostHosts { hosts } => {
            w.hosts.clone_from(hosts);
            Kind::LostHosts
        }
        Block::Stopping { instances } => {
            w.instances = *instances;
            Kind::Stopping
        }
        Block::Weighting {
            step,
            share,
            instances,
        } => {
            (w.step, w.share_basis_points) = (*step, share.basis_points());
            w.instances = *instances;
            Kind::Weighting
        }
        Block::Baking { step, share } => {
            (w.step, w.share_basis_points) = (*step, share.basis_points());
            Kind::Baking
        }
        Block::Inconclusive { step, share } => {
            (w.step, w.share_basis_points) = (*step, share.basis_points());
            Kind::Inconclusive
        }
        Block::Unweighting { instances } => {
            w.instances = *instances;
            Kind::Unweighting
        }
        Block::Colors { what, instances } => {
            (w.label, w.instances) = (what.clone(), *instances);
            Kind::Colors
        }
        Block::Hook { name } => {
            w.label.clone_from(name);
            Kind::Hook
        }
        Block::KeepingOld { color, until } => {
            (w.label, w.until_ms) = (color.clone(), ms(*until));
            Kind::KeepingOld
        }
        Block::Text(_) => Kind::Other,
    };
    w.set_kind(kind);
    w
}

pub fn stop(r: &StopReason) -> pb::RolloutStop {
    use pb::rollout_stop::{Kind, Unfinished as U};
    let mut s = pb::RolloutStop::default();
    let kind = match r {
        StopReason::FailureBudget { failed, max, who } => {
            (s.count, s.max, s.instances) = (*failed, *max, who.clone());
            Kind::FailureBudget
        }
        StopReason::UnreachableBudget {
            unreachable,
            max,
            who,
        } => {
            (s.count, s.max, s.instances) = (*unreachable, *max, who.clone());
            Kind::UnreachableBudget
        }
        StopReason::ProgressDeadline { after_ms, waiting } => {
            s.after_ms = *after_ms;
            s.waiting = waiting.as_ref().map(wait);
            Kind::ProgressDeadline
        }
        StopReason::OperatorAbort => Kind::OperatorAbort,
        StopReason::OperatorRollback => Kind::OperatorRollback,
        StopReason::FailedWithinBudget { failed } => {
            s.instances.clone_from(failed);
            Kind::FailedWithinBudget
        }
        StopReason::Incomplete {
            reason,
            unfinished,
            problems,
        } => {
            let mut inner = stop(reason);
            inner.set_unfinished(match unfinished {
                Unfinished::Rollback => U::Rollback,
                Unfinished::Abort => U::Abort,
                Unfinished::HostLost => U::HostLost,
                Unfinished::Weights => U::Weights,
            });
            inner.problems.clone_from(problems);
            return inner;
        }
        StopReason::AnalysisFailed { step, share, why } => {
            (s.step, s.share_basis_points) = (*step, share.basis_points());
            s.why.clone_from(why);
            Kind::AnalysisFailed
        }
        StopReason::Inconclusive { step, share, why } => {
            (s.step, s.share_basis_points) = (*step, share.basis_points());
            s.why.clone_from(why);
            Kind::Inconclusive
        }
        StopReason::Weights { who } => {
            s.instances.clone_from(who);
            Kind::Weights
        }
        StopReason::WeightsNotRestored { who } => {
            s.instances.clone_from(who);
            Kind::WeightsNotRestored
        }
        StopReason::BlueGreen { why, who } => {
            s.why.clone_from(why);
            s.instances.clone_from(who);
            Kind::BlueGreen
        }
        StopReason::Halted { .. } => Kind::Halted,
        StopReason::Text(_) => Kind::Other,
    };
    s.set_kind(kind);
    s
}

/// Which instances a [`to_proto`] answer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    None,
    /// Those mid-step: what a live view shows while the rollout runs.
    InFlight,
    All,
}

pub fn to_proto(s: &Snapshot, events: &[RolloutEvent], listed: Listed) -> pb::Rollout {
    let st = &s.status;
    let reason = st.reason.clone().or_else(|| {
        st.outcome.as_ref().and_then(|o| match o {
            crate::rollout::Outcome::Succeeded => None,
            crate::rollout::Outcome::Failed { reason }
            | crate::rollout::Outcome::RolledBack { reason }
            | crate::rollout::Outcome::Aborted { reason } => Some(reason.clone()),
        })
    });
    pb::Rollout {
        trace_id: s.trace_id.clone(),
        id: st.id.clone(),
        service: st.service.clone(),
        selector: s.selector.clone(),
        target: Some(release(&st.target)),
        phase: phase(st.phase) as i32,
        phase_text: phase(st.phase).as_text().to_string(),
        reason: reason.as_ref().map(ToString::to_string).unwrap_or_default(),
        stop: reason.as_ref().map(stop),
        batch: st.batch,
        counts: Some(pb::RolloutCounts {
            total: st.counts.total,
            pending: st.counts.pending,
            in_progress: st.counts.in_progress,
            done: st.counts.done,
            failed: st.counts.failed,
            skipped: st.counts.skipped,
            unreachable: st.counts.unreachable,
            rolled_back: st.counts.rolled_back,
        }),
        capacity: st.capacity,
        floor: st.floor,
        lowest_capacity: st.lowest_capacity,
        wait_reason: st
            .wait_reason
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        wait: st.wait_reason.as_ref().map(wait),
        started_at_ms: ms(st.started_at),
        finished_at_ms: st.finished_at.map(ms).unwrap_or(0),
        instances: if listed == Listed::None {
            Vec::new()
        } else {
            (st.instances.iter())
                .filter(|i| listed == Listed::All || i.step.in_chain())
                .map(|i| pb::RolloutInstance {
                    id: i.id.clone(),
                    host: i.host.clone(),
                    step: step(i.step) as i32,
                    step_text: step(i.step).as_text().to_string(),
                    direction: direction(i.direction) as i32,
                    direction_text: direction(i.direction).as_text().to_string(),
                    batch: i.batch.unwrap_or(0),
                    release: i.release.as_ref().map(release),
                    previous: i.previous.as_ref().map(release),
                    available: i.available,
                    reachable: i.reachable,
                    error: i.error.clone().unwrap_or_default(),
                    note: i.note.clone().unwrap_or_default(),
                    progress: s.progress.get(&i.id).cloned().unwrap_or_default(),
                })
                .collect()
        },
        events: events.iter().map(event_to_proto).collect(),
        spec_toml: s.spec_toml.clone(),
        started_by: s.started_by.clone(),
        traffic: st.traffic.as_ref().map(traffic),
    }
}

pub fn plan_to_proto(p: Plan, spec_toml: String) -> pb::RolloutPlan {
    pb::RolloutPlan {
        service: p.service,
        target: Some(release(&p.target)),
        total: p.total,
        floor: p.floor,
        capacity: p.capacity,
        skipped: p
            .skipped
            .into_iter()
            .map(|s| pb::PlannedSkip {
                instance: s.instance,
                reason: s.reason,
            })
            .collect(),
        batches: p
            .batches
            .into_iter()
            .map(|b| pb::PlannedBatch {
                number: b.number,
                instances: b.instances,
                waves: b
                    .waves
                    .into_iter()
                    .map(|w| pb::PlannedWave { instances: w })
                    .collect(),
                max_down: b.max_down,
                lowest_capacity: b.lowest_capacity,
            })
            .collect(),
        lowest_capacity: p.lowest_capacity,
        stalls: p.stalls.unwrap_or_default(),
        spec_toml,
        traffic_steps: (p.traffic_steps.iter())
            .map(|s| pb::PlannedTrafficStep {
                number: s.number,
                share_basis_points: s.share.basis_points(),
                updated: s.updated,
                new_weight: s.new_weight,
                old_weight: s.old_weight,
                bake_ms: u64::try_from(s.bake.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
    }
}

/// A canary's traffic steps on the wire.
pub fn traffic(t: &crate::rollout::TrafficStatus) -> pb::RolloutTraffic {
    use crate::rollout::TrafficStage as S;
    use crate::rollout::traffic::StepVerdict as V;
    use pb::rollout_traffic::Stage;
    let stage = match t.stage {
        S::Updating => Stage::Updating,
        S::Weighting => Stage::Weighting,
        S::Baking => Stage::Baking,
        S::Held => Stage::Held,
        S::Passed => Stage::Passed,
        S::Isolating => Stage::Isolating,
        S::Hook => Stage::Hook,
        S::Switched => Stage::Switched,
        S::Retiring => Stage::Retiring,
        S::Retired => Stage::Retired,
    };
    pb::RolloutTraffic {
        strategy: match t.active_color {
            Some(_) => pb::Strategy::BlueGreen,
            None => pb::Strategy::Canary,
        } as i32,
        active_color: t
            .active_color
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        keep_old_until_ms: t.keep_old_until.map(ms).unwrap_or(0),
        steps_basis_points: t.steps.iter().map(|s| s.basis_points()).collect(),
        step: t.step,
        stage: stage as i32,
        counting_from_ms: t.counting_from.map(ms).unwrap_or(0),
        bake_ends_at_ms: t.bake_ends_at.map(ms).unwrap_or(0),
        looks: t.looks,
        last_look: t.last_look.clone().unwrap_or_default(),
        results: (t.results.iter())
            .map(|r| pb::TrafficStepResult {
                step: r.step,
                share_basis_points: r.share.basis_points(),
                verdict: match r.verdict {
                    V::Passed => "passed",
                    V::Promoted => "promoted",
                    V::PassedInconclusive => "passed_inconclusive",
                }
                .to_string(),
                at_ms: ms(r.at),
                reason: r.reason.clone(),
            })
            .collect(),
    }
}

/// One stored look of a canary's analysis on the wire.
pub fn look(j: &crate::rollout::traffic::StepJudgement) -> pb::AnalysisLook {
    let arm = |a: &drover_analysis::Arm, ms: Option<f64>| pb::AnalysisArm {
        attempts: a.attempts,
        errors: a.errors,
        latency_ms: ms,
    };
    let jd = &j.judgement;
    pb::AnalysisLook {
        step: j.step,
        share_basis_points: j.share.basis_points(),
        look: j.look,
        at_ms: jd.at_ms,
        source: j.source.as_str().to_string(),
        canary_instances: j.canary_instances,
        baseline_instances: j.baseline_instances,
        canary: Some(arm(&jd.canary, jd.latency.canary_ms)),
        baseline: Some(arm(&jd.baseline, jd.latency.baseline_ms)),
        p_value: jd.errors.p_value,
        verdict: match jd.verdict {
            drover_analysis::Verdict::Pass => "pass",
            drover_analysis::Verdict::Fail => "fail",
            drover_analysis::Verdict::Inconclusive => "inconclusive",
            drover_analysis::Verdict::Continue => "continue",
        }
        .to_string(),
        reason: jd.reason.clone(),
        last: j.last,
        judgement_json: serde_json::to_string(jd).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_proto::v1 as pb;

    use super::{Listed, to_proto};
    use crate::rollout::{
        Amount, Direction, Engine, InstanceInfo, Millis, Phase, Release, RolloutSpec, Step,
    };

    fn serde_word<T: serde::Serialize>(v: &T) -> String {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => s,
            other => panic!("not a word: {other:?}"),
        }
    }

    /// The words on the wire (and so in the CLI's JSON) are the ones the
    /// engine has always serialized and the wire used to carry as strings.
    #[test]
    fn the_wire_words_are_the_engine_words() {
        let phases = [
            Phase::Running,
            Phase::Paused,
            Phase::Stopping,
            Phase::RollingBack,
            Phase::Aborting,
            Phase::Succeeded,
            Phase::Failed,
            Phase::RolledBack,
            Phase::Aborted,
        ];
        for p in phases {
            assert_eq!(super::phase(p).as_text(), serde_word(&p));
        }
        let mut steps = vec![Step::Pending, Step::Done, Step::Failed, Step::Skipped];
        steps.extend(Step::CHAIN);
        steps.push(Step::RolledBack);
        for s in steps {
            assert_eq!(super::step(s).as_text(), serde_word(&s));
        }
        for d in [Direction::Forward, Direction::Back] {
            assert_eq!(super::direction(d).as_text(), serde_word(&d));
        }
        assert_eq!(pb::RolloutPhase::RollingBack.as_text(), "rolling_back");
    }
    use crate::runner::Snapshot;

    fn snapshot(n: usize) -> Snapshot {
        let old = Release::new("v1", "1".repeat(64));
        let infos = (1..=n)
            .map(|k| InstanceInfo {
                id: format!("web@h{k:02}"),
                host: format!("h{k:02}"),
                labels: BTreeMap::new(),
                release: Some(old.clone()),
                healthy: true,
                in_service: true,
                reachable: true,
                balancers: Vec::new(),
                color: None,
            })
            .collect();
        let spec = RolloutSpec {
            service: "web".to_string(),
            target: Release::new("v2", "2".repeat(64)),
            batches: vec![Amount::Count(2)],
            min_healthy: Amount::Percent(50),
            ..RolloutSpec::default()
        };
        let (engine, _) = Engine::start("web-1", spec, infos, Millis(0)).expect("start");
        Snapshot {
            status: engine.status(),
            progress: BTreeMap::new(),
            events: 0,
            started_by: String::new(),
            spec_toml: String::new(),
            selector: String::new(),
            trace_id: String::new(),
        }
    }

    #[test]
    fn wait_and_stop_reasons_go_on_the_wire_typed_beside_their_text() {
        use crate::rollout::{Block, StopReason, Unfinished};
        use pb::rollout_stop::{Kind, Unfinished as U};

        let w = super::wait(&Block::Spread {
            label: "zone".into(),
            value: "a".into(),
            down: 2,
            max: 1,
        });
        assert_eq!(w.kind(), pb::rollout_wait::Kind::Spread);
        assert_eq!(
            (w.label.as_str(), w.value.as_str(), w.down, w.max),
            ("zone", "a", 2, 1)
        );

        let r = StopReason::Incomplete {
            reason: Box::new(StopReason::progress_deadline(
                std::time::Duration::from_secs(600),
                Some(Block::Floor {
                    capacity: 3,
                    floor: 4,
                }),
            )),
            unfinished: Unfinished::Rollback,
            problems: vec!["web@h1: host h1 lost".into()],
        };
        let s = super::stop(&r);
        assert_eq!(s.kind(), Kind::ProgressDeadline);
        assert_eq!(s.unfinished(), U::Rollback);
        assert_eq!(s.after_ms, 600_000);
        assert_eq!(s.problems, ["web@h1: host h1 lost"]);
        let waiting = s.waiting.expect("waiting");
        assert_eq!(
            (waiting.kind(), waiting.capacity, waiting.floor),
            (pb::rollout_wait::Kind::Floor, 3, 4)
        );
        assert_eq!(
            super::stop(&StopReason::Text("old".into())).kind(),
            Kind::Other
        );

        // The snapshot's reasons land in both the text and the typed field.
        let mut snap = snapshot(4);
        snap.status.wait_reason = Some(Block::Paused);
        snap.status.reason = Some(StopReason::OperatorAbort);
        let p = to_proto(&snap, &[], Listed::None);
        assert_eq!(p.wait_reason, "paused by operator");
        assert_eq!(
            p.wait.map(|w| w.kind()),
            Some(pb::rollout_wait::Kind::Paused)
        );
        assert_eq!(p.reason, "aborted by operator");
        assert_eq!(p.stop.map(|s| s.kind()), Some(Kind::OperatorAbort));
    }

    #[test]
    fn a_spec_message_is_checked_as_the_cli_checks_it() {
        let e = super::read_spec(None).expect_err("no spec");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("upgrade the CLI"), "{}", e.message());

        let spec = RolloutSpec {
            service: "web".to_string(),
            target: Release::new("v2", ""),
            ..RolloutSpec::default()
        };
        let wire = pb::RolloutSpec::from(&spec);
        assert_eq!(super::read_spec(Some(&wire)).expect("valid"), spec);

        let mut bad = wire.clone();
        bad.min_healthy = Some(Amount::Percent(120).into());
        let e = super::read_spec(Some(&bad)).expect_err("over 100%");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("min_healthy: "), "{}", e.message());

        bad.min_healthy = None;
        let e = super::read_spec(Some(&bad)).expect_err("unset");
        assert_eq!(
            e.message(),
            "rollout spec: min_healthy: expected a count like 3 or a percentage like 25%, got nothing"
        );
    }

    #[test]
    fn a_live_update_lists_the_instances_mid_step_and_the_full_answer_all() {
        let snap = snapshot(10);
        let ids = |listed| -> Vec<String> {
            (to_proto(&snap, &[], listed).instances.into_iter())
                .map(|i| i.id)
                .collect()
        };
        assert_eq!(ids(Listed::InFlight), ["web@h01", "web@h02"]);
        assert_eq!(ids(Listed::All).len(), 10);
        assert!(ids(Listed::None).is_empty());
        let counts = to_proto(&snap, &[], Listed::InFlight)
            .counts
            .expect("counts");
        assert_eq!(
            (counts.total, counts.in_progress, counts.pending),
            (10, 2, 8)
        );
    }
}
