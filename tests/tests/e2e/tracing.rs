//! OpenTelemetry traces of a real rollout (issue 14, done-when 1): the
//! coordinator and three agents export over OTLP/gRPC to an in-process
//! collector (`drover_testkit::otlp`), and the test reads the span tree
//! back: one trace, `rollout` -> `batch` -> one span per step and
//! instance -> the agent's span for that command -> `fetch` / `unpack`,
//! with the attributes an operator filters on. And with tracing off,
//! nothing is exported and no exporter thread runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_testkit::otlp::{Collector, Span, summary};
use drover_tests::WebFleet;

/// A finished rollout's last spans reach the collector within this (the
/// agents batch for 5 s by default).
const SPANS: Duration = Duration::from_secs(60);
/// The coordinator's steps, in chain order.
const STEPS: [&str; 7] = [
    "stage", "drain", "stop", "deploy", "start", "verify", "undrain",
];
/// The exporter's batch thread, as `/proc/PID/task/*/comm` shows it (15
/// characters of `OpenTelemetry.Traces.BatchProcessor`).
const EXPORT_THREAD: &str = "OpenTelemetry.T";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start a tokio runtime for the collector")
}

/// `[tracing]` pointing at `endpoint`.
fn tracing_toml(endpoint: &str) -> String {
    format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n")
}

/// Names of the threads of process `pid`.
fn threads(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn exports(pid: Option<u32>) -> bool {
    pid.is_some_and(|p| threads(p).iter().any(|t| t == EXPORT_THREAD))
}

/// `drover rollout status ID -o json`'s `trace_id`.
fn json_trace_id(web: &WebFleet, id: &str) -> Option<String> {
    let out = web.rollout(&["status", id, "-o", "json"]);
    assert!(out.success(), "rollout status -o json failed:\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("rollout status -o json is not JSON ({e}):\n{out}"));
    v["trace_id"].as_str().map(str::to_string)
}

/// The one span of `spans` that matches, or a panic naming `what`.
fn one<'a>(spans: &'a [Span], what: &str, f: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span: {what}\n{}",
        summary(spans)
    );
    found[0]
}

/// The rollout's whole trace is in: its root ended, and every agent
/// command and fetch/unpack span of its 21 steps arrived.
fn complete(spans: &[Span], rollout: &str) -> bool {
    let root = spans
        .iter()
        .any(|s| s.name == "rollout" && s.attr("drover.rollout") == rollout);
    let prefix = format!("{rollout}/");
    let agent_steps = (spans.iter())
        .filter(|s| s.service == "drover-agent" && s.attr("drover.command").starts_with(&prefix))
        .count();
    let fetched = (spans.iter())
        .filter(|s| s.service == "drover-agent" && s.name == "unpack")
        .filter(|s| s.attr("drover.release") == "v2")
        .count();
    root && agent_steps >= 3 * STEPS.len() && fetched >= 3
}

#[test]
fn a_rolling_update_on_three_agents_is_one_trace_from_rollout_to_agent_steps() {
    let rt = runtime();
    let collector = rt
        .block_on(Collector::start())
        .expect("start the OTLP collector");
    let endpoint = collector.endpoint();
    let web = WebFleet::builder()
        .hosts(3)
        .coordinator(|c| {
            // The config file turns the coordinator's tracing on ...
            c.extra_toml.push_str(&tracing_toml(&endpoint));
            // ... and its spans go out every 200 ms instead of 5 s.
            c.env
                .push(("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()));
        })
        // The agents' `[tracing]` table, written after their one instance
        // block (a top-level table may follow it).
        .instance_toml(&tracing_toml(&endpoint))
        .start();
    assert!(
        exports(web.fleet.coordinator.pid()),
        "with tracing on, the coordinator runs the exporter thread {EXPORT_THREAD}: {:?}",
        web.fleet.coordinator.pid().map(threads)
    );
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let out = web.start_rollout("v2", &["--batch", "1,2", "--min-healthy", "1"]);
    assert!(
        out.success(),
        "rollout to v2 failed:\n{out}\n{}",
        web.diagnostics()
    );
    let rollout = web.latest();
    assert_eq!(rollout.phase, "succeeded", "{}", web.diagnostics());
    let id = rollout.id.clone();

    let spans = rt.block_on(collector.wait_for(
        SPANS,
        &format!("the whole trace of {id} arrives"),
        |s| complete(s, &id),
    ));

    // The root: one `rollout` span, with the operator's attributes.
    let root = one(&spans, "the rollout's root", |s| {
        s.name == "rollout" && s.attr("drover.rollout") == id
    });
    assert_eq!(root.service, "drover-coordinator");
    assert_eq!(root.parent_span_id, "", "the root has no parent");
    assert_eq!(root.attr("drover.service"), "web");
    assert_eq!(root.attr("drover.release"), "v2");
    assert_eq!(root.attr("drover.strategy"), "rolling");
    assert_eq!(root.attr("drover.outcome"), "succeeded");
    assert_eq!(root.attr("drover.floor"), "1");
    assert!(!root.attr("drover.capacity").is_empty(), "{root:?}");
    let trace = root.trace_id.clone();

    // One trace: every span of this rollout, coordinator's and agents',
    // carries the root's trace id.
    let ours: Vec<&Span> = (spans.iter())
        .filter(|s| {
            s.attr("drover.rollout") == id
                || s.attr("drover.command").starts_with(&format!("{id}/"))
        })
        .collect();
    let ids: BTreeSet<&str> = ours.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([trace.as_str()]), "{}", summary(&spans));
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let by_id: BTreeMap<&str, &Span> = in_trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();

    // Batches 1 and 2 under the root.
    let batches: BTreeMap<String, &Span> = (in_trace.iter())
        .filter(|s| s.name == "batch")
        .map(|s| (s.attr("drover.batch").to_string(), *s))
        .collect();
    assert_eq!(
        batches.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["1", "2"],
        "{}",
        summary(&spans)
    );
    for b in batches.values() {
        assert_eq!(
            b.parent_span_id, root.span_id,
            "batch under the root: {b:?}"
        );
        assert_eq!(b.service, "drover-coordinator");
    }

    // Every instance: seven step spans under one batch, each with one
    // agent span under it; batch 1 holds one instance, batch 2 two.
    let mut per_batch: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for host in ["h1", "h2", "h3"] {
        let instance = format!("web@{host}");
        for step in STEPS {
            let what = format!("the coordinator's {step} of {instance}");
            let coord = one(&spans, &what, |s| {
                s.service == "drover-coordinator"
                    && s.name == step
                    && s.attr("drover.instance") == instance
                    && s.trace_id == trace
            });
            let batch = by_id.get(coord.parent_span_id.as_str()).unwrap_or_else(|| {
                panic!("{what} has no parent in the trace\n{}", summary(&spans))
            });
            assert_eq!(batch.name, "batch", "{what} sits under a batch");
            per_batch
                .entry(batch.attr("drover.batch").to_string())
                .or_default()
                .insert(instance.clone());
            assert_eq!(coord.attr("drover.host"), host, "{coord:?}");
            assert_eq!(coord.attr("drover.service"), "web", "{coord:?}");
            assert_eq!(coord.attr("drover.step"), step, "{coord:?}");
            assert_eq!(coord.attr("drover.outcome"), "succeeded", "{coord:?}");
            assert_eq!(coord.attr("drover.floor"), "1", "{coord:?}");
            assert!(!coord.attr("drover.capacity").is_empty(), "{coord:?}");
            if step == "stage" || step == "deploy" {
                assert_eq!(coord.attr("drover.release"), "v2", "{coord:?}");
            }

            let what = format!("the agent's {step} of {instance}");
            let agent = one(&spans, &what, |s| {
                s.service == "drover-agent" && s.parent_span_id == coord.span_id
            });
            assert_eq!(agent.name, step, "{what}");
            assert_eq!(agent.trace_id, trace, "{what}");
            assert_eq!(agent.attr("drover.host"), host, "{agent:?}");
            assert_eq!(agent.attr("drover.instance"), instance, "{agent:?}");
            assert_eq!(agent.attr("drover.outcome"), "succeeded", "{agent:?}");
            assert_eq!(
                agent.attr("drover.command"),
                coord.attr("drover.command"),
                "the agent's span is for the command the coordinator sent"
            );
            if step == "stage" {
                // The release is fetched and unpacked while it stages.
                for inner in ["fetch", "unpack"] {
                    let s = one(&spans, &format!("{inner} under {what}"), |s| {
                        s.name == inner && s.parent_span_id == agent.span_id
                    });
                    assert_eq!(s.attr("drover.release"), "v2");
                    assert_eq!(s.trace_id, trace);
                }
            }
        }
    }
    let sizes: Vec<usize> = per_batch.values().map(BTreeSet::len).collect();
    assert_eq!(sizes, vec![1, 2], "instances per batch: {per_batch:?}");

    // The operator finds the trace from the rollout.
    let text = web.rollout(&["status", &id]);
    assert!(text.success(), "{text}");
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("Trace:") && l.trim_end().ends_with(&trace)),
        "rollout status prints the trace id {trace}:\n{text}"
    );
    assert_eq!(json_trace_id(&web, &id).as_deref(), Some(trace.as_str()));
}

#[test]
fn with_tracing_off_nothing_is_exported_and_no_exporter_runs() {
    let rt = runtime();
    let collector = rt
        .block_on(Collector::start())
        .expect("start the OTLP collector");
    let endpoint = collector.endpoint();
    let mut web = WebFleet::builder()
        .hosts(3)
        .coordinator(|c| {
            // The file names the collector, the standard switch turns it
            // off: off must win, and cost nothing.
            c.extra_toml.push_str(&tracing_toml(&endpoint));
            c.env
                .push(("OTEL_SDK_DISABLED".to_string(), "true".to_string()));
        })
        // The agents keep the default: no `[tracing]`.
        .start();
    let pid = web.fleet.coordinator.pid();
    web.deploy_initial("v1");
    let rollout = web.latest();
    assert_eq!(rollout.phase, "succeeded", "{}", web.diagnostics());
    let mut pids: Vec<u32> = web.fleet.agents.iter().filter_map(|a| a.pid()).collect();
    pids.extend(pid);
    assert_eq!(pids.len(), 4, "a coordinator and three agents run");
    for p in &pids {
        assert!(
            !threads(*p).iter().any(|t| t.starts_with("OpenTelemetry")),
            "process {p} runs an OpenTelemetry thread with tracing off: {:?}",
            threads(*p)
        );
    }

    // No trace id to show.
    let text = web.rollout(&["status", &rollout.id]);
    assert!(text.success(), "{text}");
    assert!(!text.stdout.contains("Trace:"), "{text}");
    assert_eq!(json_trace_id(&web, &rollout.id), None);

    // A graceful stop would flush an exporter; still nothing arrives.
    assert!(
        web.fleet.coordinator.terminate(Duration::from_secs(20)),
        "the coordinator stops cleanly"
    );
    assert_eq!(
        collector.requests(),
        0,
        "spans arrived with tracing off:\n{}",
        summary(&collector.spans())
    );
}

#[test]
fn a_rollout_resumed_after_a_coordinator_crash_continues_its_trace() {
    let rt = runtime();
    let collector = rt
        .block_on(Collector::start())
        .expect("start the OTLP collector");
    let endpoint = collector.endpoint();
    let mut web = WebFleet::builder()
        .hosts(3)
        .fixed_ports()
        .coordinator(|c| {
            c.extra_toml.push_str(&tracing_toml(&endpoint));
            c.env
                .push(("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()));
        })
        .instance_toml(&tracing_toml(&endpoint))
        .start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    // One instance per batch, each holding a while in verify: the crash
    // comes in batch 2.
    let started = web.start_detached(
        "v2",
        &[
            "--batch",
            "1",
            "--min-healthy",
            "1",
            "--min-healthy-time",
            "1500ms",
        ],
    );
    let id = started.id.clone();
    let before = json_trace_id(&web, &id).expect("a trace id with tracing on");
    // Batch 1's span has ended (batch 2 began) and was exported.
    let batch1 = rt.block_on(
        collector.wait_for(SPANS, &format!("batch 1 of {id} arrives"), |s| {
            s.iter()
                .any(|s| s.name == "batch" && s.trace_id == before && s.attr("drover.batch") == "1")
        }),
    );
    let original_root = one(&batch1, "batch 1", |s| {
        s.name == "batch" && s.trace_id == before && s.attr("drover.batch") == "1"
    })
    .parent_span_id
    .clone();

    web.fleet.coordinator.restart();
    let done = web.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(done.phase, "succeeded", "{}", web.diagnostics_for(&id));
    assert_eq!(
        json_trace_id(&web, &id).as_deref(),
        Some(before.as_str()),
        "the resumed rollout shows the trace id it started with"
    );

    let spans =
        rt.block_on(
            collector.wait_for(SPANS, &format!("the resumed root of {id} arrives"), |s| {
                s.iter().any(|s| {
                    s.name == "rollout"
                        && s.attr("drover.rollout") == id
                        && s.attr("drover.resumed") == "true"
                })
            }),
        );
    let resumed = one(&spans, "the resumed root", |s| {
        s.name == "rollout" && s.attr("drover.rollout") == id && s.attr("drover.resumed") == "true"
    });
    assert_eq!(resumed.trace_id, before, "same trace after the crash");
    assert_eq!(
        resumed.parent_span_id, original_root,
        "the resumed root continues the original root"
    );
    assert_eq!(resumed.attr("drover.outcome"), "succeeded");
    // The steps after the restart are in the same trace, under the
    // resumed root's batches.
    let after: Vec<&Span> = (spans.iter())
        .filter(|s| s.name == "batch" && s.parent_span_id == resumed.span_id)
        .collect();
    assert!(
        !after.is_empty(),
        "batches under the resumed root\n{}",
        summary(&spans)
    );
    assert!(after.iter().all(|s| s.trace_id == before));
}

#[test]
fn a_bad_tracing_setting_exits_2_naming_the_field_or_the_variable() {
    use drover_tests::{bin_path, run_cmd};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = |name: &str, tracing: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [\"127.0.0.1:1\"]\n\n{tracing}",
            dir.path().join("data").display()
        );
        std::fs::write(&path, text).expect("write the agent config");
        path
    };
    let agent = |path: &std::path::Path, env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(bin_path("drover-agent"));
        cmd.arg("--config").arg(path);
        cmd.envs(env.iter().copied());
        run_cmd(cmd, Duration::from_secs(20))
    };

    let ratio = config(
        "ratio",
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 1.5\n",
    );
    let out = agent(&ratio, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("ratio.toml"), "names the file: {out}");
    assert!(
        out.stderr.contains("tracing.sampling_ratio"),
        "names the field: {out}"
    );

    let url = config("url", "[tracing]\notlp_endpoint = \"127.0.0.1:4317\"\n");
    let out = agent(&url, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("tracing.otlp_endpoint"),
        "names the field: {out}"
    );

    // Only gRPC export is built in: an HTTP protocol is refused at start.
    let plain = config("plain", "");
    let out = agent(
        &plain,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "names the variable: {out}"
    );
}
