//! `drover rollout start|watch|status|list|pause|resume|abort|rollback|
//! promote|analysis`: rolling a service out to a new version and steering
//! it while it runs.
//! The coordinator's engine does the work; this module builds the request,
//! explains refusals and shows progress.

mod spec;
mod targets;
mod watch;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use drover_model::RolloutSpec;
use drover_proto::v1::rollout_action_request::Action;
use drover_proto::v1::{
    GetRolloutAnalysisRequest, GetRolloutRequest, ListHostsRequest, ListRolloutsRequest,
    RolloutActionRequest, RolloutPhase, StartRolloutRequest,
};
use tonic::{Code, Status};

use crate::commands::Ctx;
use crate::conn::status_text;
use crate::error::usage;
use crate::output::rollout::traffic::{analysis_text, traffic_line};
use crate::output::rollout::{
    AnalysisJson, PlanJson, RolloutFormat, RolloutJson, plan_text, rollout_detail, rollouts_table,
    to_json,
};
use crate::output::{ShowFormat, now_ms, print};

pub use spec::SpecFlags;

/// `drover rollout --help`.
pub const ROLLOUT_LONG_ABOUT: &str = "\
Roll a service out to a new version, batch by batch, without taking serving capacity \
below a floor; then follow, pause, resume, abort or roll it back.

Each instance is drained, stopped, given the new release, started, verified healthy and \
put back in service. An instance is only taken down while the healthy instances stay at \
or above the floor (--min-healthy). Failures beyond --max-failures stop the rollout; \
with --auto-rollback every updated instance then returns to its previous release.

With --strategy canary the new release gets a growing share of traffic (5%, 25%, 50%, \
100%) through HAProxy weights, each step judged live against the instances still on the \
old release and rolled back on its own when it is worse; `promote` ends a step's bake \
early and `analysis` shows every look.

Examples:
  drover artifact push web-v2.tar.gz --service web --version v2
  drover rollout start --service web --version v2 --batch 1,25%,100% --min-healthy 80%
  drover rollout start -f rollout.toml --dry-run
  drover rollout list --service web
  drover rollout status web-7 --events
  drover rollout rollback web-7
  drover rollout start --service web --version v2 --strategy canary
  drover rollout analysis web-8";

const START_AFTER_HELP: &str = "\
Spec file (-f), the same fields as the flags; flags given override the file:
  service = \"web\"
  version = \"v2\"              # shorthand for target.version
  selector = \"env=prod\"
  batches = \"1,25%,100%\"      # or [1, \"25%\", \"100%\"]; the last one repeats
  min_healthy = \"80%\"         # or a count: 8
  max_unavailable = 2
  min_healthy_time = \"10s\"
  healthy_deadline = \"5m\"
  progress_deadline = \"10m\"
  step_timeout = \"2m\"
  max_failures = 0
  max_unreachable = 0
  auto_rollback = true
  spread_by = \"zone:1\"        # or { label = \"zone\", max_unavailable = 1 }
  lost_hosts = \"wait\"         # or \"skip\"
  strategy = \"canary\"         # rolling (default), canary or blue-green
  steps = \"5%,25%,50%,100%\"   # shares of traffic; or [\"5%\", \"25%\", \"50%\", \"100%\"]
  bake = \"30m\"                # each step watched this long
  keep_old = \"60m\"            # blue-green only
  pre_traffic_hook = \"smoke\"  # blue-green only
  [target]                    # instead of `version`; digest is optional and
  version = \"v2\"              # taken from the artifact store when left out
  digest = \"<sha256>\"
  [analysis]                  # canary and blue-green; every key optional
  interval = \"10s\"            # how often canary and baseline are compared
  warmup = \"60s\"              # counting starts this long after the weights
  max_analysis = \"30m\"        # too little traffic by then: inconclusive
  on_inconclusive = \"pause\"   # or \"fail\" or \"pass\"
  source = \"auto\"             # or \"haproxy\" or \"metrics\"
  error_ratio = 2.0           # fail when errors are credibly above 2x the baseline's
  alpha = 0.001               # per-look significance of that test
  min_canary_errors = 5       # fewer canary errors never fail the test
  min_difference = \"0.1%\"     # nor an error rate less than this above the baseline's
  guard_error_rate = \"5%\"     # fail at once at this error rate ...
  guard_min_requests = 200    # ... over at least this many requests
  min_requests = 500          # fewer in either arm is not enough to pass
  latency_ratio = 1.5         # fail when latency is 1.5x the baseline's ...
  latency_min_delta = \"25ms\"  # ... and at least 25 ms slower ...
  latency_windows = 3         # ... in 3 consecutive looks

Examples:
  drover rollout start --service web --version v2
  drover rollout start --service web --version v2 -l zone=a --batch 1,50% --min-healthy 8
  drover rollout start -f rollout.toml --max-failures 1 --dry-run
  drover rollout start -f rollout.toml --detach -o json
  drover rollout start --service web --version v1 --initial --batch 100%
  drover rollout start --service web --version v2 --strategy canary --bake 10m
  drover rollout start --service web --version v2 --strategy canary --steps 1%,10%,100% --dry-run

First deploy: instances that never ran a release are not healthy, so no floor above 0 can \
be met; start the first rollout with --initial (a floor of 0, refused if any target instance \
already serves a release), or --min-healthy 0.

Instances of a service with several instances and no drain configured in their agent.toml \
are named in a warning: requests in flight when each is stopped will fail.

Following a rollout rides through a coordinator restart, a dropped connection or a \
failover to another coordinator (HA, with several in --addr): drover tries again (with \
backoff) for up to --reconnect-for, each time dialling the coordinators in turn and \
following the leader, then carries on where it was without printing an event twice.

Exit codes: 0 the rollout succeeded (or the dry run's plan finishes, or --detach); \
1 it failed, was rolled back or aborted, or the coordinator refused it (no instances \
match, the floor is unreachable, no such artifact, another rollout of the service is \
running); 2 the spec or a flag is malformed; 3 lost contact with the coordinator for \
longer than --reconnect-for while following the rollout: it goes on, its outcome is \
unknown (see `drover rollout status ID`).";

const WATCH_AFTER_HELP: &str = "\
When the coordinator restarts or the connection drops, watch tries again with backoff \
for up to --reconnect-for (default 5m) and resumes from the rollout's current state; \
events already printed are not printed again. With several coordinators (HA: \
--addr c1:7443,c2:7443) each attempt dials them in turn and follows the leader, so a \
watch keeps following across a failover.

Exit codes: 0 the rollout succeeded; 1 it failed, was rolled back or aborted, or the \
coordinator refused the watch (no such rollout, certificate refused); 2 usage error; \
3 lost contact with the coordinator for longer than --reconnect-for: the rollout goes \
on, its outcome is unknown (see `drover rollout status ID`).";

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout (or plan one with --dry-run) and follow it to the end
    ///
    /// Builds the spec from -f FILE and/or flags, checks it, and asks the
    /// coordinator to start it. Then follows it like `drover rollout watch`
    /// and exits 0 only if it succeeded; --detach returns at once with its id.
    /// --dry-run prints the plan instead: instances, floor, skipped
    /// instances, each batch and its waves, the lowest forecast capacity,
    /// and for a canary each traffic step with the instances it updates,
    /// their weight against the old release's, and its bake.
    #[command(after_long_help = START_AFTER_HELP, disable_version_flag = true)]
    Start(Box<StartArgs>),
    /// Follow a rollout until it finishes; exit 0 only if it succeeded
    ///
    /// On a terminal, shows an overall bar, the current batch, each instance
    /// in flight with its step, and capacity against the floor with the
    /// reason for any wait, and for a canary where its traffic is. Into a
    /// pipe or log, prints one line per event, and for a canary one per new
    /// traffic step or stage (times in UTC):
    ///   HH:MM:SS  INSTANCE  STEP  capacity C/floor F  MESSAGE
    ///   HH:MM:SS  -  -  capacity C/floor F  traffic: step 2/4 (25%) baking, ...
    /// Ends with a summary: what was updated, failed, skipped and rolled
    /// back, and the lowest capacity reached. Ctrl-C stops watching, not the
    /// rollout. With -o json, prints only the final rollout object.
    ///
    /// Example:
    ///   drover rollout watch web-7
    #[command(verbatim_doc_comment, after_long_help = WATCH_AFTER_HELP)]
    Watch(WatchArgs),
    /// Show a rollout: phase, progress, capacity and every instance
    ///
    /// Shows the phase and why, the current batch, capacity with its floor
    /// and lowest point, what it waits for, and per instance its host, step,
    /// release (now and before) and any note or error. A canary adds its
    /// strategy, where its traffic is (step, share, stage, looks, when the
    /// bake ends, the last look's verdict) and every traffic step with how
    /// it ended. --events adds the event log. Exits 1 when the rollout
    /// failed, was rolled back or aborted.
    ///
    /// Example:
    ///   drover rollout status web-7 --events
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// List rollouts, newest first
    ///
    /// Columns: ID, SERVICE, TARGET (version), PHASE, PROGRESS (updated/total),
    /// STARTED, DURATION (so far, while running).
    ///
    /// Example:
    ///   drover rollout list --service web --limit 5
    #[command(verbatim_doc_comment)]
    List(ListArgs),
    /// Pause a rollout: in-flight instances finish, nothing new starts
    ///
    /// Example:
    ///   drover rollout pause web-7
    #[command(verbatim_doc_comment)]
    Pause(IdArgs),
    /// Resume a paused rollout
    ///
    /// Example:
    ///   drover rollout resume web-7
    #[command(verbatim_doc_comment)]
    Resume(IdArgs),
    /// Abort: in-flight instances finish, failed ones return to their previous release
    ///
    /// Instances already updated stay updated. The rollout ends `aborted`.
    ///
    /// Example:
    ///   drover rollout abort web-7
    #[command(verbatim_doc_comment)]
    Abort(IdArgs),
    /// Roll back: in-flight instances finish, then every updated one returns
    ///
    /// Every instance the rollout touched goes back to the release it ran
    /// when the rollout started, latest first, under the same floor and
    /// limits. The rollout ends `rolled_back`.
    ///
    /// Example:
    ///   drover rollout rollback web-7
    #[command(verbatim_doc_comment)]
    Rollback(IdArgs),
    /// Canary: skip the rest of the current traffic step's bake: a human decision, recorded
    ///
    /// The step ends now as if its analysis had passed, recorded as
    /// `promoted` in its results, and the next step starts. Refused when
    /// the rollout is not baking a traffic step. Also ends a step held as
    /// inconclusive.
    ///
    /// Example:
    ///   drover rollout promote web-8
    #[command(verbatim_doc_comment)]
    Promote(IdArgs),
    /// Canary: every look of the analysis, step by step, with its numbers
    ///
    /// One row per look: step and share, look number (`last` ends the
    /// step), time (UTC), source (haproxy or metrics), errors/requests and
    /// the error rate of the canary (instances on the new release) and the
    /// baseline (those still on the old one), each arm's latency in ms,
    /// the error test's p-value and the verdict (continue, pass, fail,
    /// inconclusive). Then each step's last look with its reason. With
    /// -o json, every field and the stored judgement (every number of
    /// both tests). Exits 1 when the rollout is unknown or not a canary.
    ///
    /// Example:
    ///   drover rollout analysis web-8
    ///   drover rollout analysis web-8 -o json | jq '.looks[] | select(.verdict == "fail")'
    #[command(verbatim_doc_comment)]
    Analysis(AnalysisArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub spec: SpecFlags,
    /// First deploy: a floor of 0 (--min-healthy 0), so that instances that
    /// never ran a release can all be deployed. Refused when any target
    /// instance already serves a release
    #[arg(long, conflicts_with = "min_healthy")]
    pub initial: bool,
    /// Print the plan only; nothing is started
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the rollout has started instead of following it
    #[arg(long)]
    pub detach: bool,
    /// Output format: table (readable text) or json (plan, or the rollout
    /// object at the end)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: RolloutFormat,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// How a follower rides through a coordinator restart.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// When the coordinator restarts or the connection drops, keep trying to
    /// reach it for this long (capped, jittered backoff), then exit 3: the
    /// rollout goes on, its outcome unknown to this command. 0s: never
    #[arg(long, value_name = "DURATION", default_value = watch::DEFAULT_RECONNECT_FOR,
          value_parser = watch::parse_reconnect_for)]
    pub reconnect_for: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub rollout: IdArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Rollout id, as printed by `drover rollout start` and `drover rollout list`
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// Output format: table (readable text) or json (the rollout object)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: RolloutFormat,
}

#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// Rollout id, as printed by `drover rollout start` and `drover rollout list`
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// Output format: table (readable text) or json (the analysis object:
    /// `id` and `looks`)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub rollout: IdArgs,
    /// Also show the event log
    #[arg(long)]
    pub events: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this service's rollouts
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// At most this many, newest first [default: 20]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Output format: table or json (an array of rollout objects)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: RolloutFormat,
}

fn parse_id(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.chars().any(char::is_whitespace) {
        return Err("expected a rollout id as printed by `drover rollout list`".into());
    }
    Ok(t.to_string())
}

pub async fn run(ctx: &Ctx, cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Start(args) => start(ctx, *args).await,
        RolloutCommand::Watch(args) => {
            let (id, output) = (&args.rollout.id, args.rollout.output);
            let reconnect_for = args.follow.reconnect_for;
            let mut session = watch::dial(ctx, id, reconnect_for).await?;
            watch::follow(ctx, &mut session, id, output, reconnect_for).await
        }
        RolloutCommand::Status(args) => status(ctx, args).await,
        RolloutCommand::List(args) => list(ctx, args).await,
        RolloutCommand::Pause(args) => act(ctx, args, Action::Pause).await,
        RolloutCommand::Resume(args) => act(ctx, args, Action::Resume).await,
        RolloutCommand::Abort(args) => act(ctx, args, Action::Abort).await,
        RolloutCommand::Rollback(args) => act(ctx, args, Action::Rollback).await,
        RolloutCommand::Promote(args) => act(ctx, args, Action::Promote).await,
        RolloutCommand::Analysis(args) => analysis(ctx, args).await,
    }
}

/// A refused start: a bad spec exits 2 as `rollout spec: ...`; the rest
/// (no instances, floor unreachable, no artifact, already running) exit 1
/// with the coordinator's words.
fn start_error(status: Status, rpc_error: impl FnOnce(Status) -> anyhow::Error) -> anyhow::Error {
    if status.code() == Code::InvalidArgument {
        let msg = status.message();
        let msg = msg.strip_prefix("rollout spec: ").unwrap_or(msg);
        return usage(format!("rollout spec: {msg}"));
    }
    rpc_error(status)
}

/// Checks the target instances as the hosts report them: `--initial` only
/// for a first deploy, and a warning for instances nothing drains.
async fn check_targets(
    session: &mut crate::conn::Session,
    spec: &RolloutSpec,
    initial: bool,
) -> anyhow::Result<()> {
    let (service, selector) = (spec.service.clone(), spec.selector.clone());
    let hosts = match session
        .client
        .list_hosts(ListHostsRequest { selector })
        .await
    {
        Ok(r) => r.into_inner().hosts,
        Err(status) if initial => return Err(session.rpc_error(status)),
        // The warning is best effort; the start itself reports any real
        // problem with the coordinator.
        Err(_) => return Ok(()),
    };
    let instances = targets::target_instances(&hosts, &service);
    if initial && let Some(refusal) = targets::initial_refusal(&service, &instances) {
        return Err(anyhow!(refusal));
    }
    if let Some(warning) = targets::drain_warning(&service, &instances) {
        eprintln!("{warning}");
    }
    Ok(())
}

async fn start(ctx: &Ctx, args: StartArgs) -> anyhow::Result<()> {
    let mut flags = args.spec.clone();
    if args.initial {
        spec::initial(&mut flags);
    }
    let spec = spec::build(&flags)?;
    let mut session = ctx.session().await?;
    check_targets(&mut session, &spec, args.initial).await?;
    let req = StartRolloutRequest {
        spec: Some((&spec).into()),
        dry_run: args.dry_run,
    };
    let resp = match session.client.start_rollout(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(start_error(status, |s| session.rpc_error(s))),
    };
    let json = args.output == RolloutFormat::Json;
    if args.dry_run {
        let plan = resp
            .plan
            .ok_or_else(|| anyhow!("coordinator at {} sent no plan", session.addr()))?;
        if json {
            print(&to_json(&PlanJson::from(&plan))?)?;
        } else {
            print(&plan_text(&plan))?;
        }
        if !plan.stalls.is_empty() {
            return Err(anyhow!(
                "this rollout would never finish as the fleet is now: {}",
                plan.stalls
            ));
        }
        return Ok(());
    }
    let rollout = resp
        .rollout
        .ok_or_else(|| anyhow!("coordinator at {} sent no rollout", session.addr()))?;
    let version = rollout.target.as_ref().map(|t| t.version.as_str());
    let started = format!(
        "rollout {} started: {} to {}{}\n",
        rollout.id,
        rollout.service,
        version.unwrap_or("?"),
        strategy_note(&spec)
    );
    if json {
        eprint!("{started}");
    } else {
        print(&started)?;
    }
    if args.detach {
        return if json {
            print(&to_json(&RolloutJson::from(&rollout))?)
        } else {
            print(&format!("{}\n", rollout.id))
        };
    }
    watch::follow(
        ctx,
        &mut session,
        &rollout.id,
        args.output,
        args.follow.reconnect_for,
    )
    .await
}

/// ` (canary: 5%, 25%, 50%, 100%, bake 30m)` after `rollout ID started`;
/// nothing for a rolling update.
fn strategy_note(spec: &RolloutSpec) -> String {
    if !spec.strategy.shifts_traffic() {
        return String::new();
    }
    let steps: Vec<String> = spec.traffic_steps().iter().map(|s| s.to_string()).collect();
    format!(
        " ({}: {}, bake {})",
        spec.strategy,
        steps.join(", "),
        humantime::format_duration(spec.bake_time())
    )
}

async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = GetRolloutRequest {
        id: args.rollout.id.clone(),
        include_events: args.events,
    };
    let r = match session.client.get_rollout(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.rollout.output {
        RolloutFormat::Json => print(&to_json(&RolloutJson::from(&r))?)?,
        RolloutFormat::Table => print(&rollout_detail(&r, now_ms()))?,
    }
    match r.phase_kind() {
        RolloutPhase::Failed | RolloutPhase::RolledBack | RolloutPhase::Aborted => {
            watch::outcome(&r, &session.addr())
        }
        _ => Ok(()),
    }
}

async fn list(ctx: &Ctx, args: ListArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = ListRolloutsRequest {
        service: args.service.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let rollouts = match session.client.list_rollouts(req).await {
        Ok(r) => r.into_inner().rollouts,
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        RolloutFormat::Json => {
            let v: Vec<RolloutJson> = rollouts.iter().map(RolloutJson::from).collect();
            print(&to_json(&v)?)
        }
        RolloutFormat::Table if rollouts.is_empty() => {
            match &args.service {
                Some(s) => eprintln!("no rollouts of {s} yet"),
                None => eprintln!(
                    "no rollouts yet: start one with `drover rollout start --service NAME --version V`"
                ),
            }
            Ok(())
        }
        RolloutFormat::Table => print(&rollouts_table(&rollouts, now_ms())),
    }
}

async fn act(ctx: &Ctx, args: IdArgs, action: Action) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = RolloutActionRequest {
        id: args.id.clone(),
        action: action as i32,
    };
    let r = match session.client.act_on_rollout(req).await {
        Ok(r) => r.into_inner(),
        Err(status) if action == Action::Promote => {
            let hint = format!(
                "promote ends the bake of a canary's traffic step (or a step held as \
                 inconclusive); `drover rollout status {}` shows where it is",
                args.id
            );
            return Err(refused(&session, status, &hint));
        }
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        RolloutFormat::Json => print(&to_json(&RolloutJson::from(&r))?),
        RolloutFormat::Table => print(&action_text(&r, now_ms())),
    }
}

/// `rollout ID: PHASE`, and where a canary's traffic is.
fn action_text(r: &drover_proto::v1::Rollout, now_ms: i64) -> String {
    let mut text = format!("rollout {}: {}\n", r.id, r.phase_kind().as_text());
    if let Some(t) = &r.traffic {
        text.push_str(&format!("traffic: {}\n", traffic_line(t, now_ms)));
    }
    text
}

async fn analysis(ctx: &Ctx, args: AnalysisArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = GetRolloutAnalysisRequest {
        id: args.id.clone(),
    };
    let a = match session.client.get_rollout_analysis(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let hint = format!(
                "only canary and blue-green rollouts have an analysis; `drover rollout status \
                 {}` shows this one's strategy",
                args.id
            );
            return Err(refused(&session, status, &hint));
        }
    };
    match args.output {
        ShowFormat::Json => print(&to_json(&AnalysisJson::from(&a))?),
        ShowFormat::Table => print(&analysis_text(&a)),
    }
}

/// A refused `promote` or `analysis`: the coordinator's words (exit 1), and
/// for a rollout that exists but has nothing to act on, what to do.
fn refused(session: &crate::conn::Session, status: Status, hint: &str) -> anyhow::Error {
    if status.code() == Code::FailedPrecondition {
        return anyhow!("{}\nhint: {hint}", status_text(&status));
    }
    session.rpc_error(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, help};
    use crate::error::{EXIT_FAILURE, EXIT_USAGE, exit_code};
    use clap::Parser;
    use drover_proto::identity::{Identity, Role};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("drover").chain(args.iter().copied()))
    }

    #[test]
    fn every_subcommand_explains_itself_with_an_example() {
        let top = help(&[]);
        assert!(top.contains("rollout"), "{top}");
        let rollout = help(&["rollout"]);
        assert!(
            rollout.contains("drover rollout start --service web"),
            "{rollout}"
        );
        let cases: &[(&str, &[&str])] = &[
            (
                "start",
                &[
                    "--service",
                    "--version",
                    "--selector",
                    "--batch",
                    "--min-healthy",
                    "--max-unavailable",
                    "--min-healthy-time",
                    "--healthy-deadline",
                    "--progress-deadline",
                    "--step-timeout",
                    "--max-failures",
                    "--max-unreachable",
                    "--auto-rollback",
                    "--spread-by",
                    "--lost-hosts",
                    "--file",
                    "--dry-run",
                    "--detach",
                    "--output",
                    "--reconnect-for",
                    "3 lost contact",
                    "--initial",
                    "First deploy",
                    "no drain configured",
                    "version = \"v2\"",
                    "Example",
                    "--strategy",
                    "--steps",
                    "5%,25%,50%,100% for canary",
                    "10%,25%,50%,100% for blue-green",
                    "--bake",
                    "30m for canary, 5m per step for blue-green",
                    "--keep-old",
                    "[default: 60m]",
                    "--pre-traffic-hook",
                    "--max-analysis",
                    "--on-inconclusive",
                    "[default: pause]",
                    "--analysis-interval",
                    "--warmup",
                    "--analysis-source",
                    "[analysis]",
                    "latency_windows = 3",
                ],
            ),
            (
                "watch",
                &[
                    "ID",
                    "capacity C/floor F",
                    "Example",
                    "--output",
                    "--reconnect-for",
                    "3 lost contact",
                    "outcome is unknown",
                ],
            ),
            ("status", &["ID", "--events", "Example"]),
            ("list", &["--service", "--limit", "Example"]),
            ("pause", &["ID", "Example"]),
            ("resume", &["ID", "Example"]),
            ("abort", &["ID", "Example"]),
            ("rollback", &["ID", "Example"]),
            (
                "promote",
                &[
                    "ID",
                    "skip the rest of the current traffic step's bake: a human decision, recorded",
                    "Example",
                ],
            ),
            (
                "analysis",
                &["ID", "--output", "p-value", "baseline", "Example"],
            ),
        ];
        for (sub, words) in cases {
            let h = help(&["rollout", sub]);
            for w in *words {
                assert!(
                    h.contains(w),
                    "`drover rollout {sub} --help` lacks {w:?}:\n{h}"
                );
            }
            assert!(h.contains("--addr"), "{h}");
        }
    }

    #[test]
    fn initial_is_a_floor_of_zero_and_excludes_min_healthy() {
        let err = parse(&[
            "rollout",
            "start",
            "--service",
            "web",
            "--version",
            "v1",
            "--initial",
            "--min-healthy",
            "50%",
        ])
        .expect_err("conflict");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        let cli = parse(&[
            "rollout",
            "start",
            "--service",
            "web",
            "--version",
            "v1",
            "--initial",
        ])
        .expect("parses");
        let crate::cli::Command::Rollout(RolloutCommand::Start(args)) = cli.command else {
            panic!("not a start");
        };
        assert!(args.initial);
        let mut flags = args.spec.clone();
        spec::initial(&mut flags);
        let spec = spec::build(&flags).expect("spec");
        assert_eq!(spec.min_healthy, drover_model::Amount::Count(0));
    }

    #[test]
    fn start_needs_service_and_version_without_a_file() {
        let err = parse(&["rollout", "start", "--service", "web"]).expect_err("no version");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("--version"), "{err}");
        assert!(parse(&["rollout", "start", "-f", "r.toml"]).is_ok());
        assert!(parse(&["rollout", "start", "--service", "web", "--version", "v2"]).is_ok());
    }

    #[test]
    fn bad_flag_values_name_the_flag_and_exit_2() {
        for (flag, value) in [
            ("--batch", "0"),
            ("--min-healthy", "120%"),
            ("--max-unavailable", "0"),
            ("--max-failures", "lots"),
            ("--healthy-deadline", "0s"),
            ("--spread-by", "zone:0"),
            ("--lost-hosts", "maybe"),
            ("--strategy", "sideways"),
            ("--steps", "5,25,100"),
            ("--bake", "0s"),
            ("--keep-old", "soon"),
            ("--on-inconclusive", "shrug"),
            ("--analysis-source", "prometheus"),
            ("--warmup", "later"),
        ] {
            let err = parse(&[
                "rollout",
                "start",
                "--service",
                "web",
                "--version",
                "v2",
                flag,
                value,
            ])
            .expect_err("bad value");
            assert_eq!(err.exit_code(), EXIT_USAGE, "{flag}");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn a_started_canary_says_its_steps_and_bake() {
        let rolling = RolloutSpec::default();
        assert_eq!(strategy_note(&rolling), "");
        let canary = RolloutSpec {
            strategy: drover_model::Strategy::Canary,
            ..RolloutSpec::default()
        };
        assert_eq!(
            strategy_note(&canary),
            " (canary: 5%, 25%, 50%, 100%, bake 30m)"
        );
        let blue_green = RolloutSpec {
            strategy: drover_model::Strategy::BlueGreen,
            ..RolloutSpec::default()
        };
        assert_eq!(
            strategy_note(&blue_green),
            " (blue-green: 10%, 25%, 50%, 100%, bake 5m)"
        );
    }

    #[test]
    fn an_action_on_a_canary_says_where_its_traffic_is() {
        use crate::output::fixtures::NOW;
        use crate::output::rollout::fixtures::{canary, rollout};
        assert_eq!(action_text(&rollout(), NOW), "rollout r7: running\n");
        assert_eq!(
            action_text(&canary(), NOW),
            "rollout r7: running\ntraffic: step 2/4 (25%) baking, 3 looks, ends in 12m — last: \
             errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass\n"
        );
    }

    #[test]
    fn refused_starts_keep_the_coordinators_words() {
        let id = Identity::new(Role::Operator, "alice").expect("id");
        let refuse = |status: Status| {
            start_error(status, |s| crate::conn::rpc_error("c:1", &id, "a.pem", s))
        };
        let err = refuse(Status::invalid_argument(
            "rollout spec: batches[0]: expected at least 1 instance or 1%, got \"0\"",
        ));
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            "rollout spec: batches[0]: expected at least 1 instance or 1%, got \"0\""
        );
        let err = refuse(Status::invalid_argument("min_healthy: expected 0% to 100%"));
        assert_eq!(
            err.to_string(),
            "rollout spec: min_healthy: expected 0% to 100%"
        );
        for status in [
            Status::failed_precondition("no instances of web match env=prod"),
            Status::not_found("no artifact web v9"),
            Status::already_exists("rollout 6 of web is running"),
        ] {
            let msg = status.message().to_string();
            let err = refuse(status);
            assert_eq!(err.to_string(), msg);
            assert_eq!(exit_code(&err), EXIT_FAILURE);
        }
    }
}
