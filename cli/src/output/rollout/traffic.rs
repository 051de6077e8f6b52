//! Human views of a canary's (or blue-green's) traffic: the one line
//! `status` and `watch` show while it runs, the steps and how each ended,
//! the traffic steps of a `--dry-run` plan, and `drover rollout analysis`.

use std::fmt::Write as _;
use std::time::Duration;

use drover_model::Share;
use drover_proto::json::{stage_word, strategy_word};
use drover_proto::v1::{
    AnalysisArm, AnalysisLook, PlannedTrafficStep, RolloutAnalysis, RolloutTraffic,
    rollout_traffic::Stage,
};

use super::{clock, dash};
use crate::output::{align, relative, rfc3339_ms, table};

/// `5%`, `0.5%`.
pub fn share(basis_points: u32) -> String {
    Share::from_basis_points(basis_points).to_string()
}

/// `2,390`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3/612 (0.49%)`: errors of requests, and the rate; `0/0 (-)` without
/// traffic.
pub fn errors_of(arm: Option<&AnalysisArm>) -> String {
    let a = arm.cloned().unwrap_or_default();
    let rate = if a.attempts == 0 {
        "-".to_string()
    } else {
        format!("{:.2}%", a.errors as f64 * 100.0 / a.attempts as f64)
    };
    format!("{}/{} ({rate})", thousands(a.errors), thousands(a.attempts))
}

fn latency(arm: Option<&AnalysisArm>) -> String {
    match arm.and_then(|a| a.latency_ms).filter(|v| v.is_finite()) {
        Some(ms) => format!("{ms:.1}"),
        None => "-".into(),
    }
}

/// Three significant digits, or scientific notation below 0.001 (the
/// per-look alpha), where the digits that matter are.
fn p_value(p: Option<f64>) -> String {
    match p.filter(|p| p.is_finite()) {
        Some(0.0) => "0".into(),
        Some(p) if p < 0.001 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
        None => "-".into(),
    }
}

fn looks_word(n: u32) -> &'static str {
    if n == 1 { "look" } else { "looks" }
}

/// What the step is doing, in words.
fn stage_text(t: &RolloutTraffic) -> String {
    let idle = match t.active_color.as_str() {
        "blue" => "green",
        "green" => "blue",
        _ => "idle",
    };
    match t.stage() {
        Stage::Held => "held: inconclusive, paused for you to promote, resume or roll back".into(),
        Stage::Isolating => format!("isolating: taking the idle color ({idle}) out of traffic"),
        Stage::Hook => format!("hook: the pre-traffic hook runs against {idle}; no traffic moved"),
        Stage::Switched => format!(
            "switched: all traffic on {idle}, the old color ({}) drained and kept",
            dash(&t.active_color)
        ),
        Stage::Retiring => format!(
            "retiring: stopping the old color ({})",
            dash(&t.active_color)
        ),
        Stage::Retired => format!(
            "retired: the old color ({}) is stopped",
            dash(&t.active_color)
        ),
        _ => dash(stage_word(t.stage).unwrap_or("")),
    }
}

/// `step 2/4 (25%) baking, 3 looks, ends in 12m — last: ...`: where the
/// traffic is, for `status` and `watch`.
pub fn traffic_line(t: &RolloutTraffic, now_ms: i64) -> String {
    let total = t.steps_basis_points.len();
    let current = usize::try_from(t.step)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| t.steps_basis_points.get(i));
    let mut line = match current {
        Some(bp) => format!("step {}/{total} ({})", t.step, share(*bp)),
        None => format!("step {}/{total}", t.step),
    };
    let _ = write!(line, " {}", stage_text(t));
    if t.stage() == Stage::Baking {
        let _ = write!(line, ", {} {}", t.looks, looks_word(t.looks));
        if t.bake_ends_at_ms > now_ms {
            let _ = write!(line, ", ends {}", relative(now_ms, t.bake_ends_at_ms));
        } else if t.bake_ends_at_ms > 0 {
            line.push_str(", bake over");
        }
    }
    if t.keep_old_until_ms > now_ms {
        let _ = write!(
            line,
            ", keep-old ends {} (`drover rollout rollback` switches back until then)",
            relative(now_ms, t.keep_old_until_ms)
        );
    }
    if !t.last_look.is_empty() {
        let _ = write!(line, " — last: {}", t.last_look.replace('\n', " "));
    }
    line
}

/// `canary, steps 5%, 25%, 50%, 100%`.
pub fn strategy_text(t: &RolloutTraffic) -> String {
    let steps: Vec<String> = t.steps_basis_points.iter().map(|bp| share(*bp)).collect();
    format!("{}, steps {}", strategy_word(t.strategy), steps.join(", "))
}

/// Every step: how it ended, where the rollout is, or `-` for those to
/// come; then why each finished one ended as it did.
pub fn steps_table(t: &RolloutTraffic) -> String {
    let rows: Vec<Vec<String>> = (t.steps_basis_points.iter().enumerate())
        .map(|(i, bp)| {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let result = t.results.iter().rfind(|r| r.step == number);
            let (what, at, reason) = match result {
                Some(r) => (
                    dash(&r.verdict),
                    rfc3339_ms(r.at_ms).unwrap_or_else(|| "-".into()),
                    dash(&r.reason.replace('\n', " ")),
                ),
                None if number == t.step => (
                    dash(stage_word(t.stage).unwrap_or("")),
                    "-".into(),
                    "-".into(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![number.to_string(), share(*bp), what, at, reason]
        })
        .collect();
    table(&["STEP", "SHARE", "RESULT", "AT", "REASON"], &rows)
}

/// `traffic: 5% passed, 25% promoted, 50% -, 100% -`, for the summary
/// `watch` ends with.
pub fn results_line(t: &RolloutTraffic) -> String {
    let steps: Vec<String> = (t.steps_basis_points.iter().enumerate())
        .map(|(i, bp)| {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let verdict = t
                .results
                .iter()
                .rfind(|r| r.step == number)
                .map_or("-", |r| r.verdict.as_str());
            format!("{} {}", share(*bp), dash(verdict))
        })
        .collect();
    format!("traffic: {}\n", steps.join(", "))
}

fn duration_text(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// The traffic steps of a `--dry-run` plan:
/// `step 1   5%   1 updated, weight 16 vs 100 on the old release, bake 30m`.
pub fn plan_steps_text(steps: &[PlannedTrafficStep]) -> String {
    if steps.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let mut what = if Share::from_basis_points(s.share_basis_points).is_full() {
                format!(
                    "{} updated: all on the new release, weights put back",
                    s.updated
                )
            } else {
                format!(
                    "{} updated, weight {} vs {} on the old release",
                    s.updated, s.new_weight, s.old_weight
                )
            };
            if s.bake_ms > 0 {
                let _ = write!(what, ", bake {}", duration_text(s.bake_ms));
            }
            vec![
                format!("  step {}", s.number),
                share(s.share_basis_points),
                what,
            ]
        })
        .collect();
    format!("\nTraffic steps:\n{}\n", align(&rows).join("\n"))
}

/// `errors ... (0.38%): pass`: the look's reason, with its verdict at one
/// end (the coordinator's reasons start with it: `pass: errors ...`).
fn reason_with_verdict(l: &AnalysisLook) -> String {
    let reason = l.reason.replace('\n', " ");
    let said = reason.ends_with(&l.verdict)
        || reason.starts_with(&format!("{}:", l.verdict))
        || reason.starts_with(&format!("{} (", l.verdict));
    if l.verdict.is_empty() || said {
        return dash(&reason);
    }
    if reason.is_empty() {
        return l.verdict.clone();
    }
    format!("{reason}: {}", l.verdict)
}

/// `drover rollout analysis ID`: every look with both arms' numbers, then
/// each step's last word.
pub fn analysis_text(a: &RolloutAnalysis) -> String {
    if a.looks.is_empty() {
        return format!(
            "rollout {}: no looks yet; the analysis looks once a step's weights are in place \
             and its warm-up is over\n",
            a.id
        );
    }
    let rows: Vec<Vec<String>> = (a.looks.iter())
        .map(|l| {
            vec![
                l.step.to_string(),
                share(l.share_basis_points),
                if l.last {
                    format!("{} (last)", l.look)
                } else {
                    l.look.to_string()
                },
                clock(l.at_ms),
                dash(&l.source),
                errors_of(l.canary.as_ref()),
                errors_of(l.baseline.as_ref()),
                latency(l.canary.as_ref()),
                latency(l.baseline.as_ref()),
                p_value(l.p_value),
                dash(&l.verdict),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "STEP",
            "SHARE",
            "LOOK",
            "AT (UTC)",
            "SOURCE",
            "CANARY ERRORS",
            "BASELINE ERRORS",
            "CANARY MS",
            "BASELINE MS",
            "P-VALUE",
            "VERDICT",
        ],
        &rows,
    );
    out.push('\n');
    // The last look of each step, in step order.
    let mut last: Vec<&AnalysisLook> = Vec::new();
    for l in &a.looks {
        match last.iter_mut().find(|x| x.step == l.step) {
            Some(x) if (l.look, l.at_ms) >= (x.look, x.at_ms) => *x = l,
            Some(_) => {}
            None => last.push(l),
        }
    }
    last.sort_by_key(|l| l.step);
    for l in last {
        let _ = writeln!(
            out,
            "step {} ({}), canary {} vs baseline {} {}, look {}: {}",
            l.step,
            share(l.share_basis_points),
            l.canary_instances,
            l.baseline_instances,
            if l.baseline_instances == 1 {
                "instance"
            } else {
                "instances"
            },
            l.look,
            reason_with_verdict(l)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::NOW;
    use crate::output::rollout::fixtures::{analysis, baking_traffic, planned_steps};

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2390), "2,390");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let arm = |attempts, errors| AnalysisArm {
            attempts,
            errors,
            latency_ms: None,
        };
        assert_eq!(errors_of(Some(&arm(612, 3))), "3/612 (0.49%)");
        assert_eq!(errors_of(Some(&arm(2390, 9))), "9/2,390 (0.38%)");
        assert_eq!(errors_of(None), "0/0 (-)");
        assert_eq!(p_value(Some(0.62)), "0.620");
        assert_eq!(p_value(Some(1.2e-9)), "1.2e-9");
        assert_eq!(p_value(Some(f64::NAN)), "-");
        assert_eq!(p_value(None), "-");
        assert_eq!(share(50), "0.5%");
    }

    #[test]
    fn the_traffic_line_says_where_the_canary_is() {
        let t = baking_traffic();
        assert_eq!(
            traffic_line(&t, NOW),
            "step 2/4 (25%) baking, 3 looks, ends in 12m — last: errors canary 3/612 (0.49%) \
             vs baseline 9/2,390 (0.38%): pass"
        );
        assert_eq!(strategy_text(&t), "canary, steps 5%, 25%, 50%, 100%");
        let mut held = t.clone();
        held.set_stage(Stage::Held);
        held.last_look.clear();
        assert_eq!(
            traffic_line(&held, NOW),
            "step 2/4 (25%) held: inconclusive, paused for you to promote, resume or roll back"
        );
        let mut updating = t;
        updating.set_stage(Stage::Updating);
        updating.step = 3;
        updating.last_look.clear();
        assert_eq!(traffic_line(&updating, NOW), "step 3/4 (50%) updating");
    }

    #[test]
    fn steps_show_results_the_current_stage_and_what_is_to_come() {
        let t = baking_traffic();
        let text = steps_table(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("STEP   SHARE   RESULT "), "{text}");
        assert!(
            lines[1].starts_with("1      5%      passed   2026-09-21T14:11:20Z   30 looks"),
            "{text}"
        );
        assert!(lines[2].starts_with("2      25%     baking   -"), "{text}");
        assert!(lines[4].starts_with("4      100%    -"), "{text}");
        assert_eq!(
            results_line(&t),
            "traffic: 5% passed, 25% -, 50% -, 100% -\n"
        );
    }

    #[test]
    fn a_plan_lists_each_traffic_step() {
        assert_eq!(plan_steps_text(&[]), "");
        assert_eq!(
            plan_steps_text(&planned_steps()),
            "\nTraffic steps:\n\
             \x20 step 1   5%     1 updated, weight 16 vs 100 on the old release, bake 30m\n\
             \x20 step 2   25%    1 updated, weight 100 vs 100 on the old release, bake 30m\n\
             \x20 step 3   50%    2 updated, weight 100 vs 100 on the old release, bake 30m\n\
             \x20 step 4   100%   4 updated: all on the new release, weights put back\n"
        );
    }

    #[test]
    fn analysis_lists_every_look_and_each_steps_last_word() {
        let text = analysis_text(&analysis());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("STEP   SHARE   LOOK "), "{text}");
        assert!(lines[0].ends_with("P-VALUE   VERDICT"), "{text}");
        for (line, want) in [
            (
                1,
                &[
                    "1 ",
                    "5%",
                    "14:12:20",
                    "haproxy",
                    "0/100 (0.00%)",
                    "1/1,900 (0.05%)",
                    "40.0",
                    "39.5",
                    "1.000",
                    "continue",
                ][..],
            ),
            (
                2,
                &[
                    "2 (last)",
                    "14:13:20",
                    "3/612 (0.49%)",
                    "9/2,390 (0.38%)",
                    "41.5",
                    "-",
                    "0.620",
                    "pass",
                ],
            ),
            (3, &["25%", "1 ", "9/150 (6.00%)", "1.2e-9", "fail"]),
        ] {
            for w in want {
                assert!(lines[line].contains(w), "line {line} lacks {w:?}:\n{text}");
            }
        }
        assert_eq!(lines[4], "");
        assert_eq!(
            lines[5],
            "step 1 (5%), canary 1 vs baseline 5 instances, look 2: errors canary 3/612 (0.49%) \
             vs baseline 9/2,390 (0.38%): pass"
        );
        assert_eq!(
            lines[6],
            "step 2 (25%), canary 2 vs baseline 4 instances, look 1: errors canary 9/150 (6.00%) \
             vs baseline 2/3,400 (0.06%): fail"
        );
        assert_eq!(lines.len(), 7, "{text}");
        let none = analysis_text(&RolloutAnalysis {
            id: "web-8".into(),
            looks: Vec::new(),
        });
        assert!(none.starts_with("rollout web-8: no looks yet"), "{none}");
    }
}
