//! `drover-fleet up --ha`: two coordinators on a 3-member etcd, and the
//! leader SIGKILLed in the middle of the rolling update. The operator sees
//! who leads before and after, the moment the standby takes over (measured
//! from the kill to its ready file saying `leader`), the rollout resumed
//! and finished by the new leader, and the epochs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use drover_tests::WebFleet;
use drover_tests::harness::etcd::EtcdCluster;
use drover_tests::harness::pause;
use drover_tests::harness::rollout::SERVICE;

use super::{
    UpOpts, Update, cli_all, coordinators_of, floor, prepare_v1, sample_capacity, steady_load,
    step, update_args,
};

/// The leader's lease with `--ha` (that of the HA test fleets): a standby
/// takes over about this long after the leader dies.
pub const HA_LEASE: Duration = Duration::from_secs(3);

/// Starts the 3-member etcd cluster of `--ha` on loopback.
pub fn start_etcd() -> Result<EtcdCluster> {
    let found = std::env::var_os("DROVER_ETCD").is_some()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin")])
            .any(|d| d.join("etcd").is_file());
    if !found {
        bail!(
            "--ha needs etcd, which is not on the PATH: install Debian's etcd-server (scripts/setup does) or set DROVER_ETCD to the etcd binary"
        );
    }
    step("starting etcd: 3 members on loopback");
    let started = Instant::now();
    let etcd = EtcdCluster::start(3);
    println!(
        "    members {}, healthy after {:.1}s (data in {})",
        etcd.endpoints().join(", "),
        started.elapsed().as_secs_f64(),
        etcd.dir().display()
    );
    Ok(etcd)
}

/// Polls `f` every 25 ms until it gives a value; an error naming `what`
/// after `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("gave up after {timeout:?} waiting until {what}");
        }
        pause(Duration::from_millis(25));
    }
}

/// Wall-clock time for the operator, to the millisecond (UTC).
fn now_utc() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Who leads and with which epoch, as `drover coordinators -o json` says.
struct Leadership {
    leader: String,
    epoch: u64,
}

/// `drover coordinators` shown, and read again as JSON.
fn show_coordinators(web: &WebFleet, when: &str) -> Result<Leadership> {
    let cli = cli_all(web);
    step(&format!("drover coordinators ({when})"));
    let out = cli.run(&["coordinators"]);
    if !out.success() {
        bail!("`drover coordinators` failed:\n{out}");
    }
    print!("{}", out.stdout);
    let out = cli.run(&["coordinators", "-o", "json"]);
    if !out.success() {
        bail!("`drover coordinators -o json` failed:\n{out}");
    }
    let listed: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("parse `drover coordinators -o json`:\n{out}"))?;
    Ok(Leadership {
        leader: listed["leader"].as_str().unwrap_or("none").to_string(),
        epoch: listed["epoch"].as_u64().unwrap_or(0),
    })
}

/// A CLI process running on the terminal; killed if the demo gives up
/// before it ends.
struct Live(std::process::Child);

impl Live {
    /// Whether it has exited, and with success.
    fn exited(&mut self) -> Result<Option<bool>> {
        let status = self.0.try_wait().context("check on the live CLI")?;
        Ok(status.map(|s| s.success()))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Phase 2 with `--ha`: the rolling update to v2, one instance at a time
/// under load, watched live by the CLI given both coordinators; once an
/// instance is updated the leader is SIGKILLed, and the standby takes the
/// rollout over and finishes it.
pub fn ha_rolling_update(web: &mut WebFleet, opts: &UpOpts) -> Result<()> {
    prepare_v1(web)?;
    let first = web.latest().id;
    let before = show_coordinators(web, "before")?;
    let limit = Duration::from_secs(180);
    let load = steady_load(web, limit, 60_000);
    let sampler = sample_capacity(web, limit);
    let floor = floor(opts.agents);
    let cli = cli_all(web);
    step(&format!(
        "rolling update v1 -> v2, one instance at a time, floor {floor}, watched live by the CLI \
         given both coordinators (it follows whichever leads)"
    ));
    let args = update_args("1", &floor, "2s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("$ DROVER_ADDR={} drover {}", cli.addr, args.join(" "));
    let started = Instant::now();
    let mut live = Live(
        cli.command(&args)
            .stdin(Stdio::null())
            .spawn()
            .context("run drover rollout start")?,
    );
    // The moment to kill: one instance updated and the next one out of
    // service, verifying its new release (for the 2 s of
    // --min-healthy-time, so the poll sees it), the others still to come.
    // Not while the next one stages: an agent fetching the artifact then
    // gives up before the standby leads (reported to issue 12).
    let id = poll(Duration::from_secs(30), "the rolling update starts", || {
        if live.exited()?.is_some() {
            bail!("`drover rollout start` ended before the rollout started");
        }
        let list = web.try_list().ok().unwrap_or_default();
        Ok((list.into_iter())
            .filter(|r| r.id != first && (r.service.is_empty() || r.service == SERVICE))
            .max_by_key(|r| r.started_at_ms)
            .map(|r| r.id))
    })?;
    let mid = poll(
        Duration::from_secs(60),
        "the rolling update has updated an instance and verifies the next",
        || {
            let r = web.try_status(&id).ok();
            if let Some(r) = r.as_ref().filter(|r| r.is_terminal()) {
                bail!(
                    "rollout {id} ended ({}) before the leader could be killed: {}",
                    r.phase,
                    r.reason_text()
                );
            }
            Ok(r.filter(|r| {
                r.counts.done >= 1 && (r.instances.iter()).any(|i| i.step == "verifying")
            }))
        },
    )?;
    let Some(leader) = std::iter::once(&mut web.fleet.coordinator)
        .chain(web.fleet.standbys.iter_mut())
        .find(|c| c.is_running() && c.role() == "leader")
    else {
        bail!("no coordinator leads in the middle of rollout {id}");
    };
    let killed = leader.spec.name.clone();
    let pid = leader.pid().unwrap_or(0);
    let in_flight: Vec<String> = (mid.instances.iter())
        .filter(|i| !matches!(i.step.as_str(), "pending" | "done" | "skipped"))
        .map(|i| format!("{} {}", i.id, i.step))
        .collect();
    // Said first, so that it shows before the CLI notices.
    step(&format!(
        "{} SIGKILL to the leader {killed} (pid {pid}) mid-rollout: {} of {} instances updated{}",
        now_utc(),
        mid.counts.done,
        mid.counts.total,
        if in_flight.is_empty() {
            String::new()
        } else {
            format!(", in flight: {}", in_flight.join(", "))
        }
    ));
    let kill_at = Instant::now();
    leader.kill();
    let new_leader = poll(
        HA_LEASE + Duration::from_secs(15),
        "a standby takes the lead",
        || {
            Ok(coordinators_of(web)
                .find(|c| c.is_running() && c.role() == "leader")
                .map(|c| c.spec.name.clone()))
        },
    )?;
    let takeover = kill_at.elapsed();
    step(&format!(
        "{} {new_leader} took over: its role is leader {:.2}s after the kill (lease {}s)",
        now_utc(),
        takeover.as_secs_f64(),
        HA_LEASE.as_secs()
    ));
    let after = show_coordinators(web, "after the takeover")?;
    // The CLI follows the rollout to its end on the new leader.
    let succeeded = poll(Duration::from_secs(180), "the rolling update ends", || {
        live.exited()
    })?;
    let update = Update {
        succeeded,
        took: started.elapsed(),
        capacity: sampler.stop(),
        report: load.stop(),
        rollout: web.latest(),
    };
    let resumed = (update.rollout.events.iter())
        .find(|e| e.message.contains("resumed after a coordinator restart"))
        .map(|e| e.message.clone());

    step("summary");
    update.print_rollout(&format!(", finished by {new_leader}"));
    if let Some(resumed) = &resumed {
        println!("    {new_leader} picked it up from etcd: {resumed}");
    }
    update.print_load();
    println!(
        "    takeover: {killed} SIGKILLed mid-rollout, {new_leader} leader {:.2}s later (lease {}s)",
        takeover.as_secs_f64(),
        HA_LEASE.as_secs()
    );
    println!(
        "    leader epoch: {} -> {} ({} -> {})",
        before.epoch, after.epoch, before.leader, after.leader
    );
    update.check()?;
    if after.epoch <= before.epoch || after.leader != new_leader {
        bail!(
            "the new leader {new_leader} should lead with a higher epoch than {killed}: {} ({}) then {} ({})",
            before.leader,
            before.epoch,
            after.leader,
            after.epoch
        );
    }
    if resumed.is_none() {
        bail!(
            "rollout {id} has no event of {new_leader} resuming it: the kill did not land mid-rollout\n{}",
            update.rollout.timeline()
        );
    }
    println!(
        "    the standby took the rollout over and finished it: every instance on v2; no request failed; capacity never under the floor"
    );
    Ok(())
}

/// `--ha --keep`: the coordinator killed in the demo starts again; it
/// stands by, so the kept fleet has two coordinators again.
pub fn restart_as_standbys(web: &mut WebFleet) -> Result<()> {
    let dead = std::iter::once(&mut web.fleet.coordinator)
        .chain(web.fleet.standbys.iter_mut())
        .filter(|c| !c.is_running());
    for c in dead {
        c.spec.standby = true;
        c.start();
        match c.role().as_str() {
            "standby" => println!("    {} started again: it stands by", c.spec.name),
            role => println!("    {} started again ({role})", c.spec.name),
        }
    }
    show_coordinators(web, "both running again")?;
    Ok(())
}
