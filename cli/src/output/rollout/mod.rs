//! Human views of a rollout: the `status` page, the `list` table, the
//! `--dry-run` plan, the one-line events `watch` prints into a pipe, and the
//! summary it ends with. The JSON views are in [`json`].

#[cfg(test)]
pub mod fixtures;
pub mod json;
pub mod traffic;

use std::fmt::Write as _;

use drover_proto::v1::{
    Direction, InstanceStep, Release, Rollout, RolloutEvent, RolloutInstance, RolloutPhase,
    RolloutPlan,
};

pub use json::{AnalysisJson, PlanJson, RolloutJson, to_json};

use super::{align, relative, rfc3339_ms, short_duration, table};

/// `-o` for every rollout command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RolloutFormat {
    /// Readable text.
    Table,
    /// JSON for scripts: the rollout object (an array of them for `list`, the plan for `--dry-run`).
    Json,
}

/// Phases the rollout cannot leave.
pub fn is_terminal(phase: RolloutPhase) -> bool {
    phase.is_terminal()
}

/// Steps during which drover holds an instance (a command is in flight).
pub fn in_flight(step: InstanceStep) -> bool {
    step.in_chain()
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// `v2 (sha256:abababababab)`, or just the version when the digest is not
/// resolved yet.
fn release_long(r: Option<&Release>) -> String {
    match r {
        Some(r) if !r.digest.is_empty() => {
            let short = r.digest.get(..12).unwrap_or(&r.digest);
            format!("{} (sha256:{short})", dash(&r.version))
        }
        Some(r) => dash(&r.version),
        None => "-".into(),
    }
}

fn release_short(r: Option<&Release>) -> String {
    match r {
        Some(r) if !r.version.is_empty() => r.version.clone(),
        _ => "-".into(),
    }
}

fn instances_word(n: u32) -> &'static str {
    if n == 1 { "instance" } else { "instances" }
}

/// The `--dry-run` page.
pub fn plan_text(p: &RolloutPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan: {} to {}",
        p.service,
        release_long(p.target.as_ref())
    );
    let _ = writeln!(
        out,
        "{} {}, floor {}, capacity now {}, lowest forecast capacity {}",
        p.total,
        instances_word(p.total),
        p.floor,
        p.capacity,
        p.lowest_capacity
    );
    if !p.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped ({}):", p.skipped.len());
        let rows: Vec<Vec<String>> = (p.skipped.iter())
            .map(|s| vec![format!("  {}", s.instance), s.reason.clone()])
            .collect();
        out.push_str(&align(&rows).join("\n"));
        out.push('\n');
    }
    for b in &p.batches {
        let n = u32::try_from(b.instances.len()).unwrap_or(u32::MAX);
        let _ = writeln!(
            out,
            "\nBatch {}: {n} {}, max down {}, lowest capacity {}",
            b.number,
            instances_word(n),
            b.max_down,
            b.lowest_capacity
        );
        let _ = writeln!(out, "  instances: {}", b.instances.join(", "));
        let waves: Vec<_> = (b.waves.iter())
            .filter(|w| !w.instances.is_empty())
            .collect();
        if waves.len() > 1 {
            for (i, w) in waves.iter().enumerate() {
                let _ = writeln!(out, "  wave {}: {}", i + 1, w.instances.join(", "));
            }
        }
    }
    if p.batches.is_empty() {
        out.push_str("\nNo batches: nothing to update.\n");
    }
    out.push_str(&traffic::plan_steps_text(&p.traffic_steps));
    if !p.stalls.is_empty() {
        let _ = writeln!(out, "\nstalls: {}", p.stalls);
    }
    out
}

/// `HH:MM:SS` (UTC) of a wire time.
pub fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// One event as `watch` prints it into a pipe or log:
/// `HH:MM:SS  INSTANCE|-  STEP  capacity C/floor F  MESSAGE`.
pub fn event_line(e: &RolloutEvent) -> String {
    format!(
        "{}  {}  {}  capacity {}/floor {}  {}",
        clock(e.at_ms),
        dash(&e.instance),
        dash(e.step_kind().as_text()),
        e.capacity,
        e.floor,
        e.message
    )
}

fn elapsed_ms(r: &Rollout, now_ms: i64) -> u64 {
    let end = if r.finished_at_ms > 0 {
        r.finished_at_ms
    } else {
        now_ms
    };
    u64::try_from(end.saturating_sub(r.started_at_ms)).unwrap_or(0)
}

/// The line `watch` ends with, plus `reason: ...` when there is one.
pub fn summary(r: &Rollout, now_ms: i64) -> String {
    let c = r.counts.unwrap_or_default();
    let mut out = format!(
        "rollout {} {} in {}: {} updated, {} failed, {} skipped, {} rolled back; \
         lowest capacity {} (floor {})\n",
        r.id,
        r.phase_kind().as_text(),
        short_duration(elapsed_ms(r, now_ms)),
        c.done,
        c.failed,
        c.skipped,
        c.rolled_back,
        r.lowest_capacity,
        r.floor
    );
    if let Some(t) = &r.traffic {
        out.push_str(&traffic::results_line(t));
    }
    if !r.reason.is_empty() {
        let _ = writeln!(out, "reason: {}", r.reason);
    }
    out
}

fn when(now_ms: i64, ms: i64) -> String {
    match rfc3339_ms(ms) {
        Some(t) => format!("{t} ({})", relative(now_ms, ms)),
        None => "-".into(),
    }
}

fn note_or_error(i: &RolloutInstance) -> String {
    [&i.error, &i.note, &i.progress]
        .into_iter()
        .find(|s| !s.is_empty())
        .map(|s| s.replace('\n', " "))
        .unwrap_or_else(|| "-".into())
}

/// The step, marked when the instance is on its way back or unreachable.
fn step_text(i: &RolloutInstance) -> String {
    let mut step = dash(i.step_kind().as_text());
    if i.direction_kind() == Direction::Back && in_flight(i.step_kind()) {
        step.push_str(" (back)");
    }
    if !i.reachable {
        step.push_str(", unreachable");
    }
    step
}

/// The `drover rollout status` page; the event log is shown when the
/// rollout carries events (`--events`).
pub fn rollout_detail(r: &Rollout, now_ms: i64) -> String {
    let c = r.counts.unwrap_or_default();
    let mut fields: Vec<Vec<String>> = Vec::new();
    let mut field = |k: &str, v: String| fields.push(vec![format!("{k}:"), v]);
    field("Rollout", r.id.clone());
    field(
        "Service",
        if r.selector.is_empty() {
            r.service.clone()
        } else {
            format!("{} (selector {})", r.service, r.selector)
        },
    );
    field("Target", release_long(r.target.as_ref()));
    field("Phase", dash(r.phase_kind().as_text()));
    field("Reason", dash(&r.reason));
    field(
        "Batch",
        if r.batch == 0 {
            "-".into()
        } else {
            r.batch.to_string()
        },
    );
    field(
        "Progress",
        format!(
            "{}/{} updated, {} in progress, {} pending, {} failed, {} skipped, \
             {} unreachable, {} rolled back",
            c.done,
            c.total,
            c.in_progress,
            c.pending,
            c.failed,
            c.skipped,
            c.unreachable,
            c.rolled_back
        ),
    );
    field(
        "Capacity",
        format!(
            "{} (floor {}, lowest {})",
            r.capacity, r.floor, r.lowest_capacity
        ),
    );
    field("Waiting", dash(&r.wait_reason));
    if let Some(t) = &r.traffic {
        field("Strategy", traffic::strategy_text(t));
        field("Traffic", traffic::traffic_line(t, now_ms));
    }
    field("Started", when(now_ms, r.started_at_ms));
    field(
        "Finished",
        if r.finished_at_ms > 0 {
            format!(
                "{} after {}",
                when(now_ms, r.finished_at_ms),
                short_duration(elapsed_ms(r, now_ms))
            )
        } else {
            "-".into()
        },
    );
    field("Started by", dash(&r.started_by));
    // Only with tracing on, so the view stays as it was without it.
    if !r.trace_id.is_empty() {
        field("Trace", r.trace_id.clone());
    }
    let mut out = align(&fields).join("\n");
    out.push_str("\n\n");

    if let Some(t) = &r.traffic {
        out.push_str("Traffic steps:\n");
        out.push_str(&traffic::steps_table(t));
        out.push('\n');
    }
    if r.instances.is_empty() {
        out.push_str("Instances: none\n");
    } else {
        let rows: Vec<Vec<String>> = (r.instances.iter())
            .map(|i| {
                vec![
                    i.id.clone(),
                    dash(&i.host),
                    step_text(i),
                    release_short(i.release.as_ref()),
                    release_short(i.previous.as_ref()),
                    if i.batch == 0 {
                        "-".into()
                    } else {
                        i.batch.to_string()
                    },
                    note_or_error(i),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "INSTANCE",
                "HOST",
                "STEP",
                "RELEASE",
                "PREVIOUS",
                "BATCH",
                "NOTE/ERROR",
            ],
            &rows,
        ));
    }

    if !r.events.is_empty() {
        out.push_str("\nEvents:\n");
        let rows: Vec<Vec<String>> = (r.events.iter())
            .map(|e| {
                vec![
                    rfc3339_ms(e.at_ms).unwrap_or_else(|| "-".into()),
                    dash(&e.instance),
                    dash(e.step_kind().as_text()),
                    e.capacity.to_string(),
                    e.floor.to_string(),
                    e.message.replace('\n', " "),
                ]
            })
            .collect();
        out.push_str(&table(
            &["TIME", "INSTANCE", "STEP", "CAPACITY", "FLOOR", "MESSAGE"],
            &rows,
        ));
    }
    out
}

/// The `drover rollout list` table, in the order given (newest first).
pub fn rollouts_table(rollouts: &[Rollout], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = (rollouts.iter())
        .map(|r| {
            let c = r.counts.unwrap_or_default();
            vec![
                r.id.clone(),
                r.service.clone(),
                release_short(r.target.as_ref()),
                dash(r.phase_kind().as_text()),
                format!("{}/{}", c.done, c.total),
                rfc3339_ms(r.started_at_ms).unwrap_or_else(|| "-".into()),
                short_duration(elapsed_ms(r, now_ms)),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SERVICE", "TARGET", "PHASE", "PROGRESS", "STARTED", "DURATION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::fixtures::{canary, event, plan, planned_steps, release, rollout};
    use super::*;
    use crate::output::fixtures::NOW;
    use drover_proto::v1::RolloutCounts;

    #[test]
    fn plan_text_shows_batches_waves_and_skips() {
        let mut p = plan();
        let text = plan_text(&p);
        let want = format!(
            "Plan: web to v2 (sha256:{})\n\
             4 instances, floor 3, capacity now 4, lowest forecast capacity 3\n\
             \n\
             Skipped (1):\n\
             \x20 web@h4   already on v2\n\
             \n\
             Batch 1: 1 instance, max down 1, lowest capacity 3\n\
             \x20 instances: web@h1\n\
             \n\
             Batch 2: 2 instances, max down 1, lowest capacity 3\n\
             \x20 instances: web@h2, web@h3\n\
             \x20 wave 1: web@h2\n\
             \x20 wave 2: web@h3\n",
            "ab".repeat(6)
        );
        assert_eq!(text, want);
        p.stalls = "floor 4 leaves no room to take anything down".into();
        assert!(
            plan_text(&p).ends_with("\nstalls: floor 4 leaves no room to take anything down\n")
        );
    }

    #[test]
    fn a_canary_plan_ends_with_its_traffic_steps() {
        let mut p = plan();
        p.traffic_steps = planned_steps();
        p.stalls = "floor 6 leaves no room".into();
        let text = plan_text(&p);
        assert!(
            text.contains(
                "\x20 wave 2: web@h3\n\
                 \n\
                 Traffic steps:\n\
                 \x20 step 1   5%     1 updated, weight 16 vs 100 on the old release, bake 30m\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "all on the new release, weights put back\n\nstalls: floor 6 leaves no room\n"
            ),
            "{text}"
        );
        // A rolling plan reads as before.
        assert!(!plan_text(&plan()).contains("Traffic"));
    }

    #[test]
    fn a_canarys_status_and_summary_show_its_traffic() {
        let r = canary();
        let text = rollout_detail(&r, NOW);
        let lines: Vec<&str> = text.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
        };
        assert_eq!(at("Strategy:") + 1, at("Traffic:"));
        assert!(at("Waiting:") < at("Strategy:") && at("Traffic:") < at("Started:"));
        assert_eq!(
            lines[at("Traffic:")],
            "Traffic:      step 2/4 (25%) baking, 3 looks, ends in 12m — last: errors canary \
             3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass"
        );
        assert_eq!(
            lines[at("Strategy:")],
            "Strategy:     canary, steps 5%, 25%, 50%, 100%"
        );
        // The steps come before the instances.
        assert!(at("Traffic steps:") < at("INSTANCE "), "{text}");
        assert!(lines[at("Traffic steps:") + 3].starts_with("2      25%     baking"));
        // A rolling update's page has none of it.
        let rolling = rollout_detail(&rollout(), NOW);
        assert!(!rolling.contains("Traffic") && !rolling.contains("Strategy"));

        let mut done = r;
        done.set_phase(RolloutPhase::RolledBack);
        done.finished_at_ms = NOW;
        done.reason = "step 2 (25%): errors canary 9/150 (6.00%) vs baseline 2/3,400".into();
        let s = summary(&done, NOW);
        assert!(
            s.ends_with(
                "\ntraffic: 5% passed, 25% -, 50% -, 100% -\n\
                 reason: step 2 (25%): errors canary 9/150 (6.00%) vs baseline 2/3,400\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn event_lines_are_plain() {
        let e = event(NOW + 3_600_000 * 5, "web@h2", "draining", "drain started");
        assert_eq!(
            event_line(&e),
            "19:13:20  web@h2  draining  capacity 2/floor 2  drain started"
        );
        assert_eq!(
            event_line(&event(NOW, "", "", "rollout started")),
            "14:13:20  -  -  capacity 2/floor 2  rollout started"
        );
    }

    #[test]
    fn summary_counts_and_reason() {
        let mut r = rollout();
        r.set_phase(RolloutPhase::Succeeded);
        r.finished_at_ms = r.started_at_ms + 190_000;
        r.counts = Some(RolloutCounts {
            total: 3,
            done: 2,
            skipped: 1,
            ..RolloutCounts::default()
        });
        r.lowest_capacity = 2;
        assert_eq!(
            summary(&r, NOW),
            "rollout r7 succeeded in 3m10s: 2 updated, 0 failed, 1 skipped, 0 rolled back; \
             lowest capacity 2 (floor 2)\n"
        );
        r.set_phase(RolloutPhase::RolledBack);
        r.reason = "web@h2 failed: verify timed out".into();
        let s = summary(&r, NOW);
        assert!(s.starts_with("rollout r7 rolled_back in 3m10s: "), "{s}");
        assert!(
            s.ends_with("\nreason: web@h2 failed: verify timed out\n"),
            "{s}"
        );
    }

    #[test]
    fn status_page_shows_header_instances_and_events() {
        let mut r = rollout();
        r.wait_reason = "waiting: 1 healthy, floor 2".into();
        let text = rollout_detail(&r, NOW);
        for want in [
            "Rollout:",
            "r7",
            "web (selector env=prod)",
            &format!("v2 (sha256:{})", "ab".repeat(6)),
            "running",
            "1/3 updated, 1 in progress, 1 pending",
            "2 (floor 2, lowest 2)",
            "waiting: 1 healthy, floor 2",
            "2026-09-21T14:11:50Z (1m30s ago)",
            "operator/alice",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("INSTANCE "))
            .expect("instance table");
        assert!(lines[header].ends_with("NOTE/ERROR"), "{text}");
        assert!(lines[header + 1].starts_with("web@h1 "));
        assert!(lines[header + 2].contains("deploying"));
        assert!(lines[header + 2].ends_with("unpacking 40%"));
        assert!(lines[header + 3].contains("pending"));
        assert!(!text.contains("Events:"));

        r.events = vec![event(NOW, "web@h1", "done", "updated")];
        let text = rollout_detail(&r, NOW);
        assert!(text.contains("\nEvents:\nTIME "), "{text}");
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with("2026-09-21T14:13:20Z   web@h1 "), "{text}");
        assert!(
            last.ends_with("   done   2          2       updated"),
            "{text}"
        );
    }

    #[test]
    fn list_table_has_progress_and_duration() {
        let mut done = rollout();
        done.id = "r6".into();
        done.set_phase(RolloutPhase::Succeeded);
        done.target = release("v1");
        done.finished_at_ms = done.started_at_ms + 45_000;
        let text = rollouts_table(&[rollout(), done], NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[0].ends_with("DURATION"), "{text}");
        assert!(lines[1].starts_with("r7 "), "{text}");
        assert!(lines[1].contains(" 1/3 "), "{text}");
        assert!(lines[1].ends_with("1m30s"), "{text}");
        assert!(lines[2].contains("succeeded"), "{text}");
        assert!(lines[2].ends_with("45s"), "{text}");
    }

    #[test]
    fn phases_and_steps() {
        assert!(is_terminal(RolloutPhase::RolledBack) && !is_terminal(RolloutPhase::RollingBack));
        assert!(
            in_flight(InstanceStep::Verifying)
                && !in_flight(InstanceStep::Pending)
                && !in_flight(InstanceStep::Done)
        );
    }
}
