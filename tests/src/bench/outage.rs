//! Out-of-service time per instance during a rolling update: from the
//! rollout's `draining` event of an instance (drain sent) to its `done`
//! event (undrain answered), with a release large enough that fetching
//! and unpacking it matter. Before stage-before-drain that window held the
//! fetch, the sha256 and the unpack; after it, only stop, switch, start
//! and verify. The coordinator, agents and CLI are whatever sits beside
//! the harness (or in `DROVER_BIN_DIR`), so older builds can be measured
//! with the same driver.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;

use super::load_avg;
use crate::harness::release::{sample_release, sample_release_with_payload, write_artifact};
use crate::harness::rollout::SERVICE;
use crate::{WAIT, WebFleet};

#[derive(Debug, Clone)]
pub struct OutageOpts {
    pub instances: usize,
    pub size_mib: u64,
    /// Names this run in the output (e.g. the commit measured).
    pub label: String,
}

fn note(msg: &str) {
    eprintln!("drover-bench outage: {msg}");
}

pub fn run(opts: &OutageOpts) -> Vec<serde_json::Value> {
    let size = opts.size_mib * 1024 * 1024;
    let web = WebFleet::builder()
        .hosts(opts.instances)
        .max_unpacked_bytes(size * 2)
        .start();
    let v1 = write_artifact(
        &web.artifacts_dir(),
        "web-v1.tar.gz",
        &sample_release("v1", &[]),
    );
    web.fleet.push_artifact(&v1, SERVICE, "v1");
    let out = web.start_rollout("v1", &["--min-healthy", "0", "--batch", "100%"]);
    assert!(out.success(), "initial deploy failed:\n{out}");
    web.wait_all_serving("v1");

    note(&format!(
        "building and pushing a {} MiB release",
        opts.size_mib
    ));
    let bytes = sample_release_with_payload("v2", &[], usize::try_from(size).unwrap_or(usize::MAX));
    let artifact = write_artifact(&web.artifacts_dir(), "web-v2.tar.gz", &bytes);
    web.fleet.push_artifact(&artifact, SERVICE, "v2");

    note("rolling out, one instance at a time");
    let floor = (opts.instances - 1).to_string();
    let started = Instant::now();
    let out = web.start_rollout(
        "v2",
        &[
            "--min-healthy",
            &floor,
            "--batch",
            "1",
            "--step-timeout",
            "300s",
            "--progress-deadline",
            "600s",
        ],
    );
    let took = started.elapsed();
    assert!(
        out.success(),
        "rollout failed:\n{out}\n{}",
        web.diagnostics()
    );
    web.wait_all_serving("v2");
    web.haproxy
        .wait_serving(u32::try_from(opts.instances).unwrap_or(u32::MAX), WAIT);
    let rollout = web.latest();

    // instance -> (staging, draining, done) event times.
    let mut at: BTreeMap<String, [Option<i64>; 3]> = BTreeMap::new();
    for e in &rollout.events {
        let (Some(inst), Some(step)) = (e.instance.clone(), e.step.as_deref()) else {
            continue;
        };
        let slot = match step {
            "staging" => 0,
            "draining" => 1,
            "done" => 2,
            _ => continue,
        };
        at.entry(inst).or_default()[slot].get_or_insert(e.at_ms);
    }
    let mut out_ms = Vec::new();
    let mut stage_ms = Vec::new();
    for (inst, [staging, draining, done]) in &at {
        if let (Some(d), Some(u)) = (draining, done) {
            out_ms.push(u - d);
            note(&format!("{inst}: out of service {} ms", u - d));
        }
        if let (Some(s), Some(d)) = (staging, draining) {
            stage_ms.push(d - s);
        }
    }
    let mean = |v: &[i64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<i64>() as f64 / v.len() as f64
        }
    };
    vec![json!({
        "scenario": "outage",
        "label": opts.label,
        "instances": opts.instances,
        "artifact_mib": opts.size_mib,
        "artifact_bytes": bytes.len(),
        "out_of_service_ms": out_ms,
        "out_of_service_mean_ms": mean(&out_ms),
        "out_of_service_max_ms": out_ms.iter().max(),
        "staging_ms": stage_ms,
        "rollout_s": took.as_secs_f64(),
        "load": load_avg(),
    })]
}
