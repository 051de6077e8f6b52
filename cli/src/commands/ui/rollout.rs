//! The rollout pages: the list (running, then past), and one rollout
//! live: where it is, its instance grid coloured by step, its batches or
//! traffic steps, capacity against the floor over time, and for a canary
//! each look of the analysis, canary against baseline.
//!
//! Every number the plot draws is also on the page as data attributes
//! (`data-at`, `data-capacity`, `data-floor` on its points), so a test or
//! a script reads the same values the eye sees.

use std::collections::BTreeMap;

use drover_proto::json::{stage_word, strategy_word};
use drover_proto::v1::{
    AnalysisArm, InstanceStep, Rollout, RolloutAnalysis, RolloutEvent, RolloutInstance,
    RolloutPhase,
};

use super::html::Html;
use crate::output::rollout::traffic::{errors_of, share, traffic_line};
use crate::output::rollout::{clock, is_terminal, summary};
use crate::output::{relative, rfc3339_ms, short_duration};

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn version(r: Option<&drover_proto::v1::Release>) -> &str {
    r.map_or("-", |r| dash(&r.version))
}

fn strategy(r: &Rollout) -> &'static str {
    r.traffic
        .as_ref()
        .map_or("rolling", |t| strategy_word(t.strategy))
}

fn took(r: &Rollout, now_ms: i64) -> String {
    let end = if r.finished_at_ms > 0 {
        r.finished_at_ms
    } else {
        now_ms
    };
    short_duration(u64::try_from(end.saturating_sub(r.started_at_ms)).unwrap_or(0))
}

/// `/rollouts`: running ones first, then the past ones, newest first.
pub fn rollouts_page(rollouts: &[Rollout], now_ms: i64) -> Html {
    let mut h = Html::new();
    h.elem("h1", &[], "Rollouts");
    let (past, running): (Vec<&Rollout>, Vec<&Rollout>) =
        rollouts.iter().partition(|r| is_terminal(r.phase_kind()));
    for (title, class, list) in [("Running", "running", running), ("Past", "past", past)] {
        h.elem("h2", &[], title);
        if list.is_empty() {
            h.elem("p", &[("class", "empty")], &format!("No {class} rollout."));
            continue;
        }
        h.open("table", &[("class", &format!("rollouts {class}"))])
            .header(&[
                "Rollout", "Service", "Strategy", "Target", "Phase", "Progress", "Capacity",
                "Started", "Took", "By",
            ]);
        for r in list {
            let phase = r.phase_kind().as_text();
            let c = r.counts.unwrap_or_default();
            let href = format!("/rollouts/{}", super::urlencode(&r.id));
            h.open(
                "tr",
                &[
                    ("class", "rollout"),
                    ("data-rollout", &r.id),
                    ("data-phase", phase),
                ],
            )
            .open("td", &[])
            .elem("a", &[("href", &href)], &r.id)
            .close("td")
            .elem("td", &[], &r.service)
            .elem("td", &[], strategy(r))
            .elem("td", &[], version(r.target.as_ref()))
            .open("td", &[])
            .elem("span", &[("class", &format!("badge p-{phase}"))], phase)
            .close("td")
            .elem(
                "td",
                &[],
                &format!("{}/{} updated, {} failed", c.done, c.total, c.failed),
            )
            .elem(
                "td",
                &[],
                &format!("lowest {} (floor {})", r.lowest_capacity, r.floor),
            )
            .elem("td", &[], &relative(now_ms, r.started_at_ms))
            .elem("td", &[], &took(r, now_ms))
            .elem("td", &[], dash(&r.started_by))
            .close("tr");
        }
        h.close("table");
    }
    h
}

/// `/rollouts/ID`: the heading, and the live part (see [`rollout_live`])
/// that the page's script replaces from `/rollouts/ID/events`.
pub fn rollout_page(r: &Rollout, analysis: Option<&RolloutAnalysis>, now_ms: i64) -> Html {
    let mut h = Html::new();
    h.elem("h1", &[], &format!("Rollout {} of {}", r.id, r.service));
    let live = if is_terminal(r.phase_kind()) {
        String::new()
    } else {
        format!("/rollouts/{}/events", super::urlencode(&r.id))
    };
    h.open("section", &[("id", "live"), ("data-live", &live)])
        .append(rollout_live(r, analysis, now_ms))
        .close("section");
    h
}

/// Everything about the rollout that changes while it runs.
pub fn rollout_live(r: &Rollout, analysis: Option<&RolloutAnalysis>, now_ms: i64) -> Html {
    let mut h = Html::new();
    let phase = r.phase_kind().as_text();
    let c = r.counts.unwrap_or_default();
    h.open(
        "div",
        &[
            ("id", "rollout"),
            ("data-rollout", &r.id),
            ("data-phase", phase),
            ("data-strategy", strategy(r)),
        ],
    );
    h.open("p", &[("class", "summary")])
        .elem("span", &[("class", &format!("badge p-{phase}"))], phase)
        .text(" ")
        .text(summary(r, now_ms).lines().next().unwrap_or_default())
        .close("p");
    let mut facts: Vec<(&str, String)> = vec![
        (
            "Target",
            format!(
                "{} of {}{}",
                version(r.target.as_ref()),
                r.service,
                if r.selector.is_empty() {
                    String::new()
                } else {
                    format!(" (selector {})", r.selector)
                }
            ),
        ),
        (
            "Progress",
            format!(
                "{}/{} updated, {} in progress, {} pending, {} failed, {} skipped, {} unreachable, {} rolled back",
                c.done,
                c.total,
                c.in_progress,
                c.pending,
                c.failed,
                c.skipped,
                c.unreachable,
                c.rolled_back
            ),
        ),
        (
            "Capacity",
            format!(
                "{} now, floor {}, lowest {}",
                r.capacity, r.floor, r.lowest_capacity
            ),
        ),
        ("Waiting", dash(&r.wait_reason).to_string()),
    ];
    if let Some(t) = r.traffic.as_ref().filter(|_| !is_terminal(r.phase_kind())) {
        facts.push(("Traffic", traffic_line(t, now_ms)));
    }
    if !r.reason.is_empty() {
        facts.push(("Reason", r.reason.clone()));
    }
    facts.push((
        "Started",
        format!(
            "{} by {} ({}), {} {}",
            rfc3339_ms(r.started_at_ms).unwrap_or_else(|| "-".into()),
            dash(&r.started_by),
            relative(now_ms, r.started_at_ms),
            if r.finished_at_ms > 0 {
                "took"
            } else {
                "running for"
            },
            took(r, now_ms)
        ),
    ));
    h.open("dl", &[("class", "facts")]);
    for (k, v) in &facts {
        h.elem("dt", &[], k).elem("dd", &[], v);
    }
    h.close("dl");

    h.elem("h2", &[], "Instances");
    grid(&mut h, r);
    if r.traffic.is_some() {
        h.elem("h2", &[], "Traffic steps");
        traffic_steps(&mut h, r);
    } else {
        h.elem("h2", &[], "Batches");
        batches(&mut h, r);
    }
    h.elem("h2", &[], "Capacity against the floor");
    plot(&mut h, r, now_ms);
    if let Some(a) = analysis.filter(|_| r.traffic.is_some()) {
        h.elem("h2", &[], "Canary against baseline");
        looks(&mut h, a);
    }
    h.close("div");
    h
}

/// One cell per instance, coloured by its step.
fn grid(h: &mut Html, r: &Rollout) {
    if r.instances.is_empty() {
        h.elem("p", &[("class", "empty")], "No instances.");
        return;
    }
    h.open("div", &[("class", "grid")]);
    for i in &r.instances {
        let step = i.step_kind().as_text();
        let batch = i.batch.to_string();
        let direction = i.direction_kind().as_text();
        let mut title = format!(
            "{}: {step}, {} (was {})",
            i.id,
            version(i.release.as_ref()),
            version(i.previous.as_ref())
        );
        for note in [&i.progress, &i.error, &i.note] {
            if !note.is_empty() {
                title.push_str("; ");
                title.push_str(note);
            }
        }
        if !i.reachable {
            title.push_str("; unreachable");
        }
        h.open(
            "div",
            &[
                ("class", &format!("cell s-{step}")),
                ("data-instance", &i.id),
                ("data-step", step),
                ("data-direction", direction),
                ("data-batch", &batch),
                ("data-release", version(i.release.as_ref())),
                ("title", &title),
            ],
        )
        .elem("span", &[("class", "host")], dash(&i.host))
        .elem("span", &[("class", "step")], step)
        .elem("span", &[("class", "ver")], version(i.release.as_ref()))
        .close("div");
    }
    h.close("div");
}

/// A rolling update's batches: the instances each took, and how far they
/// are. Instances not started yet have no batch.
fn batches(h: &mut Html, r: &Rollout) {
    let mut by_batch: BTreeMap<u32, Vec<&RolloutInstance>> = BTreeMap::new();
    for i in &r.instances {
        by_batch.entry(i.batch).or_default().push(i);
    }
    // Those not started (batch 0) last, after the batches.
    let mut groups: Vec<(u32, Vec<&RolloutInstance>)> = by_batch.into_iter().collect();
    groups.sort_by_key(|(b, _)| (*b == 0, *b));
    h.open("ol", &[("class", "batches")]);
    for (b, list) in &groups {
        let steps: Vec<InstanceStep> = list.iter().map(|i| i.step_kind()).collect();
        let state = if *b == 0 {
            "waiting"
        } else if steps.iter().any(|s| s.in_chain()) {
            "running"
        } else if (steps.iter())
            .any(|s| matches!(s, InstanceStep::Failed | InstanceStep::RolledBack))
        {
            "failed"
        } else {
            "done"
        };
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        let title = if *b == 0 {
            format!("Not started: {} instances", list.len())
        } else {
            format!("Batch {b}: {state}")
        };
        let number = b.to_string();
        let current = if *b == r.batch { "true" } else { "false" };
        h.open(
            "li",
            &[
                ("class", &format!("batch b-{state}")),
                ("data-batch", &number),
                ("data-state", state),
                ("data-current", current),
            ],
        )
        .elem("strong", &[], &title)
        .text(" ")
        .text(&ids.join(", "))
        .close("li");
    }
    h.close("ol");
}

/// A canary's (or blue-green's) traffic steps: how each ended, where the
/// rollout is, and those to come. The last step records no verdict: once
/// the rollout succeeded it is `done`; a rollout that ended otherwise
/// leaves its step `stopped` and the rest `not_reached`.
fn traffic_steps(h: &mut Html, r: &Rollout) {
    let Some(t) = &r.traffic else { return };
    let phase = r.phase_kind();
    h.open("ol", &[("class", "steps")]);
    for (i, bp) in t.steps_basis_points.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let result = t.results.iter().rfind(|x| x.step == number);
        let state = match result {
            Some(x) => dash(&x.verdict).to_string(),
            None if phase == RolloutPhase::Succeeded => "done".to_string(),
            None if number == t.step && is_terminal(phase) => "stopped".to_string(),
            None if number == t.step => stage_word(t.stage).unwrap_or("current").to_string(),
            None if is_terminal(phase) => "not_reached".to_string(),
            None => "pending".to_string(),
        };
        let current = if number == t.step { "true" } else { "false" };
        let n = number.to_string();
        let s = share(*bp);
        h.open(
            "li",
            &[
                ("class", &format!("step t-{state}")),
                ("data-step", &n),
                ("data-share", &s),
                ("data-state", &state),
                ("data-current", current),
            ],
        )
        .elem("strong", &[], &format!("Step {n}: {s}"))
        .text(" ")
        .text(&state);
        if let Some(x) = result
            && !x.reason.is_empty()
        {
            h.elem("span", &[("class", "note")], &format!(" — {}", x.reason));
        }
        h.close("li");
    }
    h.close("ol");
}

/// Events where capacity or the floor changed (the first and last
/// always): the plot's points.
pub fn plot_points(events: &[RolloutEvent]) -> Vec<&RolloutEvent> {
    let mut sorted: Vec<&RolloutEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.at_ms);
    let mut out: Vec<&RolloutEvent> = Vec::new();
    for (i, e) in sorted.iter().enumerate() {
        let changed = out
            .last()
            .is_none_or(|p| p.capacity != e.capacity || p.floor != e.floor);
        if changed || i + 1 == sorted.len() {
            out.push(e);
        }
    }
    out
}

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;

fn num(v: f64) -> String {
    format!("{v:.1}")
}

/// Capacity (a step line) and the floor (dashed) over the rollout's time,
/// drawn in SVG on the server; each point carries its numbers.
fn plot(h: &mut Html, r: &Rollout, now_ms: i64) {
    let points = plot_points(&r.events);
    if points.is_empty() {
        h.elem("p", &[("class", "empty")], "No events yet.");
        return;
    }
    let first = r.started_at_ms.min(points[0].at_ms);
    let last_event = points.last().map_or(first, |p| p.at_ms);
    let end = if r.finished_at_ms > 0 {
        r.finished_at_ms.max(last_event)
    } else {
        now_ms.max(last_event)
    };
    let span = (end - first).max(1) as f64;
    let top = points
        .iter()
        .map(|p| p.capacity.max(p.floor))
        .chain([r.counts.unwrap_or_default().total, 1])
        .max()
        .unwrap_or(1) as f64;
    let x = |at: i64| LEFT + (at - first) as f64 / span * (W - LEFT - RIGHT);
    let y = |v: u32| TOP + (1.0 - f64::from(v) / top) * (H - TOP - BOTTOM);

    let step_path = |value: &dyn Fn(&RolloutEvent) -> u32| {
        let mut d = String::new();
        for (i, p) in points.iter().enumerate() {
            let (px, py) = (num(x(p.at_ms)), num(y(value(p))));
            if i == 0 {
                d.push_str(&format!("M{px},{py}"));
            } else {
                d.push_str(&format!(" H{px} V{py}"));
            }
        }
        d.push_str(&format!(" H{}", num(x(end))));
        d
    };
    let lowest = points.iter().map(|p| p.capacity).min().unwrap_or(0);
    let below = points.iter().filter(|p| p.capacity < p.floor).count();
    let (w, hh) = (num(W), num(H));
    h.open(
        "svg",
        &[
            ("class", "plot"),
            ("id", "capacity-plot"),
            ("xmlns", "http://www.w3.org/2000/svg"),
            ("viewBox", &format!("0 0 {w} {hh}")),
            ("width", &w),
            ("height", &hh),
            ("role", "img"),
            ("data-lowest", &lowest.to_string()),
            ("data-below-floor", &below.to_string()),
        ],
    );
    h.elem(
        "title",
        &[],
        &format!("capacity against the floor: lowest {lowest}, {below} points under the floor"),
    );
    // Axes and labels.
    let (x0, x1) = (num(LEFT), num(W - RIGHT));
    let yb = num(H - BOTTOM);
    h.void(
        "line",
        &[
            ("class", "axis"),
            ("x1", &x0),
            ("y1", &yb),
            ("x2", &x1),
            ("y2", &yb),
        ],
    )
    .void(
        "line",
        &[
            ("class", "axis"),
            ("x1", &x0),
            ("y1", &num(TOP)),
            ("x2", &x0),
            ("y2", &yb),
        ],
    );
    let mut ticks: Vec<u32> = vec![0, top as u32];
    ticks.extend(points.iter().map(|p| p.floor));
    ticks.sort_unstable();
    ticks.dedup();
    for v in ticks {
        h.elem(
            "text",
            &[
                ("class", "tick"),
                ("x", &num(LEFT - 6.0)),
                ("y", &num(y(v) + 4.0)),
                ("text-anchor", "end"),
            ],
            &v.to_string(),
        );
    }
    let ylabel = num(H - 8.0);
    h.elem(
        "text",
        &[("class", "tick"), ("x", &x0), ("y", &ylabel)],
        &clock(first),
    )
    .elem(
        "text",
        &[
            ("class", "tick"),
            ("x", &x1),
            ("y", &ylabel),
            ("text-anchor", "end"),
        ],
        &clock(end),
    );
    // The floor over capacity, so it shows where capacity touches it.
    h.void(
        "path",
        &[
            ("class", "capacity"),
            ("d", &step_path(&|p: &RolloutEvent| p.capacity)),
            ("fill", "none"),
        ],
    )
    .void(
        "path",
        &[
            ("class", "floor"),
            ("d", &step_path(&|p: &RolloutEvent| p.floor)),
            ("fill", "none"),
        ],
    );
    h.open("g", &[("class", "points")]);
    for p in &points {
        let under = if p.capacity < p.floor { " under" } else { "" };
        h.open(
            "circle",
            &[
                ("class", &format!("pt{under}")),
                ("cx", &num(x(p.at_ms))),
                ("cy", &num(y(p.capacity))),
                ("r", "3"),
                ("data-at", &p.at_ms.to_string()),
                ("data-capacity", &p.capacity.to_string()),
                ("data-floor", &p.floor.to_string()),
            ],
        )
        .elem(
            "title",
            &[],
            &format!(
                "{} capacity {} floor {}{}{}",
                clock(p.at_ms),
                p.capacity,
                p.floor,
                if p.instance.is_empty() {
                    String::new()
                } else {
                    format!(" {}", p.instance)
                },
                if p.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.message)
                }
            ),
        )
        .close("circle");
    }
    h.close("g").close("svg");
    h.open("p", &[("class", "legend")])
        .elem("span", &[("class", "key capacity")], "capacity")
        .elem("span", &[("class", "key floor")], "floor")
        .text(&format!(
            " lowest capacity {lowest}; {} under the floor",
            if below == 0 {
                "never".to_string()
            } else {
                format!("{below} times")
            }
        ))
        .close("p");
}

fn rate(a: Option<&AnalysisArm>) -> Option<f64> {
    a.filter(|a| a.attempts > 0)
        .map(|a| a.errors as f64 / a.attempts as f64)
}

fn latency(a: Option<&AnalysisArm>) -> Option<f64> {
    a.and_then(|a| a.latency_ms).filter(|v| v.is_finite())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

/// Each look of the canary's analysis: both arms' error rates and
/// latency in the look's window, and its verdict.
fn looks(h: &mut Html, a: &RolloutAnalysis) {
    if a.looks.is_empty() {
        h.elem(
            "p",
            &[("class", "empty")],
            "No looks yet: the analysis looks once a step's weights are in place and its warm-up is over.",
        );
        return;
    }
    h.open("table", &[("class", "analysis")]).header(&[
        "Step",
        "Look",
        "At",
        "Canary errors",
        "Baseline errors",
        "Canary latency (ms)",
        "Baseline latency (ms)",
        "Verdict",
        "Why",
    ]);
    for l in &a.looks {
        let canary_rate = rate(l.canary.as_ref());
        let baseline_rate = rate(l.baseline.as_ref());
        let canary_latency = latency(l.canary.as_ref());
        let baseline_latency = latency(l.baseline.as_ref());
        let verdict = dash(&l.verdict);
        h.open(
            "tr",
            &[
                ("class", "look"),
                ("data-step", &l.step.to_string()),
                ("data-look", &l.look.to_string()),
                ("data-at", &l.at_ms.to_string()),
                ("data-verdict", verdict),
                ("data-canary-error-rate", &opt(canary_rate, 6)),
                ("data-baseline-error-rate", &opt(baseline_rate, 6)),
                ("data-canary-latency-ms", &opt(canary_latency, 3)),
                ("data-baseline-latency-ms", &opt(baseline_latency, 3)),
                (
                    "data-canary-requests",
                    &l.canary.unwrap_or_default().attempts.to_string(),
                ),
                (
                    "data-baseline-requests",
                    &l.baseline.unwrap_or_default().attempts.to_string(),
                ),
            ],
        )
        .elem(
            "td",
            &[],
            &format!("{} ({})", l.step, share(l.share_basis_points)),
        )
        .elem(
            "td",
            &[],
            &if l.last {
                format!("{} (last)", l.look)
            } else {
                l.look.to_string()
            },
        )
        .elem("td", &[], &clock(l.at_ms))
        .elem("td", &[], &errors_of(l.canary.as_ref()))
        .elem("td", &[], &errors_of(l.baseline.as_ref()))
        .elem("td", &[], dash(&opt(canary_latency, 1)))
        .elem("td", &[], dash(&opt(baseline_latency, 1)))
        .open("td", &[])
        .elem("span", &[("class", &format!("badge v-{verdict}"))], verdict)
        .close("td")
        .elem("td", &[("class", "note")], &l.reason)
        .close("tr");
    }
    h.close("table");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::NOW;
    use crate::output::rollout::fixtures;

    fn with_dip() -> Rollout {
        let mut r = fixtures::rollout();
        let ev = |at, cap, msg: &str| RolloutEvent {
            capacity: cap,
            floor: 2,
            ..fixtures::event(NOW - 90_000 + at, "web@h1", "draining", msg)
        };
        r.events = vec![
            ev(0, 3, "started"),
            ev(1000, 3, "batch 1"),
            ev(2000, 2, "<b>drain</b>"),
            ev(5000, 3, "undrained"),
        ];
        r
    }

    #[test]
    fn the_plot_keeps_the_points_where_capacity_changed() {
        let r = with_dip();
        let pts: Vec<(i64, u32)> = plot_points(&r.events)
            .iter()
            .map(|e| (e.at_ms - (NOW - 90_000), e.capacity))
            .collect();
        assert_eq!(pts, vec![(0, 3), (2000, 2), (5000, 3)]);
        let page = rollout_page(&r, None, NOW).into_string();
        assert_eq!(page.matches("<circle").count(), 3, "{page}");
        assert!(
            page.contains(&format!(
                "data-at=\"{}\" data-capacity=\"2\" data-floor=\"2\"",
                NOW - 88_000
            )),
            "{page}"
        );
        assert!(
            page.contains("data-lowest=\"2\" data-below-floor=\"0\""),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;drain&lt;/b&gt;"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
    }

    #[test]
    fn the_grid_and_batches_show_each_instance_step() {
        let r = with_dip();
        let page = rollout_page(&r, None, NOW).into_string();
        assert!(page.contains("data-live=\"/rollouts/r7/events\""), "{page}");
        assert!(page.contains("class=\"cell s-done\" data-instance=\"web@h1\" data-step=\"done\""));
        assert!(page.contains("data-instance=\"web@h2\" data-step=\"deploying\""));
        assert!(page.contains("data-instance=\"web@h3\" data-step=\"pending\""));
        assert!(page.contains("data-batch=\"1\" data-state=\"done\" data-current=\"false\""));
        assert!(page.contains("data-batch=\"2\" data-state=\"running\" data-current=\"true\""));
        assert!(page.contains("data-batch=\"0\" data-state=\"waiting\""));
        let (first, last) = (
            page.find("data-batch=\"1\" data-state"),
            page.find("data-batch=\"0\" data-state"),
        );
        assert!(first < last, "not started comes last: {page}");
    }

    #[test]
    fn a_canary_shows_its_steps_and_each_look_with_its_verdict() {
        let r = fixtures::canary();
        let a = fixtures::analysis();
        let page = rollout_page(&r, Some(&a), NOW).into_string();
        assert!(
            page.contains("data-step=\"1\" data-share=\"5%\" data-state=\"passed\""),
            "{page}"
        );
        assert!(page.contains(
            "data-step=\"2\" data-share=\"25%\" data-state=\"baking\" data-current=\"true\""
        ));
        assert!(page.contains("data-step=\"3\" data-share=\"50%\" data-state=\"pending\""));
        assert_eq!(page.matches("<tr class=\"look\"").count(), 3, "{page}");
        assert!(page.contains("data-verdict=\"fail\" data-canary-error-rate=\"0.060000\" data-baseline-error-rate=\"0.000588\""), "{page}");
        assert!(page.contains("data-baseline-latency-ms=\"\""), "{page}");
    }

    #[test]
    fn a_finished_rollout_is_not_followed() {
        let mut r = with_dip();
        r.phase = drover_proto::v1::RolloutPhase::Succeeded as i32;
        r.finished_at_ms = NOW;
        let page = rollout_page(&r, None, NOW).into_string();
        assert!(page.contains("data-live=\"\""), "{page}");
        assert!(page.contains("data-phase=\"succeeded\""), "{page}");
        let mut c = fixtures::canary();
        c.phase = drover_proto::v1::RolloutPhase::Succeeded as i32;
        let done = rollout_page(&c, None, NOW).into_string();
        assert!(
            done.contains("data-step=\"2\" data-share=\"25%\" data-state=\"done\""),
            "{done}"
        );
        assert!(!done.contains("<dt>Traffic</dt>"), "{done}");
        c.phase = drover_proto::v1::RolloutPhase::RolledBack as i32;
        let back = rollout_page(&c, None, NOW).into_string();
        assert!(
            back.contains("data-step=\"2\" data-share=\"25%\" data-state=\"stopped\""),
            "{back}"
        );
        assert!(
            back.contains("data-step=\"3\" data-share=\"50%\" data-state=\"not_reached\""),
            "{back}"
        );
        let list = rollouts_page(&[r, fixtures::rollout()], NOW).into_string();
        assert!(list.contains("class=\"rollouts running\""), "{list}");
        assert!(list.contains("class=\"rollouts past\""), "{list}");
        assert!(list.contains("<a href=\"/rollouts/r7\">r7</a>"), "{list}");
    }
}
