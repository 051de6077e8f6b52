//! `drover drill`: disaster-recovery drills (issue 13). `drill plan` checks
//! a DR plan (`dr.toml`) against the fleet, changing nothing.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_model::drill::DrillPlan;
use drover_proto::v1::drill_service_client::DrillServiceClient;
use drover_proto::v1::{
    CheckDrillPlanRequest, DrillPlanReport, ForgetDrillPlanRequest, KeptDrillPlan,
    ListKeptDrillPlansRequest,
};
use serde::Serialize;

use crate::commands::{Ctx, drill_run};
use crate::error::usage;
use crate::output::{ShowFormat, print, rfc3339_ms, table};

pub const DRILL_LONG_ABOUT: &str = "\
Disaster-recovery drills: move a service to its DR site and back

A DR plan (dr.toml) names the service, its sites (host labels, site=primary
and site=dr by default), the RTO and RPO, the pre-checks, and the commands
for what drover does not drive itself (reading the replication lag,
stopping writes, promoting the replica). Commands are bare names: the
coordinator runs them from its [drills] commands_dir, nothing else.

Example dr.toml:
  service = \"web\"
  version = \"2026-12-05.1\"
  rto = \"15m\"
  rpo = \"5s\"
  [checks]
  capacity = \"100%\"     # DR ready instances vs the primary's serving peak
  peak_window = \"24h\"
  [database]
  lag = [\"pg-lag\", \"--port\", \"5433\"]      # prints lag_bytes=N lag_seconds=F
  stop_writes = [\"pg-stop-writes\", \"--port\", \"5432\"]
  promote = [\"pg-promote\", \"--port\", \"5433\"]";

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Check a DR plan against the fleet, changing nothing
    ///
    /// Prints each pre-check with what was measured and what the plan asks
    /// for: the DR site's ready instances against the primary's serving
    /// peak, the releases on both sites, the replication lag (the plan's
    /// lag command) against the RPO, whether the traffic switch is
    /// possible, and whether the plan's commands are installed. Exits 0
    /// when every check passes, 1 when one fails (a run would be refused),
    /// 2 when the plan itself is malformed.
    ///
    /// With --keep the coordinator also keeps the plan (one per service; a
    /// new one replaces it) and checks it again every
    /// `checks.recheck_every` (default 30m): a check that stops passing is
    /// logged as a warning and shows on /metrics as
    /// drover_drill_plan_check_passing{service,check} 0. `drover drill
    /// plans` lists kept plans; `drover drill forget SERVICE` stops it.
    Plan(PlanArgs),
    /// List the plans kept with `drill plan --keep` and their latest checks
    ///
    /// For each: the service, how it is checked (graceful or ungraceful)
    /// and how often, when it was last checked, which checks fail and since
    /// when. Exits 1 when some kept plan fails a check.
    Plans(drill_run::ListArgs),
    /// Stop checking a service's kept plan
    Forget(ForgetArgs),
    /// Run a drill: move the service to its DR site, measured and reported
    ///
    /// Checks the plan (refused when a pre-check fails, unless --force
    /// REASON), then runs it on the coordinator as a tracked operation:
    /// the approval (graceful runs whose plan asks for one: another
    /// operator runs `drover drill approve ID`), stop writes, wait for the
    /// replica to catch up, promote it, move traffic to the DR site, verify
    /// it serves for the plan's hold. Follows it like `drill watch`; exits
    /// 0 only if it succeeded. `drover drill report ID` is the report.
    Run(drill_run::RunArgs),
    /// Approve a drill that waits for it (not the operator who started it)
    Approve(drill_run::IdArgs),
    /// Stop a drill and move the traffic back to where it came from
    Abort(drill_run::IdArgs),
    /// Follow a drill's steps live until it ends
    Watch(drill_run::IdArgs),
    /// List drills, failovers and fail-backs, and the age of the last good drill
    List(drill_run::ListArgs),
    /// The after-action report of a drill: -o md (default) or json
    ///
    /// The plan (version and sha256), who started and approved it, each
    /// pre-check with its value, the timeline of steps with durations,
    /// attempts and outputs, the recovery time against the RTO, the
    /// data-loss window (replication lag at cutover) against the RPO, and
    /// the findings.
    Report(drill_run::ReportArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The DR plan (TOML)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
    /// Judge the plan for an ungraceful run: the replication lag against
    /// the RPO as it is now (a graceful run stops writes and lets the
    /// replica catch up first)
    #[arg(long)]
    pub ungraceful: bool,
    /// Keep the plan on the coordinator and check it again on a schedule
    /// (`checks.recheck_every`, default 30m), warning when a check stops
    /// passing
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The service whose kept plan is no longer checked
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

/// Reads and checks a plan file; a mistake exits 2, naming the file.
pub fn read_plan(path: &std::path::Path) -> anyhow::Result<(String, DrillPlan)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("read the DR plan {}: {e}", path.display())))?;
    let plan =
        DrillPlan::from_toml(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Ok((text, plan))
}

#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    service: &'a str,
    plan_version: &'a str,
    plan_digest: &'a str,
    primary: &'a str,
    dr: &'a str,
    passed: bool,
    checked_at: Option<String>,
    checks: Vec<CheckJson<'a>>,
}

#[derive(Debug, Serialize)]
struct CheckJson<'a> {
    name: &'a str,
    passed: bool,
    value: &'a str,
    want: &'a str,
    detail: &'a str,
}

fn to_json(r: &DrillPlanReport) -> ReportJson<'_> {
    ReportJson {
        service: &r.service,
        plan_version: &r.plan_version,
        plan_digest: &r.plan_digest,
        primary: &r.primary,
        dr: &r.dr,
        passed: r.passed,
        checked_at: rfc3339_ms(r.checked_at_ms),
        checks: (r.checks.iter())
            .map(|c| CheckJson {
                name: &c.name,
                passed: c.passed,
                value: &c.value,
                want: &c.want,
                detail: &c.detail,
            })
            .collect(),
    }
}

fn render(r: &DrillPlanReport) -> String {
    let version = if r.plan_version.is_empty() {
        String::new()
    } else {
        format!(" version {}", r.plan_version)
    };
    let mut out = format!(
        "DR plan for {}{version} (sha256 {}): {} -> {}\n\n",
        r.service,
        r.plan_digest.get(..12).unwrap_or(&r.plan_digest),
        r.primary,
        r.dr
    );
    let rows: Vec<Vec<String>> = (r.checks.iter())
        .map(|c| {
            vec![
                c.name.clone(),
                if c.passed { "ok" } else { "FAILED" }.to_string(),
                c.value.clone(),
                c.want.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["CHECK", "RESULT", "MEASURED", "WANTED"], &rows));
    for c in r.checks.iter().filter(|c| !c.detail.is_empty()) {
        out.push_str(&format!("  {}: {}\n", c.name, c.detail));
    }
    out.push('\n');
    if r.passed {
        out.push_str("every pre-check passed\n");
    } else {
        let failed: Vec<&str> = (r.checks.iter())
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        out.push_str(&format!(
            "a drill would be refused: {} failed\n",
            failed.join(", ")
        ));
    }
    out
}

pub async fn run(ctx: &Ctx, cmd: DrillCommand) -> anyhow::Result<()> {
    match cmd {
        DrillCommand::Plan(args) => plan(ctx, args).await,
        DrillCommand::Plans(args) => plans(ctx, args).await,
        DrillCommand::Forget(args) => forget(ctx, args).await,
        DrillCommand::Run(args) => drill_run::start(ctx, args, "drill").await,
        DrillCommand::Approve(args) => drill_run::act(ctx, args, "approve").await,
        DrillCommand::Abort(args) => drill_run::act(ctx, args, "abort").await,
        DrillCommand::Watch(args) => drill_run::watch(ctx, args).await,
        DrillCommand::List(args) => drill_run::list(ctx, args).await,
        DrillCommand::Report(args) => drill_run::report(ctx, args).await,
    }
}

async fn plan(ctx: &Ctx, args: PlanArgs) -> anyhow::Result<()> {
    let (text, plan) = read_plan(&args.file)?;
    let session = ctx.session().await?;
    let mut client = DrillServiceClient::new(session.channel());
    let request = CheckDrillPlanRequest {
        plan_toml: text,
        ungraceful: args.ungraceful,
    };
    let (report, kept) = if args.keep {
        match client.keep_drill_plan(request).await {
            Ok(r) => {
                let kept = r.into_inner();
                (kept.last.clone().unwrap_or_default(), Some(kept))
            }
            Err(status) => return Err(session.rpc_error(status)),
        }
    } else {
        match client.check_drill_plan(request).await {
            Ok(r) => (r.into_inner(), None),
            Err(status) => return Err(session.rpc_error(status)),
        }
    };
    match args.output {
        ShowFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&to_json(&report)).context("encode the report")?
        ))?,
        ShowFormat::Table => {
            let mut out = render(&report);
            if kept.is_some() {
                out.push_str(&format!(
                    "kept: the coordinator checks it again every {} and warns when a check stops passing (`drover drill plans`)\n",
                    humantime::format_duration(plan.recheck_every())
                ));
            }
            print(&out)?;
        }
    }
    if report.passed {
        Ok(())
    } else {
        let failed: Vec<String> = (report.checks.iter())
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {} (wanted {})", c.name, c.value, c.want))
            .collect();
        anyhow::bail!("pre-checks failed: {}", failed.join("; "))
    }
}

#[derive(Debug, Serialize)]
struct KeptJson<'a> {
    service: &'a str,
    mode: &'static str,
    every_ms: i64,
    kept_by: &'a str,
    kept: Option<String>,
    next_check: Option<String>,
    failing_since: Option<String>,
    last: Option<ReportJson<'a>>,
}

fn failing(k: &KeptDrillPlan) -> Vec<&str> {
    (k.last.iter())
        .flat_map(|r| r.checks.iter())
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect()
}

async fn plans(ctx: &Ctx, args: drill_run::ListArgs) -> anyhow::Result<()> {
    let session = ctx.session().await?;
    let mut client = DrillServiceClient::new(session.channel());
    let plans = match client
        .list_kept_drill_plans(ListKeptDrillPlansRequest {})
        .await
    {
        Ok(r) => r.into_inner().plans,
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ShowFormat::Json => {
            let all: Vec<KeptJson<'_>> = (plans.iter())
                .map(|k| KeptJson {
                    service: &k.service,
                    mode: if k.ungraceful {
                        "ungraceful"
                    } else {
                        "graceful"
                    },
                    every_ms: k.every_ms,
                    kept_by: &k.kept_by,
                    kept: rfc3339_ms(k.kept_ms),
                    next_check: rfc3339_ms(k.next_check_ms),
                    failing_since: rfc3339_ms(k.failing_since_ms),
                    last: k.last.as_ref().map(to_json),
                })
                .collect();
            print(&format!(
                "{}\n",
                serde_json::to_string_pretty(&all).context("encode the plans")?
            ))?;
        }
        ShowFormat::Table => {
            if plans.is_empty() {
                print("no DR plan is kept (`drover drill plan -f dr.toml --keep` keeps one)\n")?;
            } else {
                let rows: Vec<Vec<String>> = (plans.iter())
                    .map(|k| {
                        let failed = failing(k);
                        vec![
                            k.service.clone(),
                            if k.ungraceful {
                                "ungraceful"
                            } else {
                                "graceful"
                            }
                            .to_string(),
                            humantime::format_duration(std::time::Duration::from_millis(
                                u64::try_from(k.every_ms).unwrap_or(0),
                            ))
                            .to_string(),
                            k.last
                                .as_ref()
                                .and_then(|r| rfc3339_ms(r.checked_at_ms))
                                .unwrap_or_else(|| "-".into()),
                            if failed.is_empty() {
                                "passing".to_string()
                            } else {
                                format!(
                                    "FAILING: {} (since {})",
                                    failed.join(", "),
                                    rfc3339_ms(k.failing_since_ms).unwrap_or_else(|| "-".into())
                                )
                            },
                        ]
                    })
                    .collect();
                print(&table(
                    &["SERVICE", "MODE", "EVERY", "CHECKED", "RESULT"],
                    &rows,
                ))?;
            }
        }
    }
    let failing: Vec<String> = (plans.iter())
        .filter(|k| !failing(k).is_empty())
        .map(|k| format!("{}: {}", k.service, failing(k).join(", ")))
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("kept DR plans fail pre-checks: {}", failing.join("; "))
    }
}

async fn forget(ctx: &Ctx, args: ForgetArgs) -> anyhow::Result<()> {
    let session = ctx.session().await?;
    let mut client = DrillServiceClient::new(session.channel());
    match client
        .forget_drill_plan(ForgetDrillPlanRequest {
            service: args.service.clone(),
        })
        .await
    {
        Ok(_) => print(&format!(
            "the DR plan of {} is no longer kept or checked\n",
            args.service
        )),
        Err(status) => Err(session.rpc_error(status)),
    }
}
