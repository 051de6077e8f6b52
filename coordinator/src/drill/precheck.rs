//! The pre-checks of a DR plan, against the fleet as the registry sees it
//! now: what `drover drill plan` prints and what a run must pass first.
//!
//! - `capacity`: the DR site's ready instances (healthy, and up in every
//!   load balancer they are registered with, at any weight: a DR site waits
//!   at weight 0) against the primary's peak of serving instances over
//!   `checks.peak_window`;
//! - `release`: the DR site runs the primary's release;
//! - `replication_lag`: the plan's lag command. For an ungraceful run,
//!   against the RPO (what is behind now is what would be lost). For a
//!   graceful one, against `database.catch_up_timeout` (at least the RPO):
//!   writes stop and the replica catches up before the switch, so the RPO
//!   is held at the cutover, and the check is that it can catch up;
//! - `traffic`: the switch is possible: with HAProxy, every instance of
//!   both sites is registered with a load balancer; with commands, they
//!   are installed;
//! - `commands`: every command the plan names is in `commands_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_model::drill::{DrillPlan, ReleaseRule, TrafficVia, parse_lag};
use drover_proto::v1::{self as pb, Host, LoadBalancerState};

use super::peaks::Peaks;
use crate::runner::wire::{connected, observe};

/// One pre-check's verdict, with its numbers: what a drill stores too.
pub type Check = super::engine::CheckRecord;

/// What the pre-checks read, to check a plan against the fleet as it is
/// now: for `drover drill plan`, a run, and a kept plan's schedule.
#[derive(Clone)]
pub struct Checker {
    pub registry: std::sync::Arc<crate::registry::Registry>,
    pub peaks: Peaks,
    pub commands_dir: Option<PathBuf>,
}

impl Checker {
    pub async fn check(&self, plan: &DrillPlan, graceful: bool, failback: bool) -> Vec<Check> {
        let hosts = self.registry.list(&crate::selector::Selector::everything());
        check(
            plan,
            &Fleet {
                hosts: &hosts,
                peaks: &self.peaks,
                now_ms: crate::registry::now_ms(),
                commands_dir: self.commands_dir.as_deref(),
            },
            graceful,
            failback,
        )
        .await
    }
}

impl Check {
    fn new(name: &str, passed: bool, value: String, want: String, detail: String) -> Check {
        Check {
            name: name.to_string(),
            passed,
            value,
            want,
            detail,
        }
    }

    pub fn to_wire(&self) -> pb::DrillCheck {
        pb::DrillCheck {
            name: self.name.clone(),
            passed: self.passed,
            value: self.value.clone(),
            want: self.want.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Where a plan's command `argv[0]` lives, or why it cannot run.
pub fn resolve(
    commands_dir: Option<&Path>,
    field: &str,
    argv: &[String],
) -> Result<PathBuf, String> {
    let Some(dir) = commands_dir else {
        return Err(format!(
            "{field}: this coordinator has no [drills] commands_dir, so a plan cannot run commands"
        ));
    };
    let Some(name) = argv.first() else {
        return Err(format!("{field}: no command"));
    };
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o111 == 0 {
                Err(format!("{field}: {} is not executable", path.display()))
            } else {
                Ok(path)
            }
        }
        Ok(_) => Err(format!("{field}: {} is not a file", path.display())),
        Err(e) => Err(format!(
            "{field}: no command {name:?} in {} ({e})",
            dir.display()
        )),
    }
}

/// Runs one of the plan's commands with the drill's environment.
pub async fn run_command(
    commands_dir: Option<&Path>,
    field: &str,
    argv: &[String],
    env: &[(&str, String)],
    timeout: std::time::Duration,
) -> crate::exec::Ran {
    let path = match resolve(commands_dir, field, argv) {
        Ok(p) => p,
        Err(e) => {
            return crate::exec::Ran {
                ok: false,
                stdout: String::new(),
                detail: e,
                took: std::time::Duration::ZERO,
            };
        }
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(&argv[1..]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::exec::run(cmd, &argv[0], timeout).await
}

/// One site's instances of the plan's service.
#[derive(Debug, Default)]
struct Site {
    /// Instance ids.
    all: Vec<String>,
    /// Healthy and routed to (weight above 0): serving now.
    serving: Vec<String>,
    /// Healthy and up in every load balancer, at any weight: could serve.
    ready: Vec<String>,
    /// Registered with no load balancer.
    unbalanced: Vec<String>,
    /// Release version -> instances on it.
    releases: BTreeMap<String, u32>,
}

fn site_of(hosts: &[Host], service: &str) -> Site {
    let mut site = Site::default();
    for host in hosts {
        let up = connected(host);
        for inst in host.instances.iter().filter(|i| i.service == service) {
            site.all.push(inst.id.clone());
            let seen = observe(inst);
            if up && seen.healthy && seen.in_service() {
                site.serving.push(inst.id.clone());
            }
            let lb_ready = inst.load_balancers.iter().all(|lb| {
                lb.state == LoadBalancerState::Up as i32
                    || lb.state == LoadBalancerState::Drain as i32
            });
            if up && seen.healthy && lb_ready {
                site.ready.push(inst.id.clone());
            }
            if inst.load_balancers.is_empty() {
                site.unbalanced.push(inst.id.clone());
            }
            let version = seen
                .release
                .map(|r| r.version)
                .unwrap_or_else(|| "(none)".to_string());
            *site.releases.entry(version).or_insert(0) += 1;
        }
    }
    site
}

fn releases_text(r: &BTreeMap<String, u32>) -> String {
    if r.is_empty() {
        return "no instances".to_string();
    }
    r.iter()
        .map(|(v, n)| format!("{v} on {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the checks need from the coordinator.
pub struct Fleet<'a> {
    /// Every host the registry knows.
    pub hosts: &'a [Host],
    pub peaks: &'a Peaks,
    pub now_ms: i64,
    pub commands_dir: Option<&'a Path>,
}

/// The environment every plan command gets.
pub fn command_env(plan: &DrillPlan) -> Vec<(&'static str, String)> {
    vec![
        ("DROVER_SERVICE", plan.service.clone()),
        ("DROVER_SITE_LABEL", plan.sites.label.clone()),
        ("DROVER_PRIMARY_SITE", plan.sites.primary.clone()),
        ("DROVER_DR_SITE", plan.sites.dr.clone()),
    ]
}

/// Every pre-check of `plan`, in order.
pub async fn check(
    plan: &DrillPlan,
    fleet: &Fleet<'_>,
    graceful: bool,
    failback: bool,
) -> Vec<Check> {
    let label = &plan.sites.label;
    let on = |value: &str| -> Vec<Host> {
        (fleet.hosts.iter())
            .filter(|h| h.labels.get(label).is_some_and(|v| v == value))
            .cloned()
            .collect()
    };
    let primary = site_of(&on(&plan.sites.primary), &plan.service);
    let dr = site_of(&on(&plan.sites.dr), &plan.service);
    let primary_name = format!("{label}={}", plan.sites.primary);
    let dr_name = format!("{label}={}", plan.sites.dr);
    let mut checks = Vec::new();

    // Capacity.
    let recorded = fleet.peaks.peak(
        &plan.service,
        label,
        &plan.sites.primary,
        plan.checks.peak_window,
        fleet.now_ms,
    );
    // A coordinator that never saw the primary serve (newly elected while
    // the primary site is gone) sizes the DR site against the primary's
    // registered instances instead.
    let count = |v: &Vec<String>| u32::try_from(v.len()).unwrap_or(u32::MAX);
    let mut peak = recorded.max(count(&primary.serving));
    if peak == 0 {
        peak = count(&primary.all);
    }
    let ready = u32::try_from(dr.ready.len()).unwrap_or(u32::MAX);
    let need = (u64::from(peak) * u64::from(plan.checks.capacity)).div_ceil(100);
    let pct = if peak == 0 {
        0
    } else {
        u64::from(ready) * 100 / u64::from(peak)
    };
    let window = match plan.checks.peak_window.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        _ => humantime::format_duration(plan.checks.peak_window).to_string(),
    };
    let passed = peak > 0 && u64::from(ready) >= need;
    let detail = if dr.all.is_empty() {
        format!("no instance of {} on {dr_name}", plan.service)
    } else if peak == 0 {
        format!(
            "no instance of {} serves on {primary_name}, nor did in the last {window}: nothing to size the DR site against",
            plan.service
        )
    } else if !passed {
        let not_ready: Vec<&String> = dr.all.iter().filter(|i| !dr.ready.contains(i)).collect();
        format!(
            "{dr_name} is short of {} instance(s){}",
            need - u64::from(ready),
            if not_ready.is_empty() {
                String::new()
            } else {
                format!(
                    "; not ready: {}",
                    not_ready
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )
    } else {
        String::new()
    };
    checks.push(Check::new(
        "capacity",
        passed,
        format!(
            "{ready} of {} ready on {dr_name} = {pct}% of the primary's peak of {peak} serving in the last {window} ({} now)",
            dr.all.len(),
            primary.serving.len()
        ),
        format!("at least {}% ({need} instances)", plan.checks.capacity),
        detail,
    ));

    // Release.
    // Ungraceful: the primary's hosts may be out of reach, their releases
    // unknown ("(none)"); the DR site must then run one release.
    let primary_unknown = primary.releases.keys().all(|v| v == "(none)");
    let (passed, detail) = match primary.releases.len() {
        _ if !graceful && primary_unknown && dr.releases.len() == 1 => (
            true,
            format!(
                "the primary's releases are unknown (its hosts are out of reach); {dr_name} runs one release"
            ),
        ),
        0 => (
            false,
            format!("no instance of {} on {primary_name}", plan.service),
        ),
        1 => {
            let want = primary.releases.keys().next().cloned().unwrap_or_default();
            let same = dr.releases.len() == 1 && dr.releases.contains_key(&want);
            match (same, plan.checks.release) {
                (true, _) => (true, String::new()),
                (false, ReleaseRule::Same) => (
                    false,
                    format!(
                        "{dr_name} must run {want} like the primary: `drover rollout start --service {} --version {want} --selector {dr_name} --min-healthy 0` first (its instances serve nothing while it waits)",
                        plan.service
                    ),
                ),
            }
        }
        _ => (
            false,
            format!("{primary_name} runs several releases: finish its rollout first"),
        ),
    };
    checks.push(Check::new(
        "release",
        passed,
        format!(
            "{primary_name}: {}; {dr_name}: {}",
            releases_text(&primary.releases),
            releases_text(&dr.releases)
        ),
        match plan.checks.release {
            ReleaseRule::Same => "the same release on both sites".to_string(),
        },
        detail,
    ));

    // Replication lag.
    if let (Some(db), Some(steps)) = (&plan.database, plan.db_steps(failback)) {
        let env = command_env(plan);
        let (field, argv) = steps.lag;
        let ran = run_command(fleet.commands_dir, field, argv, &env, db.timeout).await;
        let rpo = plan.rpo.as_secs_f64();
        let limit = if graceful {
            plan.rpo.max(db.catch_up_timeout)
        } else {
            plan.rpo
        };
        let want = if graceful {
            format!(
                "at most {} behind, to catch up once writes stop (the RPO of {} holds at the cutover)",
                humantime::format_duration(limit),
                humantime::format_duration(plan.rpo)
            )
        } else {
            format!("at most {} (the RPO)", humantime::format_duration(plan.rpo))
        };
        let limit = limit.as_secs_f64();
        if !ran.ok {
            checks.push(Check::new(
                "replication_lag",
                false,
                "not measured".to_string(),
                want,
                format!("the lag command failed: {}", ran.detail),
            ));
        } else {
            match parse_lag(&ran.stdout) {
                Ok(lag) => {
                    // No byte behind is caught up, whatever the seconds
                    // say (PostgreSQL's replay_lag is the last replayed
                    // transaction's, kept a while after it). Bytes behind
                    // count by their seconds against the RPO; an RPO of 0
                    // allows none.
                    let passed = lag.bytes == 0
                        || if graceful {
                            lag.seconds <= limit
                        } else {
                            rpo > 0.0 && lag.seconds <= rpo
                        };
                    let value = if lag.bytes == 0 {
                        "caught up (0 bytes behind)".to_string()
                    } else {
                        lag.to_string()
                    };
                    checks.push(Check::new(
                        "replication_lag",
                        passed,
                        value,
                        want,
                        if passed {
                            String::new()
                        } else {
                            format!(
                                "the replica is {lag} behind, past {}",
                                if graceful {
                                    "what it can catch up"
                                } else {
                                    "the RPO"
                                }
                            )
                        },
                    ));
                }
                Err(e) => checks.push(Check::new(
                    "replication_lag",
                    false,
                    "not measured".to_string(),
                    want,
                    e,
                )),
            }
        }
    }

    // Traffic.
    match plan.traffic.via {
        TrafficVia::Haproxy => {
            let mut missing: Vec<&String> = primary.unbalanced.iter().collect();
            missing.extend(dr.unbalanced.iter());
            let weighted_dr = dr.serving.len();
            checks.push(Check::new(
                "traffic",
                missing.is_empty() && !dr.all.is_empty(),
                format!(
                    "{} of {} instances registered with a load balancer; {weighted_dr} of {} on {dr_name} take traffic now",
                    primary.all.len() + dr.all.len() - missing.len(),
                    primary.all.len() + dr.all.len(),
                    dr.all.len(),
                ),
                "every instance of both sites in HAProxy, so drover can set their weights".to_string(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        "in no load balancer: {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        }
        TrafficVia::Command => {
            let errors: Vec<String> = [
                ("traffic.switch", &plan.traffic.switch),
                ("traffic.switch_back", &plan.traffic.switch_back),
            ]
            .into_iter()
            .filter_map(|(f, argv)| resolve(fleet.commands_dir, f, argv).err())
            .collect();
            checks.push(Check::new(
                "traffic",
                errors.is_empty(),
                "by the plan's switch and switch_back commands".to_string(),
                "both commands installed".to_string(),
                errors.join("; "),
            ));
        }
    }

    // Commands.
    let commands = plan.commands();
    if !commands.is_empty() {
        let errors: Vec<String> = (commands.iter())
            .filter_map(|(f, argv)| resolve(fleet.commands_dir, f, argv).err())
            .collect();
        checks.push(Check::new(
            "commands",
            errors.is_empty(),
            format!(
                "{} of {} installed",
                commands.len() - errors.len(),
                commands.len()
            ),
            match fleet.commands_dir {
                Some(d) => format!("every command in {}", d.display()),
                None => "a [drills] commands_dir in the coordinator's config".to_string(),
            },
            errors.join("; "),
        ));
    }
    checks
}
