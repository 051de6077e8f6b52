//! `DrillService`: disaster-recovery plans and drills (issue 13).

use std::sync::Arc;

use drover_model::drill::{DrillPlan, plan_digest};
use drover_proto::identity::Role;
use drover_proto::v1::drill_service_server::DrillService;
use drover_proto::v1::{
    self as pb, CheckDrillPlanRequest, DrillActionRequest, DrillPlanReport, GetDrillRequest,
    ListDrillsRequest, ListDrillsResponse, StartDrillRequest,
};
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::drill::Check;
use crate::drill::engine::{Drill, Kind, Mode, StepState};
use crate::drill::kept::Kept;
use crate::registry::now_ms;

/// The largest plan text accepted.
const MAX_PLAN_BYTES: usize = 64 * 1024;

pub struct DrillSvc {
    pub ctx: Arc<Ctx>,
}

/// Parses and checks a plan's text, or says what is wrong with it.
pub fn parse_plan(text: &str) -> Result<DrillPlan, Status> {
    if text.len() > MAX_PLAN_BYTES {
        return Err(Status::invalid_argument(format!(
            "the plan is {} bytes; at most {MAX_PLAN_BYTES}",
            text.len()
        )));
    }
    DrillPlan::from_toml(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The wire view of a drill.
pub fn to_wire(d: &Drill) -> pb::Drill {
    let lag = d.lag_at_cutover;
    pb::Drill {
        id: d.id.clone(),
        kind: d.kind.as_str().to_string(),
        mode: match d.mode {
            Mode::Graceful => "graceful",
            Mode::Ungraceful => "ungraceful",
        }
        .to_string(),
        service: d.plan.service.clone(),
        phase: d.phase.as_str().to_string(),
        plan_version: d.plan.version.clone(),
        plan_digest: d.plan_digest.clone(),
        plan_toml: d.plan_text.clone(),
        started_by: d.started_by.clone(),
        started_ms: d.started_ms,
        forced_reason: d.forced.clone().unwrap_or_default(),
        approved_by: d.approved_by.clone().unwrap_or_default(),
        approved_ms: d.approved_ms.unwrap_or(0),
        prechecks: d.prechecks.iter().map(Check::to_wire).collect(),
        steps: (d.steps.iter())
            .map(|s| pb::DrillStep {
                name: s.name.as_str().to_string(),
                state: match s.state {
                    StepState::Pending => "pending",
                    StepState::Running => "running",
                    StepState::Done => "done",
                    StepState::Failed => "failed",
                    StepState::Skipped => "skipped",
                }
                .to_string(),
                started_ms: s.started_ms.unwrap_or(0),
                ended_ms: s.ended_ms.unwrap_or(0),
                attempts: s.attempts,
                output: s.output.clone(),
            })
            .collect(),
        source_site: d.source_site(),
        target_site: d.target_site(),
        switch_started_ms: d.switch_started_ms.unwrap_or(0),
        serving_ms: d.serving_ms.unwrap_or(0),
        verified_ms: d.verified_ms.unwrap_or(0),
        rto_ms: ms(d.plan.rto),
        rpo_ms: ms(d.plan.rpo),
        lag_measured: lag.is_some(),
        lag_bytes: lag.map_or(0, |l| l.bytes),
        lag_seconds: lag.map_or(0.0, |l| l.seconds),
        loss_from_ms: d.loss.map_or(0, |w| w.from_ms),
        loss_to_ms: d.loss.map_or(0, |w| w.to_ms),
        loss_end: d
            .loss
            .map(|w| w.end.as_str().to_string())
            .unwrap_or_default(),
        traffic: d.traffic.as_ref().map(|t| {
            let (target, source) = t.served();
            pb::DrillTraffic {
                from_ms: t.from_ms,
                to_ms: t.to_ms,
                target_requests: target.requests,
                target_failed: target.failed,
                source_requests: source.requests,
                source_failed: source.failed,
                serving_before: t.serving_before,
                floor: t.floor,
                lowest_serving: t.lowest_serving,
            }
        }),
        traffic_moved: d.traffic_moved,
        ended_ms: d.ended_ms.unwrap_or(0),
        reason: d.reason.clone(),
        aborted_by: d.aborted_by.clone().unwrap_or_default(),
        events: (d.events.iter())
            .map(|e| pb::DrillEvent {
                at_ms: e.at_ms,
                message: e.message.clone(),
            })
            .collect(),
    }
}

impl DrillSvc {
    async fn prechecks(&self, plan: &DrillPlan, graceful: bool, failback: bool) -> Vec<Check> {
        (self.ctx.kept_plans.checker())
            .check(plan, graceful, failback)
            .await
    }
}

/// A plan's check as the wire has it.
fn plan_report(plan: &DrillPlan, text: &str, checks: &[Check], at_ms: i64) -> DrillPlanReport {
    DrillPlanReport {
        service: plan.service.clone(),
        plan_version: plan.version.clone(),
        plan_digest: plan_digest(text),
        passed: checks.iter().all(|c| c.passed),
        checks: checks.iter().map(|c| c.to_wire()).collect(),
        checked_at_ms: at_ms,
        primary: format!("{}={}", plan.sites.label, plan.sites.primary),
        dr: format!("{}={}", plan.sites.label, plan.sites.dr),
    }
}

fn kept_to_wire(k: &Kept) -> Result<pb::KeptDrillPlan, Status> {
    let plan = parse_plan(&k.plan_text)?;
    Ok(pb::KeptDrillPlan {
        service: plan.service.clone(),
        ungraceful: k.ungraceful,
        every_ms: ms(plan.recheck_every()),
        kept_by: k.kept_by.clone(),
        kept_ms: k.kept_ms,
        last: Some(plan_report(&plan, &k.plan_text, &k.checks, k.checked_ms)),
        failing_since_ms: k.failing_since_ms.unwrap_or(0),
        next_check_ms: k.next_check_ms(),
    })
}

#[tonic::async_trait]
impl DrillService for DrillSvc {
    async fn start_drill(
        &self,
        request: Request<StartDrillRequest>,
    ) -> Result<Response<pb::Drill>, Status> {
        let caller = self.ctx.authz.require(&request, &[Role::Operator])?;
        let by = caller.cert.identity.name.clone();
        let req = request.into_inner();
        let kind = match req.kind.as_str() {
            "" | "drill" => Kind::Drill,
            "failover" => Kind::Failover,
            "failback" => Kind::Failback,
            other => {
                return Err(Status::invalid_argument(format!(
                    "kind must be drill, failover or failback, got {other:?}"
                )));
            }
        };
        let plan = parse_plan(&req.plan_toml)?;
        if kind == Kind::Failback && plan.database.as_ref().is_some_and(|d| d.failback.is_none()) {
            return Err(Status::invalid_argument(
                "a fail-back needs the plan's [database.failback] (lag, stop_writes and promote for the way back, once the old primary runs as a replica of the DR database)",
            ));
        }
        let mut checks = self
            .prechecks(&plan, !req.ungraceful, kind == Kind::Failback)
            .await;
        // A fail-back moves toward the primary: its capacity and release
        // checks are the DR plan's, read the other way; the lag check
        // still applies. An ungraceful run does not wait on the primary's
        // lag command.
        if kind == Kind::Failback {
            checks.retain(|c| c.name != "capacity" && c.name != "release");
        }
        if req.ungraceful {
            checks.retain(|c| c.name != "replication_lag");
        }
        let failed: Vec<String> = (checks.iter())
            .filter(|c| !c.passed)
            .map(|c| {
                format!(
                    "{}: {} (wanted {}){}",
                    c.name,
                    c.value,
                    c.want,
                    if c.detail.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", c.detail)
                    }
                )
            })
            .collect();
        let force = req.force_reason.trim().to_string();
        if !failed.is_empty() && force.is_empty() {
            return Err(Status::failed_precondition(format!(
                "refused: pre-checks failed: {} (fix them, or --force REASON to run anyway; the reason is recorded)",
                failed.join("; ")
            )));
        }
        let mode = if req.ungraceful {
            Mode::Ungraceful
        } else {
            Mode::Graceful
        };
        let digest = plan_digest(&req.plan_toml);
        let text = req.plan_toml.clone();
        let service = plan.service.clone();
        let busy = self.ctx.rollouts.running_services().contains(&service);
        let forced = (!force.is_empty()).then_some(force);
        let d = self
            .ctx
            .drill_runs
            .start(
                &service,
                |id| {
                    Drill::new(
                        id,
                        kind,
                        mode,
                        text,
                        plan,
                        digest,
                        by,
                        now_ms(),
                        forced,
                        checks,
                    )
                },
                busy,
            )
            .await?;
        Ok(Response::new(to_wire(&d)))
    }

    async fn get_drill(
        &self,
        request: Request<GetDrillRequest>,
    ) -> Result<Response<pb::Drill>, Status> {
        self.ctx
            .authz
            .require(&request, &[Role::Operator, Role::Viewer])?;
        let id = request.into_inner().id;
        let d = self.ctx.drill_runs.get(&id)?;
        Ok(Response::new(to_wire(&d)))
    }

    async fn list_drills(
        &self,
        request: Request<ListDrillsRequest>,
    ) -> Result<Response<ListDrillsResponse>, Status> {
        self.ctx
            .authz
            .require(&request, &[Role::Operator, Role::Viewer])?;
        Ok(Response::new(ListDrillsResponse {
            drills: (self.ctx.drill_runs.list().iter())
                .map(|d| {
                    let mut w = to_wire(d);
                    w.events.clear();
                    w.plan_toml.clear();
                    w
                })
                .collect(),
        }))
    }

    async fn act_on_drill(
        &self,
        request: Request<DrillActionRequest>,
    ) -> Result<Response<pb::Drill>, Status> {
        let caller = self.ctx.authz.require(&request, &[Role::Operator])?;
        let by = caller.cert.identity.name.clone();
        let req = request.into_inner();
        let d = match req.action.as_str() {
            "approve" => self.ctx.drill_runs.approve(&req.id, &by).await?,
            "abort" => self.ctx.drill_runs.abort(&req.id, &by).await?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "action must be approve or abort, got {other:?}"
                )));
            }
        };
        Ok(Response::new(to_wire(&d)))
    }

    async fn check_drill_plan(
        &self,
        request: Request<CheckDrillPlanRequest>,
    ) -> Result<Response<DrillPlanReport>, Status> {
        // It runs the plan's lag command: operators only.
        self.ctx.authz.require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        let text = req.plan_toml;
        let plan = parse_plan(&text)?;
        let now = now_ms();
        let checks = self.prechecks(&plan, !req.ungraceful, false).await;
        Ok(Response::new(plan_report(&plan, &text, &checks, now)))
    }

    async fn keep_drill_plan(
        &self,
        request: Request<CheckDrillPlanRequest>,
    ) -> Result<Response<pb::KeptDrillPlan>, Status> {
        // It runs the plan's lag command, now and on its schedule.
        let caller = self.ctx.authz.require(&request, &[Role::Operator])?;
        let by = caller.cert.identity.name.clone();
        let req = request.into_inner();
        let plan = parse_plan(&req.plan_toml)?;
        let kept = (self.ctx.kept_plans)
            .keep(&plan, &req.plan_toml, req.ungraceful, &by)
            .await
            .map_err(|e| Status::unavailable(format!("keep the plan: {e}")))?;
        Ok(Response::new(kept_to_wire(&kept)?))
    }

    async fn list_kept_drill_plans(
        &self,
        request: Request<pb::ListKeptDrillPlansRequest>,
    ) -> Result<Response<pb::ListKeptDrillPlansResponse>, Status> {
        self.ctx
            .authz
            .require(&request, &[Role::Operator, Role::Viewer])?;
        let plans = (self.ctx.kept_plans.list().iter())
            .map(kept_to_wire)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListKeptDrillPlansResponse { plans }))
    }

    async fn forget_drill_plan(
        &self,
        request: Request<pb::ForgetDrillPlanRequest>,
    ) -> Result<Response<pb::KeptDrillPlan>, Status> {
        self.ctx.authz.require(&request, &[Role::Operator])?;
        let service = request.into_inner().service;
        match self.ctx.kept_plans.forget(&service).await {
            Ok(Some(kept)) => Ok(Response::new(kept_to_wire(&kept)?)),
            Ok(None) => Err(Status::not_found(format!(
                "no DR plan is kept for service {service:?} (`drover drill plans` lists them)"
            ))),
            Err(e) => Err(Status::unavailable(format!("forget the plan: {e}"))),
        }
    }
}
