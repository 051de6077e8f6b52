//! `DrillService`: disaster-recovery plans and drills (issue 13).

use std::sync::Arc;

use drover_model::drill::{DrillPlan, plan_digest};
use drover_proto::identity::Role;
use drover_proto::v1::drill_service_server::DrillService;
use drover_proto::v1::{CheckDrillPlanRequest, DrillPlanReport};
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::drill::{Fleet, precheck};
use crate::registry::now_ms;
use crate::selector::Selector;

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

#[tonic::async_trait]
impl DrillService for DrillSvc {
    async fn check_drill_plan(
        &self,
        request: Request<CheckDrillPlanRequest>,
    ) -> Result<Response<DrillPlanReport>, Status> {
        // It runs the plan's lag command: operators only.
        self.ctx.authz.require(&request, &[Role::Operator])?;
        let text = request.into_inner().plan_toml;
        let plan = parse_plan(&text)?;
        let hosts = self.ctx.registry.list(&Selector::everything());
        let now = now_ms();
        let checks = precheck::check(
            &plan,
            &Fleet {
                hosts: &hosts,
                peaks: &self.ctx.peaks,
                now_ms: now,
                commands_dir: self.ctx.drills.commands_dir.as_deref(),
            },
        )
        .await;
        Ok(Response::new(DrillPlanReport {
            service: plan.service.clone(),
            plan_version: plan.version.clone(),
            plan_digest: plan_digest(&text),
            passed: checks.iter().all(|c| c.passed),
            checks: checks.iter().map(|c| c.to_wire()).collect(),
            checked_at_ms: now,
            primary: format!("{}={}", plan.sites.label, plan.sites.primary),
            dr: format!("{}={}", plan.sites.label, plan.sites.dr),
        }))
    }
}
