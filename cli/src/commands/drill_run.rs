//! `drover drill run|approve|abort|watch|list|report`, `drover failover`
//! and `drover failback`: DR operations as tracked, persisted runs on the
//! coordinator.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use drover_proto::v1::drill_service_client::DrillServiceClient;
use drover_proto::v1::{
    Drill, DrillActionRequest, GetDrillRequest, ListDrillsRequest, StartDrillRequest,
};
use tonic::Code;

use crate::commands::Ctx;
use crate::commands::drill::read_plan;
use crate::error::{LostContact, usage};
use crate::output::{ShowFormat, now_ms, print, relative, rfc3339_ms, table};

/// How long `watch` keeps trying to reach a coordinator (a failover of
/// the coordinators themselves takes a lease and an election).
const RECONNECT_FOR: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The DR plan (TOML)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// The primary is gone: no approval, no stopping of writes, no waiting
    /// for the replica; the data-loss window is what the lag said last
    #[arg(long)]
    pub ungraceful: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Run even though pre-checks fail; REASON is recorded in the report
    #[arg(long, value_name = "REASON")]
    pub force: Option<String>,
    /// Return once started, with its id, instead of following it
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The drill's id (dr-N)
    pub id: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// Markdown, to file with the incident or the audit
    Md,
    /// JSON, for scripts
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The drill's id (dr-N)
    pub id: String,
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "md")]
    pub output: ReportFormat,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

fn client(session: &crate::conn::Session) -> DrillServiceClient<crate::leader::LeaderChannel> {
    DrillServiceClient::new(session.channel())
}

pub fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// `HH:MM:SS.mmm` (UTC) of unix milliseconds.
fn clock(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    let s = day_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        day_ms % 1000
    )
}

fn confirm(prompt: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{prompt}: pass --yes to confirm (stdin is not a terminal)"
        )));
    }
    eprint!("{prompt} [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read the answer")?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not started")
    }
}

/// `drover drill run`, `drover failover`, `drover failback`.
pub async fn start(ctx: &Ctx, args: RunArgs, kind: &str) -> anyhow::Result<()> {
    let (text, plan) = read_plan(&args.file)?;
    let (from, to) = match kind {
        "failback" => (&plan.sites.dr, &plan.sites.primary),
        _ => (&plan.sites.primary, &plan.sites.dr),
    };
    if !args.yes {
        confirm(&format!(
            "{} {} moves the traffic of {} from {}={from} to {}={to}{}",
            if args.ungraceful {
                "an ungraceful"
            } else {
                "a graceful"
            },
            kind,
            plan.service,
            plan.sites.label,
            plan.sites.label,
            if plan.database.is_some() {
                " and promotes its DR database"
            } else {
                ""
            }
        ))?;
    }
    let session = ctx.session().await?;
    let d = match client(&session)
        .start_drill(StartDrillRequest {
            plan_toml: text,
            kind: kind.to_string(),
            ungraceful: args.ungraceful,
            force_reason: args.force.clone().unwrap_or_default(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    println!("{} {} of {} started", d.id, d.kind, d.service);
    if args.detach {
        println!("follow it with `drover drill watch {}`", d.id);
        return Ok(());
    }
    follow(ctx, &d.id).await
}

pub async fn act(ctx: &Ctx, args: IdArgs, action: &str) -> anyhow::Result<()> {
    let session = ctx.session().await?;
    let d = match client(&session)
        .act_on_drill(DrillActionRequest {
            id: args.id.clone(),
            action: action.to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match action {
        "approve" => println!("{} approved by {}: it goes on", d.id, d.approved_by),
        _ => println!(
            "{} is {}: {}",
            d.id,
            d.phase,
            if d.traffic_moved {
                format!("traffic is moving back to {}", d.source_site)
            } else {
                "no traffic had moved".to_string()
            }
        ),
    }
    Ok(())
}

async fn get(ctx: &Ctx, id: &str) -> anyhow::Result<Drill> {
    let session = ctx.session().await?;
    match client(&session)
        .get_drill(GetDrillRequest { id: id.to_string() })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => Err(session.rpc_error(status)),
    }
}

fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tonic::Status>().is_some_and(|s| {
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            )
        }) || c.is::<crate::conn::Unreachable>()
    }) || {
        let text = crate::error::render(e);
        text.contains("not the leader")
            || text.contains("cannot reach")
            || text.contains("transport")
    }
}

/// Follows drill `id` to its end, printing each event; Ok only if it
/// succeeded.
pub async fn follow(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut lost: Option<Instant> = None;
    let mut said_approval = false;
    loop {
        let d = match get(ctx, id).await {
            Ok(d) => {
                if lost.take().is_some() {
                    eprintln!("reached the coordinator again");
                }
                d
            }
            Err(e) if transient(&e) => {
                let since = *lost.get_or_insert_with(|| {
                    eprintln!(
                        "lost contact with the coordinator ({}); trying again for up to {}",
                        crate::error::render(&e),
                        humantime::format_duration(RECONNECT_FOR)
                    );
                    Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    return Err(LostContact(format!(
                        "could not reach a coordinator for {} while following {id}; it goes on without you: `drover drill watch {id}`",
                        humantime::format_duration(RECONNECT_FOR)
                    ))
                    .into());
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for e in d.events.iter().skip(printed) {
            println!("{}  {}", clock(e.at_ms), e.message);
        }
        printed = printed.max(d.events.len());
        if d.phase == "awaiting_approval" && !said_approval {
            said_approval = true;
            println!("           waiting: another operator runs `drover drill approve {id}`");
        }
        match d.phase.as_str() {
            "succeeded" => {
                println!("{}", summary(&d));
                return Ok(());
            }
            "failed" | "aborted" => {
                println!("{}", summary(&d));
                anyhow::bail!("{id} {}: {}", d.phase, d.reason);
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                anyhow::bail!("stopped watching {id}; it goes on: `drover drill watch {id}`, `drover drill abort {id}`");
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

pub fn summary(d: &Drill) -> String {
    let recovery = if d.serving_ms > 0 && d.switch_started_ms > 0 {
        let took = d.serving_ms - d.switch_started_ms;
        format!(
            "recovery time {} (RTO {}: {})",
            secs(took),
            secs(d.rto_ms),
            if took <= d.rto_ms { "met" } else { "MISSED" }
        )
    } else {
        "recovery time: not reached".to_string()
    };
    format!(
        "{} {}: {}; data loss window {}",
        d.id,
        d.phase,
        recovery,
        loss(d)
    )
}

/// An ungraceful run's window measured on the replica, in seconds.
fn replica_window(d: &Drill) -> Option<f64> {
    (!d.lag_measured && !d.loss_end.is_empty())
        .then(|| (d.loss_to_ms - d.loss_from_ms) as f64 / 1000.0)
}

fn loss(d: &Drill) -> String {
    if let Some(window) = replica_window(d) {
        let end = if d.loss_end == "heard_from_primary" {
            "when the DR replica last heard from the primary"
        } else {
            "when this run started; when the primary went silent is not known, so this bounds it"
        };
        return format!(
            "{window:.3} s: writes the primary committed from {} (the last transaction the DR replica replayed) to {} ({end}) may be lost (RPO {}: {})",
            clock(d.loss_from_ms),
            clock(d.loss_to_ms),
            secs(d.rpo_ms),
            if window * 1000.0 <= d.rpo_ms as f64 {
                "within"
            } else {
                "OVER"
            }
        );
    }
    if !d.lag_measured {
        return "not measured".to_string();
    }
    if d.lag_bytes == 0 {
        return format!(
            "none: the replica was 0 bytes behind at cutover (RPO {}: met)",
            secs(d.rpo_ms)
        );
    }
    let met = d.lag_bytes == 0 || (d.lag_seconds * 1000.0) as i64 <= d.rpo_ms;
    format!(
        "{} bytes / {:.3} s at cutover (RPO {}: {})",
        d.lag_bytes,
        d.lag_seconds,
        secs(d.rpo_ms),
        if met { "met" } else { "MISSED" }
    )
}

pub async fn watch(ctx: &Ctx, args: IdArgs) -> anyhow::Result<()> {
    follow(ctx, &args.id).await
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> anyhow::Result<()> {
    let session = ctx.session().await?;
    let drills = match client(&session).list_drills(ListDrillsRequest {}).await {
        Ok(r) => r.into_inner().drills,
        Err(status) => return Err(session.rpc_error(status)),
    };
    if let ShowFormat::Json = args.output {
        let v: Vec<serde_json::Value> = drills.iter().map(report_json).collect();
        return print(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = (drills.iter())
        .map(|d| {
            vec![
                d.id.clone(),
                d.kind.clone(),
                d.service.clone(),
                d.mode.clone(),
                d.phase.clone(),
                relative(now, d.started_ms),
                if d.serving_ms > 0 && d.switch_started_ms > 0 {
                    secs(d.serving_ms - d.switch_started_ms)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "KIND", "SERVICE", "MODE", "PHASE", "STARTED", "RECOVERY",
        ],
        &rows,
    );
    // The age of the last good drill per service.
    let mut last: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for d in drills
        .iter()
        .filter(|d| d.kind == "drill" && d.phase == "succeeded")
    {
        let e = last.entry(&d.service).or_insert(0);
        *e = (*e).max(d.ended_ms);
    }
    for (service, at) in last {
        out.push_str(&format!(
            "last successful drill of {service}: {}\n",
            relative(now, at)
        ));
    }
    print(&out)
}

fn report_json(d: &Drill) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = (d.steps.iter())
        .map(|s| {
            serde_json::json!({
                "name": s.name, "state": s.state,
                "started": rfc3339_ms(s.started_ms), "ended": rfc3339_ms(s.ended_ms),
                "duration_ms": (s.started_ms > 0 && s.ended_ms > 0).then(|| s.ended_ms - s.started_ms),
                "attempts": s.attempts, "output": s.output,
            })
        })
        .collect();
    serde_json::json!({
        "id": d.id, "kind": d.kind, "mode": d.mode, "service": d.service, "phase": d.phase,
        "plan": { "version": d.plan_version, "sha256": d.plan_digest },
        "started_by": d.started_by, "started": rfc3339_ms(d.started_ms),
        "forced_reason": (!d.forced_reason.is_empty()).then_some(&d.forced_reason),
        "approved_by": (!d.approved_by.is_empty()).then_some(&d.approved_by),
        "approved": rfc3339_ms(d.approved_ms),
        "from": d.source_site, "to": d.target_site,
        "prechecks": d.prechecks.iter().map(|c| serde_json::json!({
            "name": c.name, "passed": c.passed, "value": c.value, "want": c.want, "detail": c.detail,
        })).collect::<Vec<_>>(),
        "steps": steps,
        "recovery_ms": (d.serving_ms > 0 && d.switch_started_ms > 0).then(|| d.serving_ms - d.switch_started_ms),
        "rto_ms": d.rto_ms,
        "data_loss": if d.lag_measured {
            Some(serde_json::json!({"bytes": d.lag_bytes, "seconds": d.lag_seconds, "measured_on": "primary"}))
        } else {
            replica_window(d).map(|seconds| serde_json::json!({
                "seconds": seconds,
                "from": rfc3339_ms(d.loss_from_ms),
                "to": rfc3339_ms(d.loss_to_ms),
                "from_ms": d.loss_from_ms,
                "to_ms": d.loss_to_ms,
                "until": d.loss_end,
                "measured_on": "replica",
            }))
        },
        "rpo_ms": d.rpo_ms,
        "traffic": d.traffic.as_ref().map(|t| serde_json::json!({
            "from": rfc3339_ms(t.from_ms), "to": rfc3339_ms(t.to_ms),
            "requests": t.target_requests + t.source_requests,
            "failed": t.target_failed + t.source_failed,
            "target": {"site": d.target_site, "requests": t.target_requests, "failed": t.target_failed},
            "source": {"site": d.source_site, "requests": t.source_requests, "failed": t.source_failed},
            "serving_before": t.serving_before,
            "floor": t.floor,
            "lowest_serving": t.lowest_serving,
        })),
        "verified": rfc3339_ms(d.verified_ms),
        "ended": rfc3339_ms(d.ended_ms),
        "reason": (!d.reason.is_empty()).then_some(&d.reason),
        "events": d.events.iter().map(|e| serde_json::json!({"at": rfc3339_ms(e.at_ms), "message": e.message})).collect::<Vec<_>>(),
    })
}

/// The after-action report, in Markdown.
pub fn report_md(d: &Drill, fail_back: Option<&Drill>) -> String {
    let mut o = String::new();
    let title = match d.kind.as_str() {
        "failover" => "Failover (incident)",
        "failback" => "Fail-back",
        _ => "DR drill",
    };
    o.push_str(&format!(
        "# {title} {}: {} ({})\n\n",
        d.id, d.service, d.phase
    ));
    o.push_str("| | |\n|---|---|\n");
    let row = |o: &mut String, k: &str, v: String| o.push_str(&format!("| {k} | {v} |\n"));
    row(&mut o, "Service", d.service.clone());
    row(&mut o, "Mode", d.mode.clone());
    row(
        &mut o,
        "From / to",
        format!("{} → {}", d.source_site, d.target_site),
    );
    row(
        &mut o,
        "Plan",
        format!(
            "version {}, sha256 `{}`",
            if d.plan_version.is_empty() {
                "-"
            } else {
                &d.plan_version
            },
            d.plan_digest
        ),
    );
    row(
        &mut o,
        "Started",
        format!(
            "{} by {}",
            rfc3339_ms(d.started_ms).unwrap_or_default(),
            d.started_by
        ),
    );
    row(
        &mut o,
        "Approved",
        if d.approved_by.is_empty() {
            "not required".into()
        } else {
            format!(
                "{} by {}",
                rfc3339_ms(d.approved_ms).unwrap_or_default(),
                d.approved_by
            )
        },
    );
    if !d.forced_reason.is_empty() {
        row(&mut o, "Pre-checks overridden", d.forced_reason.clone());
    }
    let recovery =
        (d.serving_ms > 0 && d.switch_started_ms > 0).then(|| d.serving_ms - d.switch_started_ms);
    row(
        &mut o,
        "Recovery time",
        match recovery {
            Some(ms) => format!(
                "**{}** against an RTO of {}: {}",
                secs(ms),
                secs(d.rto_ms),
                if ms <= d.rto_ms { "met" } else { "**missed**" }
            ),
            None => "not reached".into(),
        },
    );
    row(&mut o, "Data-loss window", loss(d));
    if let Some(t) = &d.traffic {
        let failed = t.target_failed + t.source_failed;
        row(
            &mut o,
            "Requests during the switch",
            format!(
                "{} served, {} failed, from {} to {}: {} on {} ({} failed), {} on {} ({} failed), by HAProxy's counters",
                t.target_requests + t.source_requests,
                if failed == 0 {
                    "0".to_string()
                } else {
                    format!("**{failed}**")
                },
                clock(t.from_ms),
                clock(t.to_ms),
                t.target_requests,
                d.target_site,
                t.target_failed,
                t.source_requests,
                d.source_site,
                t.source_failed,
            ),
        );
        row(
            &mut o,
            "Capacity during the switch",
            format!(
                "at least {} instance(s) serving against a floor of {} ({} served before the switch): {}",
                t.lowest_serving,
                t.floor,
                t.serving_before,
                if t.lowest_serving >= t.floor {
                    "held"
                } else {
                    "**below the floor**"
                }
            ),
        );
    }
    row(
        &mut o,
        "Ended",
        rfc3339_ms(d.ended_ms).unwrap_or_else(|| "still running".into()),
    );
    if !d.reason.is_empty() {
        row(&mut o, "Reason", d.reason.clone());
    }
    o.push_str("\n## Pre-checks\n\n| check | result | measured | wanted |\n|---|---|---|---|\n");
    for c in &d.prechecks {
        o.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.name,
            if c.passed { "passed" } else { "**failed**" },
            c.value,
            c.want
        ));
    }
    o.push_str("\n## Timeline\n\n");
    timeline(&mut o, d);
    o.push_str("\n## Findings\n\n");
    let mut findings = Vec::new();
    for c in d.prechecks.iter().filter(|c| !c.passed) {
        findings.push(format!(
            "Pre-check {} failed: {} (wanted {}).",
            c.name, c.value, c.want
        ));
    }
    for s in d.steps.iter().filter(|s| s.state == "failed") {
        findings.push(format!("Step {} failed: {}", s.name, s.output));
    }
    if let Some(ms) = recovery
        && ms > d.rto_ms
    {
        findings.push(format!(
            "The recovery took {} against an RTO of {}.",
            secs(ms),
            secs(d.rto_ms)
        ));
    }
    if d.lag_measured && d.lag_bytes > 0 && (d.lag_seconds * 1000.0) as i64 > d.rpo_ms {
        findings.push(format!(
            "The data-loss window ({:.3} s) is over the RPO.",
            d.lag_seconds
        ));
    }
    if let Some(t) = &d.traffic {
        let failed = t.target_failed + t.source_failed;
        if failed > 0 {
            findings.push(format!(
                "{failed} request(s) failed during the switch ({} on {}, {} on {}).",
                t.target_failed, d.target_site, t.source_failed, d.source_site
            ));
        }
        if t.lowest_serving < t.floor {
            findings.push(format!(
                "Serving capacity fell to {} instance(s), below the floor of {}.",
                t.lowest_serving, t.floor
            ));
        }
    }
    if let Some(window) = replica_window(d)
        && window * 1000.0 > d.rpo_ms as f64
    {
        findings.push(format!(
            "Writes from the last {window:.3} s before the primary was lost may be lost: over the RPO of {}. Compare the old primary's data with the new one's once it is back.",
            secs(d.rpo_ms)
        ));
    }
    if d.kind != "failback" && d.mode == "ungraceful" && !d.lag_measured && d.loss_end.is_empty() {
        findings.push(
            "The data-loss window was not measured: the primary did not answer and the plan has no database.replayed command for the DR replica (see examples/dr/pg-replayed).".to_string(),
        );
    }
    if findings.is_empty() {
        o.push_str("None: every check passed and every step finished in time.\n");
    } else {
        for f in findings {
            o.push_str(&format!("- {f}\n"));
        }
    }
    if let Some(b) = fail_back {
        o.push_str(&format!(
            "\n## Fail-back\n\n{} ({}), {} → {}, started {} by {}{}.\n\n",
            b.id,
            b.phase,
            b.source_site,
            b.target_site,
            rfc3339_ms(b.started_ms).unwrap_or_default(),
            b.started_by,
            match (b.serving_ms > 0 && b.switch_started_ms > 0)
                .then(|| b.serving_ms - b.switch_started_ms)
            {
                Some(ms) => format!("; recovery time {}", secs(ms)),
                None => String::new(),
            }
        ));
        timeline(&mut o, b);
        if let Some(t) = &b.traffic {
            o.push_str(&format!(
                "\nRequests during its switch: {} served, {} failed; at least {} serving against a floor of {}.\n",
                t.target_requests + t.source_requests,
                t.target_failed + t.source_failed,
                t.lowest_serving,
                t.floor
            ));
        }
    }
    o.push_str("\n## Events\n\n");
    for e in &d.events {
        o.push_str(&format!("- {} {}\n", clock(e.at_ms), e.message));
    }
    o
}

/// The step table.
fn timeline(o: &mut String, d: &Drill) {
    o.push_str(
        "| step | state | started | took | attempts | output |\n|---|---|---|---|---|---|\n",
    );
    for s in &d.steps {
        let took = if s.started_ms > 0 && s.ended_ms > 0 {
            secs(s.ended_ms - s.started_ms)
        } else {
            "-".into()
        };
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.state,
            if s.started_ms > 0 {
                clock(s.started_ms)
            } else {
                "-".into()
            },
            took,
            s.attempts,
            s.output.replace('|', "\\|")
        ));
    }
}

/// The fail-back that followed a drill or failover: the first one of the
/// same service started after it.
fn fail_back_of<'a>(d: &Drill, all: &'a [Drill]) -> Option<&'a Drill> {
    if d.kind == "failback" {
        return None;
    }
    (all.iter())
        .filter(|b| b.kind == "failback" && b.service == d.service && b.started_ms > d.started_ms)
        .min_by_key(|b| b.started_ms)
}

pub async fn report(ctx: &Ctx, args: ReportArgs) -> anyhow::Result<()> {
    let d = get(ctx, &args.id).await?;
    let all = if d.kind == "failback" {
        Vec::new()
    } else {
        let session = ctx.session().await?;
        match client(&session).list_drills(ListDrillsRequest {}).await {
            Ok(r) => r.into_inner().drills,
            Err(status) => return Err(session.rpc_error(status)),
        }
    };
    let fail_back = fail_back_of(&d, &all);
    match args.output {
        ReportFormat::Md => print(&report_md(&d, fail_back)),
        ReportFormat::Json => {
            let mut v = report_json(&d);
            if let Some(b) = fail_back {
                v["fail_back"] = report_json(b);
            }
            print(&format!("{}\n", serde_json::to_string_pretty(&v)?))
        }
    }
}
