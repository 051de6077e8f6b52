//! The web view (`drover ui`, issue 14) in a real headless Chromium: the
//! real `drover ui` process with the operator's certificates, in front of
//! a real coordinator, agents and HAProxy. What is checked is the page's
//! DOM (host rows, labels, step states, the plot's data points, the
//! canary's looks), never pixels; screenshots are kept as artifacts under
//! `target/test-artifacts/ui/` (or `$DROVER_TEST_ARTIFACTS/ui`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_testkit::chromium::Browser;
use drover_tests::harness::traffic::load_spec;
use drover_tests::{AgentSpec, Cli, Fleet, Proc, WAIT, WebFleet, http_get, wait_until_with};
use serde::Deserialize;
use serde_json::Value;

use crate::grpc::{SessionOutcome, hello, session};

/// Tallest screenshot kept.
const MAX_SHOT_HEIGHT: u32 = 2400;

/// `drover ui` as a process, killed on drop.
struct Ui {
    proc: Proc,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    base: String,
}

impl Ui {
    /// Starts `drover ui --listen 127.0.0.1:0` as the fleet's operator and
    /// waits for the URL it prints.
    fn start(fleet: &Fleet) -> Ui {
        Ui::start_as(&fleet.operator(), &fleet.dir)
    }

    /// [`Ui::start`] with `cli`'s certificate, logging into `dir`.
    fn start_as(cli: &Cli, dir: &Path) -> Ui {
        let cmd = cli.command(&["ui", "--listen", "127.0.0.1:0"]);
        let log = dir.join("ui.log");
        let proc = Proc::spawn("drover ui", cmd, &log);
        let url = wait_until_with(
            WAIT,
            "drover ui prints the URL it serves",
            || {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines().find_map(|l| {
                    l.strip_prefix("drover ui: serving ")?
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                })
            },
            || proc.describe(30),
        );
        Ui {
            base: url.trim_end_matches('/').to_string(),
            proc,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

/// Where screenshots are kept: `$DROVER_TEST_ARTIFACTS/ui`, else
/// `target/test-artifacts/ui` beside the test binary's profile dir.
fn artifacts() -> PathBuf {
    if let Some(dir) = std::env::var_os("DROVER_TEST_ARTIFACTS") {
        return PathBuf::from(dir).join("ui");
    }
    // The test binary is target/<profile>/deps/e2e-HASH.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts").join("ui")
}

#[track_caller]
fn shot(b: &mut Browser, name: &str) -> PathBuf {
    shot_scaled(b, name, MAX_SHOT_HEIGHT, 1.0)
}

#[track_caller]
fn shot_scaled(b: &mut Browser, name: &str, max_height: u32, scale: f64) -> PathBuf {
    let path = artifacts().join(name);
    b.screenshot(&path, max_height, scale)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    eprintln!("screenshot: {}", path.display());
    path
}

#[track_caller]
fn browser() -> Browser {
    Browser::launch(WAIT).unwrap_or_else(|e| panic!("start headless Chromium: {e}"))
}

#[track_caller]
fn open(b: &mut Browser, ui: &Ui, path: &str) {
    let url = ui.url(path);
    b.open(&url, WAIT)
        .unwrap_or_else(|e| panic!("open {url}: {e}\n{}", ui.proc.describe(30)));
}

/// Evaluates `js`, which returns `JSON.stringify(...)`, and parses it.
#[track_caller]
fn read<T: serde::de::DeserializeOwned>(b: &mut Browser, js: &str) -> T {
    let v = b.eval(js).unwrap_or_else(|e| panic!("{e}"));
    let text = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[derive(Debug, Deserialize)]
struct HostRow {
    host: String,
    status: String,
    health: String,
    labels: std::collections::BTreeMap<String, String>,
    /// (instance, health, release)
    instances: Vec<(String, String, String)>,
}

const HOST_ROWS: &str = "JSON.stringify([...document.querySelectorAll('tr.host')].map(r => ({
    host: r.dataset.host, status: r.dataset.status, health: r.dataset.health,
    labels: Object.fromEntries([...r.querySelectorAll('.label')].map(l => [l.dataset.key, l.dataset.value])),
    instances: [...r.querySelectorAll('li.instance')].map(i => [i.dataset.instance, i.dataset.health, i.dataset.release]),
})))";

fn host_ids(rows: &[HostRow]) -> Vec<&str> {
    rows.iter().map(|r| r.host.as_str()).collect()
}

#[test]
fn the_fleet_page_shows_hosts_health_labels_and_releases_and_filters_by_selector() {
    let web = WebFleet::builder()
        .host("h1", &[("zone", "a"), ("env", "prod")])
        .host("h2", &[("zone", "b"), ("env", "prod")])
        .host("h3", &[("zone", "a"), ("env", "staging")])
        .start();
    web.deploy_initial("v1");
    let ui = Ui::start(&web.fleet);
    let mut b = browser();

    open(&mut b, &ui, "/");
    b.wait_for(
        "document.querySelectorAll('tr.host[data-health=ok]').length === 3",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", web.diagnostics()));
    let rows: Vec<HostRow> = read(&mut b, HOST_ROWS);
    assert_eq!(host_ids(&rows), ["h1", "h2", "h3"], "{rows:#?}");
    for (row, (zone, env)) in rows
        .iter()
        .zip([("a", "prod"), ("b", "prod"), ("a", "staging")])
    {
        assert_eq!(row.status, "connected", "{row:#?}");
        assert_eq!(row.health, "ok", "{row:#?}");
        assert_eq!(
            row.labels.get("zone").map(String::as_str),
            Some(zone),
            "{row:#?}"
        );
        assert_eq!(
            row.labels.get("env").map(String::as_str),
            Some(env),
            "{row:#?}"
        );
        assert_eq!(
            row.instances,
            [(
                format!("web@{}", row.host),
                "healthy".to_string(),
                "v1".to_string()
            )],
            "{row:#?}"
        );
    }
    let releases: Vec<(String, String, String)> = read(
        &mut b,
        "JSON.stringify([...document.querySelectorAll('tr.release')].map(r => \
         [r.dataset.service, r.dataset.version, r.dataset.instances]))",
    );
    assert_eq!(releases, [("web".into(), "v1".into(), "3".into())]);
    shot(&mut b, "fleet.png");

    // A selector in the URL, in the CLI's syntax.
    open(&mut b, &ui, "/?selector=zone%3Da");
    let rows: Vec<HostRow> = read(&mut b, HOST_ROWS);
    assert_eq!(host_ids(&rows), ["h1", "h3"], "{rows:#?}");

    // The form: typed and submitted as a person would.
    b.eval(
        "document.getElementById('selector').value = 'env=prod,zone notin (a)';\
         document.querySelector('form.filter').submit(); true",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for(
        "location.search.includes('notin') && document.readyState === 'complete'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<HostRow> = read(&mut b, HOST_ROWS);
    assert_eq!(host_ids(&rows), ["h2"], "{rows:#?}");
    // The live part follows the same selector.
    b.wait_for(
        "Number(document.getElementById('live').dataset.updates || 0) >= 1",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("the fleet page is never refreshed: {e}"));
    let rows: Vec<HostRow> = read(&mut b, HOST_ROWS);
    assert_eq!(host_ids(&rows), ["h2"], "after a live refresh: {rows:#?}");
    assert!(b.errors().is_empty(), "page errors: {:#?}", b.errors());

    // A malformed selector is explained, not sent on.
    open(&mut b, &ui, "/?selector=zone%20in%20(a");
    let error = b
        .eval("document.getElementById('selector-error').textContent")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        error.as_str().is_some_and(|e| e.contains("column")),
        "{error}"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('tr.host').length")
            .unwrap_or_else(|e| panic!("{e}")),
        Value::from(0)
    );

    // The other pages answer too.
    open(&mut b, &ui, "/rollouts");
    let phases: Vec<String> = read(
        &mut b,
        "JSON.stringify([...document.querySelectorAll('table.past tr.rollout')].map(r => r.dataset.phase))",
    );
    assert_eq!(
        phases,
        ["succeeded"],
        "the initial deploy is listed as past"
    );
    open(&mut b, &ui, "/drills");
    assert_eq!(
        b.eval("document.querySelector('main p.empty').textContent.startsWith('No drill yet')")
            .unwrap_or_else(|e| panic!("{e}")),
        Value::Bool(true)
    );
}

#[derive(Debug, Deserialize)]
struct RolloutPage {
    phase: String,
    /// (instance, step, release)
    cells: Vec<(String, String, String)>,
    /// (number, share, state, current)
    steps: Vec<(String, String, String, String)>,
    /// (batch, state); batch 0 holds the instances not started
    batches: Vec<(u32, String)>,
    /// (at_ms, capacity, floor)
    points: Vec<(i64, u32, u32)>,
    looks: Vec<Look>,
    updates: u32,
    status: String,
}

#[derive(Debug, Deserialize)]
struct Look {
    step: u32,
    verdict: String,
    canary_requests: u64,
    baseline_requests: u64,
    canary_rate: String,
    baseline_rate: String,
}

const ROLLOUT: &str = "(() => { const d = document.getElementById('rollout');
  if (!d) { return JSON.stringify(null); }
  const live = document.getElementById('live');
  const status = document.getElementById('live-status');
  return JSON.stringify({
    phase: d.dataset.phase,
    cells: [...d.querySelectorAll('.cell')].map(c => [c.dataset.instance, c.dataset.step, c.dataset.release]),
    steps: [...d.querySelectorAll('ol.steps li')].map(s => [s.dataset.step, s.dataset.share, s.dataset.state, s.dataset.current]),
    batches: [...d.querySelectorAll('ol.batches li')].map(b => [Number(b.dataset.batch), b.dataset.state]),
    points: [...d.querySelectorAll('#capacity-plot circle.pt')].map(p => [Number(p.dataset.at), Number(p.dataset.capacity), Number(p.dataset.floor)]),
    looks: [...d.querySelectorAll('tr.look')].map(l => ({
      step: Number(l.dataset.step), verdict: l.dataset.verdict,
      canary_requests: Number(l.dataset.canaryRequests), baseline_requests: Number(l.dataset.baselineRequests),
      canary_rate: l.dataset.canaryErrorRate, baseline_rate: l.dataset.baselineErrorRate,
    })),
    updates: Number(live.dataset.updates || 0),
    status: status ? status.dataset.state : '',
  }); })()";

fn steps_of(page: &RolloutPage, step: &str) -> usize {
    page.cells.iter().filter(|c| c.1 == step).count()
}

#[test]
fn a_live_canary_shows_its_grid_steps_plot_and_arms_and_then_its_end_without_a_reload() {
    let web = WebFleet::builder().hosts(5).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let load = web.start_load(load_spec());
    // Held at its first step: the analysis never has the requests it wants
    // (a known point that stays put), with traffic in both arms.
    let spec = web.root.join("canary.toml");
    std::fs::write(
        &spec,
        "strategy = \"canary\"\nsteps = \"20%,100%\"\nbake = \"4s\"\nmin_healthy = \"60%\"\n\
         [analysis]\ninterval = \"1s\"\nwarmup = \"1s\"\nmin_requests = 100000000\n\
         max_analysis = \"5s\"\non_inconclusive = \"pause\"\n",
    )
    .expect("write the rollout spec");
    let started = web.start_detached("v2", &["-f", &spec.display().to_string()]);
    let id = started.id.clone();
    let held = web.wait_rollout(&id, "is held as inconclusive", WAIT * 2, |r| {
        r.phase == "paused" || r.is_terminal()
    });
    assert_eq!(held.phase, "paused", "{}", web.diagnostics_for(&id));

    let ui = Ui::start(&web.fleet);
    let mut b = browser();
    open(&mut b, &ui, &format!("/rollouts/{id}"));
    // The first live update has arrived: the page is followed.
    b.wait_for(
        "Number(document.getElementById('live').dataset.updates || 0) >= 1",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("no live update: {e}\n{}", ui.proc.describe(30)));
    let page: RolloutPage = read(&mut b, ROLLOUT);
    let diag = || format!("{page:#?}\n{}", web.diagnostics_for(&id));
    assert_eq!(page.phase, "paused", "{}", diag());
    assert_eq!(page.status, "live", "{}", diag());
    assert!(page.updates >= 1, "{}", diag());

    // The grid: the canary on v2, done; the other four pending on v1.
    assert_eq!(page.cells.len(), 5, "{}", diag());
    assert_eq!(steps_of(&page, "done"), 1, "{}", diag());
    assert_eq!(steps_of(&page, "pending"), 4, "{}", diag());
    for (instance, step, release) in &page.cells {
        let want = if step == "done" { "v2" } else { "v1" };
        assert_eq!(release, want, "{instance}\n{}", diag());
    }
    // The traffic steps: the first held, the second to come.
    let steps: Vec<(&str, &str, &str, &str)> = (page.steps.iter())
        .map(|(n, s, st, c)| (n.as_str(), s.as_str(), st.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("1", "20%", "held", "true"),
            ("2", "100%", "pending", "false")
        ],
        "{}",
        diag()
    );
    // The plot: never under the floor (60% of 5 is 3), and the dip to 4
    // while the canary was out of service.
    assert!(page.points.len() >= 3, "{}", diag());
    assert!(
        page.points.iter().all(|(_, c, f)| *f == 3 && c >= f),
        "{}",
        diag()
    );
    let lowest = page.points.iter().map(|p| p.1).min();
    let highest = page.points.iter().map(|p| p.1).max();
    assert_eq!((lowest, highest), (Some(4), Some(5)), "{}", diag());
    // Each point is an event the coordinator recorded, with its numbers.
    let recorded = web.status(&id).events;
    for (at, capacity, floor) in &page.points {
        assert!(
            recorded
                .iter()
                .any(|e| e.at_ms == *at && e.capacity == *capacity && e.floor == *floor),
            "plot point {at} {capacity}/{floor} is no event\n{}",
            diag()
        );
    }
    // The canary against its baseline, look by look, with traffic in both
    // arms and each verdict: inconclusive in the end.
    assert!(!page.looks.is_empty(), "{}", diag());
    assert!(page.looks.iter().all(|l| l.step == 1), "{}", diag());
    assert!(
        page.looks
            .iter()
            .any(|l| l.canary_requests > 0 && l.baseline_requests > l.canary_requests),
        "{}",
        diag()
    );
    // Error rates as numbers (the sample service fails no request).
    let rate = |r: &str| r.parse::<f64>().ok().filter(|v| (0.0..=0.01).contains(v));
    assert!(
        page.looks
            .iter()
            .filter(|l| l.canary_requests > 0)
            .all(|l| rate(&l.canary_rate).is_some() && rate(&l.baseline_rate).is_some()),
        "{}",
        diag()
    );
    assert!(
        page.looks.iter().any(|l| l.verdict == "inconclusive"),
        "{}",
        diag()
    );
    shot(&mut b, "rollout-held.png");
    // The README's picture (docs/ui-rollout.png): smaller, for the
    // repository.
    shot_scaled(&mut b, "ui-rollout.png", 1150, 0.7);

    // Promoted from the CLI; the open page follows it to the end by
    // itself (a reload would lose the marker).
    b.eval("window.__drover_marker = 42; true")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = web.rollout(&["promote", &id]);
    assert!(out.success(), "{out}\n{}", diag());
    b.wait_for(
        "document.getElementById('rollout').dataset.phase === 'succeeded'",
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("the page never showed the end: {e}\n{}", diag()));
    let report = load.stop();
    let end: RolloutPage = read(&mut b, ROLLOUT);
    let diag = || format!("{end:#?}\n{report}\n{}", web.diagnostics_for(&id));
    assert_eq!(
        b.eval("window.__drover_marker")
            .unwrap_or_else(|e| panic!("{e}")),
        Value::from(42),
        "the page was reloaded\n{}",
        diag()
    );
    b.wait_for(
        "document.getElementById('live-status').dataset.state === 'finished'",
        WAIT,
    )
    .unwrap_or_else(|e| panic!("the stream did not end: {e}\n{}", diag()));
    assert_eq!(steps_of(&end, "done"), 5, "{}", diag());
    assert!(end.cells.iter().all(|c| c.2 == "v2"), "{}", diag());
    let states: Vec<&str> = end.steps.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(states, ["promoted", "done"], "{}", diag());
    assert!(end.points.iter().all(|(_, c, f)| c >= f), "{}", diag());
    assert!(end.points.len() > page.points.len(), "{}", diag());
    shot(&mut b, "rollout-done.png");
    assert!(b.errors().is_empty(), "page errors: {:#?}", b.errors());
}

/// (instance, step, release) of each instance, as `drover rollout status`
/// says, sorted.
fn cli_cells(r: &drover_tests::RolloutView) -> Vec<(String, String, String)> {
    let mut cells: Vec<(String, String, String)> = (r.instances.iter())
        .map(|i| {
            (
                i.id.clone(),
                i.step.clone(),
                i.version().unwrap_or("-").to_string(),
            )
        })
        .collect();
    cells.sort();
    cells
}

/// The page's cells, sorted.
fn page_cells(page: &RolloutPage) -> Vec<(String, String, String)> {
    let mut cells = page.cells.clone();
    cells.sort();
    cells
}

#[test]
fn a_paused_rolling_update_shows_what_the_cli_shows_and_resumes_live_for_a_viewer() {
    let web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    // One at a time: a floor of 3 of 4.
    let id = web
        .start_detached("v2", &["--min-healthy", "75%", "--min-healthy-time", "1s"])
        .id;
    web.wait_rollout(&id, "works on its first instance", WAIT, |r| {
        r.counts.in_progress + r.counts.done > 0
    });
    web.act("pause", &id);
    let paused = web.wait_rollout(&id, "is paused with nothing in flight", WAIT, |r| {
        r.phase == "paused" && r.counts.in_progress == 0
    });

    // A viewer's certificate is enough to look.
    let ui = Ui::start_as(&web.fleet.viewer(), &web.fleet.dir);
    let mut b = browser();
    open(&mut b, &ui, &format!("/rollouts/{id}"));
    let page: RolloutPage = read(&mut b, ROLLOUT);
    let diag = || format!("{page:#?}\n{}", web.diagnostics_for(&id));
    assert_eq!(page.phase, "paused", "{}", diag());
    assert_eq!(page_cells(&page), cli_cells(&paused), "{}", diag());
    let done = steps_of(&page, "done");
    assert!((1..4).contains(&done), "{}", diag());
    assert_eq!(steps_of(&page, "pending"), 4 - done, "{}", diag());
    // Started batches are done; the rest wait, not started.
    assert!(
        page.batches
            .iter()
            .all(|(n, state)| (*n == 0 && state == "waiting") || (*n > 0 && state == "done")),
        "{}",
        diag()
    );
    assert_eq!(
        page.batches.iter().filter(|(n, _)| *n > 0).count(),
        done,
        "one instance per batch\n{}",
        diag()
    );
    assert!(
        page.steps.is_empty(),
        "a rolling update has no traffic steps"
    );
    // One instance out at a time: down to the floor of 3, never under.
    assert!(
        page.points.iter().all(|(_, c, f)| *f == 3 && c >= f),
        "{}",
        diag()
    );
    assert_eq!(page.points.iter().map(|p| p.1).min(), Some(3), "{}", diag());
    shot(&mut b, "rolling-paused.png");

    b.eval("window.__drover_marker = 7; true")
        .unwrap_or_else(|e| panic!("{e}"));
    web.act("resume", &id);
    b.wait_for(
        "document.getElementById('rollout').dataset.phase === 'succeeded'",
        Duration::from_secs(90),
    )
    .unwrap_or_else(|e| panic!("the page never showed the end: {e}\n{}", diag()));
    let end: RolloutPage = read(&mut b, ROLLOUT);
    let finished = web.status(&id);
    let diag = || format!("{end:#?}\n{}", web.diagnostics_for(&id));
    assert_eq!(
        b.eval("window.__drover_marker")
            .unwrap_or_else(|e| panic!("{e}")),
        Value::from(7),
        "the page was reloaded\n{}",
        diag()
    );
    assert_eq!(page_cells(&end), cli_cells(&finished), "{}", diag());
    assert_eq!(steps_of(&end, "done"), 4, "{}", diag());
    assert_eq!(end.batches.len(), 4, "{}", diag());
    assert!(end.batches.iter().all(|(_, s)| s == "done"), "{}", diag());
    assert!(end.points.iter().all(|(_, c, f)| c >= f), "{}", diag());
    shot(&mut b, "rolling-done.png");
    assert!(b.errors().is_empty(), "page errors: {:#?}", b.errors());
}

/// A raw HTTP/1.1 GET with the given `Host`; the status line and headers.
fn head_with_host(addr: &str, path: &str, host: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to drover ui");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn hostile_labels_are_shown_as_text_and_other_hosts_names_are_refused() {
    let mut fleet = Fleet::builder().agent(AgentSpec::new("good")).start();
    let idx = fleet.create_agent(AgentSpec::new("evil").no_instances());
    fleet.enroll(idx);
    let tls = fleet.agents[idx].tls();
    // An agent that says what it likes in its Hello; the coordinator keeps
    // labels as given.
    let script = "<script>window.__pwned=1</script>";
    let img = "x\"><img src=x onerror=\"window.__pwned=2\">";
    let mut evil = hello("evil");
    evil.labels.insert("note".into(), script.into());
    evil.labels.insert("k'<b>".into(), img.into());
    let outcome = session(
        &fleet.coordinator.grpc_addr(),
        &fleet.pki.ca_cert(),
        Some(&tls),
        evil,
    );
    assert!(
        matches!(outcome, SessionOutcome::Welcomed),
        "{outcome:?}\n{}",
        fleet.diagnostics()
    );
    let ui = Ui::start(&fleet);

    // The page as served: every hostile value escaped.
    let (code, dom) = http_get(ui.addr(), "/").unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(code, 200, "{dom}");
    assert!(dom.contains("data-host=\"evil\""), "{dom}");
    assert!(
        dom.contains("note=&lt;script&gt;window.__pwned=1&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<img"), "{dom}");

    // In the browser: the values are text, nothing ran, nothing was added.
    let mut b = browser();
    open(&mut b, &ui, "/");
    b.wait_for("document.querySelector('tr.host[data-host=evil]')", WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.diagnostics()));
    let labels: Vec<(String, String, String)> = read(
        &mut b,
        "JSON.stringify([...document.querySelectorAll('tr.host[data-host=evil] .label')]\
         .map(l => [l.dataset.key, l.dataset.value, l.textContent]))",
    );
    assert!(
        labels.contains(&("note".into(), script.into(), format!("note={script}"))),
        "{labels:?}"
    );
    assert!(
        labels.contains(&("k'<b>".into(), img.into(), format!("k'<b>={img}"))),
        "{labels:?}"
    );
    let probe: (Value, u32, u32, u32) = read(
        &mut b,
        "JSON.stringify([window.__pwned === undefined ? null : window.__pwned, \
         document.scripts.length, document.images.length, document.querySelectorAll('main b').length])",
    );
    assert_eq!(
        probe,
        (Value::Null, 1, 0, 0),
        "a hostile label became markup"
    );
    shot(&mut b, "fleet-hostile.png");

    // Another name for this address (DNS rebinding) is refused; loopback
    // names are served, with a policy that runs no inline script.
    let refused = head_with_host(ui.addr(), "/", "evil.example");
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    let served = head_with_host(ui.addr(), "/", ui.addr());
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(
        served
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{served}"
    );
}
