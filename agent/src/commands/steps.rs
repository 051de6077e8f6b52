//! What each step does on the host.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_proto::v1::command::Kind;
use drover_proto::v1::command_update::Phase as WirePhase;
use drover_proto::v1::{
    CommandUpdate, DeployCommand, SetWeightCommand, StageCommand, VerifyCommand,
};

use super::{Instance, Outbox, STAGE_AFTER_DEPLOY, update};
use crate::deploy::fetch::{ArtifactSource, Cache};
use crate::deploy::{self, Progress};
use crate::drain::{self, haproxy};
use crate::hooks;
use crate::journal::Journal;
use crate::runtime::Desired;
use crate::runtime::process::resolve_link;
use crate::verify::{self, VerifySpec};

/// Spacing of deploy progress updates.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub(super) struct StepContext<'a> {
    pub id: &'a str,
    pub instance: &'a Instance,
    pub host_id: &'a str,
    pub journal: &'a Journal,
    pub cache: &'a Cache,
    pub source: &'a dyn ArtifactSource,
    pub outbox: &'a Outbox,
    pub all_instances: &'a HashMap<String, Instance>,
    /// When the command's timeout ends: steps that wait give up a little
    /// before, with their own message.
    pub deadline: tokio::time::Instant,
}

/// Runs one step. Ok: what was done; Err: why it failed.
pub(super) async fn run(ctx: &StepContext<'_>, kind: &Kind) -> Result<String, String> {
    match kind {
        Kind::Stage(s) => stage(ctx, s).await,
        Kind::Drain(_) => drain(ctx).await,
        Kind::Undrain(_) => undrain(ctx).await,
        Kind::Stop(_) => stop(ctx).await,
        Kind::Start(_) => start(ctx).await,
        Kind::Verify(v) => verify(ctx, v).await,
        Kind::Deploy(d) => deploy(ctx, d).await,
        Kind::SetWeight(w) => set_weight(ctx, w).await,
    }
}

/// Environment for hooks and exec drains.
fn hook_env(ctx: &StepContext<'_>) -> Vec<(&'static str, String)> {
    let cfg = &ctx.instance.cfg;
    let release = ctx.instance.handle.meta().release;
    let release_dir = cfg
        .deploy
        .as_ref()
        .filter(|d| std::fs::symlink_metadata(d.current_link()).is_ok())
        .map(|d| {
            resolve_link(&d.current_link())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    vec![
        ("DROVER_INSTANCE", cfg.name.clone()),
        ("DROVER_INSTANCE_ID", cfg.id(ctx.host_id)),
        ("DROVER_SERVICE", cfg.service.clone()),
        ("DROVER_RELEASE_VERSION", release.version),
        ("DROVER_RELEASE_DIR", release_dir),
        ("DROVER_COMMAND_ID", ctx.id.to_string()),
    ]
}

async fn set_drained(ctx: &StepContext<'_>, drained: bool) -> Result<(), String> {
    ctx.instance
        .state
        .update(move |s| s.drained = drained)
        .await
        .map_err(|e| format!("record the drained state: {e}"))?;
    ctx.instance.handle.set_drained(drained);
    Ok(())
}

async fn set_desired(ctx: &StepContext<'_>, desired: Desired) -> Result<(), String> {
    ctx.instance
        .state
        .update(move |s| s.desired = desired)
        .await
        .map(drop)
        .map_err(|e| format!("record the desired state: {e}"))
}

async fn drain(ctx: &StepContext<'_>) -> Result<String, String> {
    // Counted as out of service from before the load balancer hears of
    // it: over-reporting a drain is safe, under-reporting is not.
    set_drained(ctx, true).await?;
    match drain::drain(&ctx.instance.cfg.drain, &hook_env(ctx)).await {
        Ok(msg) => Ok(msg),
        Err((e, maybe_drained)) => {
            if !maybe_drained {
                set_drained(ctx, false).await?;
            }
            Err(e.to_string())
        }
    }
}

async fn undrain(ctx: &StepContext<'_>) -> Result<String, String> {
    let instance = ctx.instance.cfg.id(ctx.host_id);
    let progress = |msg: String| ctx.outbox.push(update(ctx.id, WirePhase::Progress, msg));
    let wait = drain::UndrainWait {
        instance: &instance,
        deadline: ctx.deadline,
        progress: &progress,
    };
    match drain::undrain(&ctx.instance.cfg.drain, &hook_env(ctx), &wait).await {
        Ok(done) => {
            // Reported with the undrain's result: the coordinator counts
            // the instance in service from here on.
            if !done.views.is_empty() {
                ctx.instance
                    .handle
                    .set_load_balancers(done.views, done.asked);
            }
            set_drained(ctx, false).await?;
            Ok(done.message)
        }
        Err(e) => {
            // Ready in HAProxy, only not UP yet: no longer drained by us.
            if matches!(e, drain::DrainError::NotUp { .. }) {
                set_drained(ctx, false).await?;
            }
            Err(e.to_string())
        }
    }
}

/// Sets (or, with `restore`, puts back) the instance's weight in every
/// load balancer. The desired weight is recorded first, durably and on
/// the board, under the instance's weight lock: from then on the view
/// reader keeps it in force (a reloaded HAProxy gets it again), and never
/// with a stale value while this step runs.
async fn set_weight(ctx: &StepContext<'_>, w: &SetWeightCommand) -> Result<String, String> {
    let cfg = &ctx.instance.cfg;
    let crate::config::DrainConfig::Haproxy(h) = &cfg.drain else {
        return Err(format!(
            "{} has no load balancer drover can weight (drain type {})",
            cfg.id(ctx.host_id),
            cfg.drain.kind()
        ));
    };
    let weight = if w.restore {
        haproxy::Weight::Configured
    } else if w.weight > drain::weight::MAX_WEIGHT {
        return Err(drain::weight::WeightError::OutOfRange(w.weight).to_string());
    } else {
        haproxy::Weight::Absolute(w.weight)
    };
    let (board, index) = ctx.instance.handle.board();
    let lock = board
        .weight_lock(index)
        .ok_or_else(|| format!("instance {} has no slot on the status board", cfg.name))?;
    let _guard = lock.lock().await;
    // Refused algorithms are refused before anything is recorded.
    let checked = drain::weight::check(h, weight)
        .await
        .map_err(|e| e.to_string())?;
    let desired = match weight {
        haproxy::Weight::Absolute(n) => Some(n),
        haproxy::Weight::Configured => None,
    };
    let previous = board.desired_weight(index);
    let record = |w: Option<u32>| async move {
        ctx.instance
            .state
            .update(move |s| s.weight = w)
            .await
            .map_err(|e| format!("record the desired weight: {e}"))?;
        board.set_desired_weight(index, w);
        Ok::<(), String>(())
    };
    record(desired).await?;
    let done = match drain::weight::apply(
        h,
        weight,
        checked,
        previous.map_or(haproxy::Weight::Configured, haproxy::Weight::Absolute),
    )
    .await
    {
        Ok(done) => done,
        // Nothing took: what was held before stays held.
        Err(e @ drain::weight::WeightError::MapBasedHash { .. }) => {
            record(previous).await?;
            return Err(e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    };
    ctx.instance
        .handle
        .set_load_balancers(done.views, done.asked);
    Ok(done.message)
}

async fn stop(ctx: &StepContext<'_>) -> Result<String, String> {
    let hooks = &ctx.instance.cfg.hooks;
    if let Some(argv) = &hooks.before_stop {
        hooks::run(argv, &hook_env(ctx), hooks.timeout)
            .await
            .map_err(|e| format!("before_stop hook failed: {e}"))?;
    }
    // Recorded first: from now on neither the crash-restart logic nor an
    // agent restart brings the instance back until a start command.
    set_desired(ctx, Desired::Stopped).await?;
    ctx.instance
        .handle
        .runtime()
        .stop()
        .await
        .map_err(|e| format!("stop: {e}"))?;
    Ok(if hooks.before_stop.is_some() {
        "before_stop hook passed; stopped".to_string()
    } else {
        "stopped".to_string()
    })
}

async fn start(ctx: &StepContext<'_>) -> Result<String, String> {
    set_desired(ctx, Desired::Running).await?;
    let runtime = ctx.instance.handle.runtime();
    runtime.start().await.map_err(|e| format!("start: {e}"))?;
    let mut status = runtime.subscribe();
    loop {
        let now = *status.borrow_and_update();
        if now.is_running() {
            return Ok(match now.pid {
                0 => "running".to_string(),
                pid => format!("running (pid {pid})"),
            });
        }
        status
            .changed()
            .await
            .map_err(|_| "the instance's runtime task has ended".to_string())?;
    }
}

async fn verify(ctx: &StepContext<'_>, v: &VerifyCommand) -> Result<String, String> {
    let spec = VerifySpec {
        min_healthy_time: Duration::from_millis(u64::from(v.min_healthy_time_ms)),
        healthy_deadline: Duration::from_millis(u64::from(v.healthy_deadline_ms)),
    };
    let cfg = &ctx.instance.cfg;
    let runtime = ctx.instance.handle.runtime();
    let msg = verify::healthy_for(cfg.health.as_ref(), runtime, spec).await?;
    let msg = match &cfg.hooks.validate {
        None => msg,
        Some(argv) => {
            hooks::run(argv, &hook_env(ctx), cfg.hooks.timeout)
                .await
                .map_err(|e| format!("{msg}, but the validate hook failed: {e}"))?;
            format!("{msg}; validate hook passed")
        }
    };
    // Reported healthy from here on, as the coordinator now counts it.
    let now = runtime.status();
    if now.is_running() && now.pid != 0 {
        ctx.instance.handle.set_verified(now.pid);
    }
    Ok(msg)
}

/// Fetch and unpack progress as command updates, the byte counts at most
/// every [`PROGRESS_EVERY`].
fn progress_reporter<'a>(ctx: &'a StepContext<'a>) -> impl Fn(Progress) + Send + Sync + 'a {
    let last = Mutex::new(None::<Instant>);
    move |p: Progress| {
        let u = match p {
            Progress::Fetching(f) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                let done = f.total > 0 && f.done >= f.total;
                if !done && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                CommandUpdate {
                    bytes_done: f.done,
                    bytes_total: f.total,
                    ..update(ctx.id, WirePhase::Progress, "fetching artifact")
                }
            }
            Progress::Unpacking => update(ctx.id, WirePhase::Progress, "unpacking"),
            Progress::Switching => update(ctx.id, WirePhase::Progress, "switching current"),
        };
        ctx.outbox.push(u);
    }
}

fn deploy_target<'a>(
    ctx: &'a StepContext<'a>,
    release: Option<&'a drover_proto::v1::Release>,
    verb: &str,
) -> Result<
    (
        &'a crate::config::DeployConfig,
        &'a drover_proto::v1::Release,
    ),
    String,
> {
    let cfg = &ctx.instance.cfg;
    let Some(dcfg) = &cfg.deploy else {
        return Err(format!(
            "instance {} has no deploy_dir in the agent config",
            cfg.name
        ));
    };
    let Some(release) = release else {
        return Err(format!("{verb} command without a release"));
    };
    Ok((dcfg, release))
}

/// Fetch, verify and unpack beside the running release; the instance
/// keeps serving throughout.
async fn stage(ctx: &StepContext<'_>, s: &StageCommand) -> Result<String, String> {
    let (dcfg, release) = deploy_target(ctx, s.release.as_ref(), "stage")?;
    let progress = progress_reporter(ctx);
    let staged = deploy::stage(dcfg, release, ctx.cache, ctx.source, &progress)
        .await
        .map_err(|e| e.to_string())?;
    let how = if staged.reused {
        "already staged"
    } else if staged.fetched {
        "downloaded"
    } else {
        "from the agent's cache"
    };
    Ok(format!(
        "staged {} in {} ({how})",
        release.version,
        staged.dir.display()
    ))
}

async fn deploy(ctx: &StepContext<'_>, d: &DeployCommand) -> Result<String, String> {
    let cfg = &ctx.instance.cfg;
    let (dcfg, release) = deploy_target(ctx, d.release.as_ref(), "deploy")?;
    let progress = progress_reporter(ctx);
    let deployed = deploy::deploy(dcfg, release, ctx.cache, ctx.source, &progress)
        .await
        .map_err(|e| e.to_string())?;
    match deploy::current_release(dcfg) {
        Ok(Some(r)) => ctx.instance.handle.set_release(r),
        Ok(None) => {}
        Err(e) => tracing::error!(instance = %cfg.name, "read the current release: {e}"),
    }
    let how = if deployed.reused {
        "release directory already unpacked"
    } else if deployed.fetched {
        "downloaded"
    } else {
        "from the agent's cache"
    };
    let mut msg = format!("deployed {} ({how})", release.version);
    if let Some(argv) = &cfg.hooks.after_deploy {
        ctx.journal
            .stage(ctx.id, STAGE_AFTER_DEPLOY)
            .map_err(|e| format!("journal: {e}"))?;
        hooks::run(argv, &hook_env(ctx), cfg.hooks.timeout)
            .await
            .map_err(|e| format!("{msg}, but the after_deploy hook failed: {e}"))?;
        msg.push_str("; after_deploy hook passed");
    }
    let keep_cfg = dcfg.clone();
    let previous = deployed.previous.clone();
    let removed =
        tokio::task::spawn_blocking(move || deploy::prune(&keep_cfg, previous.as_deref()))
            .await
            .unwrap_or_default();
    if !removed.is_empty() {
        msg.push_str(&format!("; removed old releases {}", removed.join(", ")));
    }
    let mut keep: HashSet<String> = ctx
        .all_instances
        .values()
        .filter_map(|i| i.cfg.deploy.as_ref())
        .flat_map(deploy::kept_digests)
        .collect();
    keep.insert(release.digest.clone());
    ctx.cache.prune(&keep);
    Ok(msg)
}
