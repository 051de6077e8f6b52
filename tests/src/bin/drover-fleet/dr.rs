//! `drover-fleet up --dr`: a disaster-recovery drill on a two-site local
//! fleet. Hosts are labelled `site=primary` and `site=dr`; the DR site's
//! servers wait in HAProxy at weight 0; a real PostgreSQL primary streams
//! to a replica. Under steady load through HAProxy and a writer inserting
//! rows into the database, `drover drill run` stops writes, waits for the
//! replica, promotes it, moves the traffic to the DR site and verifies it,
//! approved by a second operator; then the after-action report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use drover_testkit::postgres::{PgPair, Writer, WriterOptions};
use drover_tests::WebFleet;

use super::{UpOpts, cli, cli_live, prepare_dir, steady_load, step};

/// Where the example plan's PostgreSQL helpers are (the repository's
/// `examples/dr`, found from this binary's source tree).
fn commands_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dr");
    dir.canonicalize()
        .with_context(|| format!("find the example DR helpers in {}", dir.display()))
}

fn plan_text(pair: &PgPair) -> String {
    let (a, b) = (pair.primary().endpoint(), pair.replica().endpoint());
    format!(
        "# The demo's DR plan: web moves from site=primary to site=dr.\n\
         service = \"web\"\nversion = \"demo-1\"\nrto = \"5m\"\nrpo = \"0s\"\n\
         [database]\n\
         lag = [\"pg-lag\", \"--host\", \"{ah}\", \"--port\", \"{ap}\"]\n\
         stop_writes = [\"pg-stop-writes\", \"--host\", \"{ah}\", \"--port\", \"{ap}\"]\n\
         promote = [\"pg-promote\", \"--host\", \"{bh}\", \"--port\", \"{bp}\"]\n\
         timeout = \"30s\"\ncatch_up_timeout = \"30s\"\n\
         [verify]\nhold = \"5s\"\ntimeout = \"60s\"\n",
        ah = a.host,
        ap = a.port,
        bh = b.host,
        bp = b.port,
    )
}

pub fn run(opts: &UpOpts) -> Result<()> {
    if opts.agents < 4 || !opts.agents.is_multiple_of(2) {
        bail!("--dr needs an even --agents of 4 or more: half on each site");
    }
    step(
        "starting PostgreSQL: a primary (the primary site's) streaming to a replica (the DR site's)",
    );
    let mut pair = PgPair::start().map_err(|e| anyhow::anyhow!("start PostgreSQL: {e}"))?;
    pair.wait_streaming(Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "    primary {} streams to replica {}",
        pair.primary().endpoint(),
        pair.replica().endpoint()
    );
    let commands = commands_dir()?;
    let half = opts.agents / 2;
    let mut builder = WebFleet::builder();
    if let Some(dir) = &opts.dir {
        prepare_dir(dir)?;
        builder = builder.dir(dir);
    }
    for i in 1..=opts.agents {
        let site = if i <= half { "primary" } else { "dr" };
        builder = builder.host(&format!("h{i}"), &[("site", site)]);
    }
    let toml = format!(
        "[drills]\ncommands_dir = {}\n",
        toml::Value::String(commands.display().to_string())
    );
    step(&format!(
        "starting a CA, a coordinator ([drills] commands_dir = {}), HAProxy and {} agents: h1..h{half} on site=primary, h{}..h{} on site=dr",
        commands.display(),
        opts.agents,
        half + 1,
        opts.agents
    ));
    let mut web = builder
        .coordinator(|c| c.extra_toml.push_str(&toml))
        .start();
    let result = drill(&web, &mut pair, half, opts.agents);
    step("stopping agents, instances, coordinator, HAProxy and PostgreSQL");
    web.fleet.shutdown(Duration::from_secs(5));
    result
}

fn drill(web: &WebFleet, pair: &mut PgPair, half: usize, n: usize) -> Result<()> {
    step("deploying v1 everywhere");
    web.deploy_initial("v1");
    step("the DR site waits at weight 0 in HAProxy: registered and healthy, taking nothing");
    for i in half + 1..=n {
        web.haproxy
            .command(&format!("set server web/h{i} weight 0"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let dir = web.root.join("dr");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let plan = dir.join("dr.toml");
    std::fs::write(&plan, plan_text(pair)).with_context(|| format!("write {}", plan.display()))?;
    let plan_arg = plan.display().to_string();
    step(&format!("the plan, {plan_arg}:"));
    print!("{}", plan_text(pair));
    step("its pre-checks, changing nothing:");
    print!("{}", cli(web, &["drill", "plan", "-f", &plan_arg])?);

    let load = steady_load(web, Duration::from_secs(180), 100_000);
    step(
        "a writer inserts numbered rows into the primary database, and remembers which were acknowledged",
    );
    let writer = Writer::start(pair.primary().endpoint(), WriterOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    writer
        .wait_acknowledged(50, Duration::from_secs(20))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    step("alice starts the drill; the plan asks for an approval by someone else");
    print!(
        "{}",
        cli(web, &["drill", "run", "-f", &plan_arg, "--yes", "--detach"])?
    );
    let bob = web.fleet.pki.issue("operator", "bob", &[], None);
    step("bob approves it");
    let approved = web
        .fleet
        .cli_as(Some(bob))
        .run(&["drill", "approve", "dr-1"]);
    if !approved.success() {
        bail!("`drover drill approve dr-1` failed:\n{approved}");
    }
    print!("{}", approved.stdout);
    let ok = cli_live(web, &["drill", "watch", "dr-1"])?;
    // The promoted replica takes the writer's rows from now on.
    pair.promote().map_err(|e| anyhow::anyhow!("{e}"))?;
    writer.retarget(pair.primary().endpoint());
    let more = writer.acknowledged() + 20;
    writer
        .wait_acknowledged(more, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("writes on the promoted database: {e}"))?;
    let log = writer.stop();
    let loss = log
        .lost_after_promotion(pair.primary())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = load.stop();
    step("the after-action report (drover drill report dr-1):");
    print!("{}", cli(web, &["drill", "report", "dr-1"])?);
    step("summary");
    println!(
        "    requests through HAProxy: {} served, {} failed",
        report.ok, report.failed
    );
    println!(
        "    database writes: {} acknowledged, {} kept on the promoted replica, {} lost",
        loss.acknowledged,
        loss.kept,
        loss.lost.len()
    );
    if !ok || report.failed > 0 || !loss.lost.is_empty() {
        bail!("the drill did not end well (see above)");
    }
    println!("    all traffic on site=dr; no request failed; no acknowledged write lost");
    Ok(())
}
