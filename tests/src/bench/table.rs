//! The results table `scripts/bench` prints: one row per figure, with the
//! issue's target where there is one and whether it was met. Reads the JSON
//! objects `drover-bench` and `drover-fleetsim` print (one per line); a
//! scenario or field it does not know is still listed, without a target.

use serde_json::Value;

/// A target: its text and the test of a value against it.
struct Target {
    text: String,
    met: bool,
}

fn below(v: f64, limit: f64, unit: &str) -> Target {
    Target {
        text: format!("< {limit}{unit}"),
        met: v < limit,
    }
}

fn at_least(v: f64, limit: f64, unit: &str) -> Target {
    Target {
        text: format!(">= {limit}{unit}"),
        met: v >= limit,
    }
}

struct Row {
    scenario: String,
    subject: String,
    figure: String,
    value: String,
    target: Option<Target>,
    load: String,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn fmt(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Every numeric leaf of `v`, as `a.b` paths, except the listed keys.
fn leaves(v: &Value, prefix: &str, skip: &[&str], out: &mut Vec<(String, f64)>) {
    if let Value::Object(map) = v {
        for (k, x) in map {
            if prefix.is_empty() && skip.contains(&k.as_str()) {
                continue;
            }
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match x {
                Value::Number(n) => {
                    if let Some(f) = n.as_f64() {
                        out.push((path, f));
                    }
                }
                Value::Object(_) => leaves(x, &path, skip, out),
                _ => {}
            }
        }
    }
}

/// The targets of issue 5 for a figure of a record, when there is one.
fn target(record: &Value, figure: &str, v: f64) -> Option<Target> {
    let scenario = text(record, "scenario");
    let n = num(record, "n")
        .or_else(|| num(record, "instances"))
        .or_else(|| num(record, "agents"))
        .unwrap_or(0.0);
    let scenario = if scenario == "fleet" {
        "scale"
    } else {
        scenario.as_str()
    };
    match (scenario, figure) {
        ("footprint", "rss_peak_mib") if text(record, "subject").starts_with("drover-agent") => {
            Some(below(v, 8.0, " MiB"))
        }
        ("footprint", "cpu_percent") if text(record, "subject").starts_with("drover-agent") => {
            Some(below(v, 0.05, "% of a core"))
        }
        ("fanout", "ratio") => Some(at_least(v, 0.5, " of the loopback limit")),
        ("fanout", "agent_rss_growth_mib_max") => {
            // Flat: streamed, never a sizeable share of the artifact in RAM.
            let artifact = num(record, "artifact_mib").unwrap_or(100.0);
            Some(below(v, (artifact * 0.05).max(4.0).round(), " MiB (flat)"))
        }
        ("scale", "connect_secs") if n >= 50_000.0 => Some(below(v, 60.0, " s")),
        ("scale", "connect_secs") if n >= 10_000.0 => Some(below(v, 15.0, " s")),
        ("scale", "coordinator_cpu_cores") if n >= 50_000.0 => Some(below(v, 1.0, " core")),
        ("scale", "coordinator_cpu_cores") if n >= 10_000.0 => Some(below(v, 0.5, " core")),
        ("scale", "coordinator_rss_mib") if n >= 50_000.0 => Some(below(v, 4096.0, " MiB")),
        ("scale", "coordinator_rss_mib") if n >= 10_000.0 => Some(below(v, 768.0, " MiB")),
        ("scale", "report_to_visible_ms.p99") if (10_000.0..50_000.0).contains(&n) => {
            Some(below(v, 50.0, " ms"))
        }
        ("scale", "agents_json_secs") if (10_000.0..50_000.0).contains(&n) => {
            Some(below(v, 1.0, " s"))
        }
        ("rollout", f) if n >= 10_000.0 && f.contains("overhead") && f.contains("batch") => {
            Some(below(v, 50.0, " ms"))
        }
        // Steps answered at once have no theoretical minimum to compare with.
        ("rollout", "ratio") if n >= 1_000.0 && num(record, "step_delay_ms") != Some(0.0) => {
            Some(below(v, 1.05, ""))
        }
        _ => None,
    }
}

/// The figures the table lists for each known scenario, in this order
/// (the JSON carries more); an unknown scenario lists every number.
fn shown(scenario: &str) -> Option<&'static [&'static str]> {
    match scenario {
        "fleet" | "scale" => Some(&[
            "connect_secs",
            "report_to_visible_ms.p50",
            "report_to_visible_ms.p99",
            "reports_per_sec",
            "coordinator_cpu_cores",
            "coordinator_rss_mib",
            "coordinator_peak_rss_mib",
            "agents_json_secs",
            // --store etcd only (absent on redb, so not listed there).
            "etcd_writes_per_sec",
            "etcd_writes_per_agent_per_sec",
            "etcd_cpu_cores",
            "etcd_rss_mib",
        ]),
        "footprint" => Some(&[
            "rss_peak_mib",
            "rss_mib",
            "pss_mib",
            "cpu_percent",
            "cpu_secs",
            "window_secs",
            "binary_mib",
        ]),
        "ansible" => Some(&["wall_secs", "cpu_secs", "per_host_ms"]),
        "fanout" => Some(&[
            "drover_mib_s",
            "loopback_mib_s",
            "ratio",
            "loopback_to_files_mib_s",
            "ratio_to_files",
            "transfer_secs",
            "all_verified_secs",
            "agent_rss_before_mib_max",
            "agent_rss_during_mib_max",
            "agent_rss_growth_mib_max",
            "agent_rss_peak_after_unpack_mib_max",
            "coordinator_cpu_secs",
            "agents_cpu_secs",
        ]),
        "rollout" => Some(&[
            "rollout_secs",
            "theoretical_min_secs",
            "ratio",
            "overhead_per_batch_ms",
            "coordinator_cpu_secs",
            "coordinator_peak_rss_mib",
        ]),
        // The bare-stack yardstick of "rollout": no targets of its own.
        "floor" => Some(&[
            "rollout_secs",
            "theoretical_min_secs",
            "ratio",
            "overhead_per_batch_ms",
            "server_cpu_secs",
            "server_rss_mib",
        ]),
        _ => None,
    }
}

/// Keys that identify a record rather than measure something.
const IDENTITY: &[&str] = &[
    "n",
    "agents",
    "hosts",
    "batch",
    "instances",
    "processes",
    "threads",
    "health_poll_ms",
    "seed",
];

fn subject(record: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["subject", "tool", "mode"] {
        let t = text(record, key);
        if !t.is_empty() {
            parts.push(t);
        }
    }
    let delay = text(record, "step_delay");
    if !delay.is_empty() {
        parts.push(format!("step_delay={delay}"));
    }
    for key in ["n", "agents", "hosts", "batch", "instances"] {
        if let Some(x) = num(record, key) {
            parts.push(format!("{key}={}", fmt(x)));
        }
    }
    parts.join(" ")
}

fn load(record: &Value) -> String {
    for key in ["load_end", "load"] {
        let t = text(record, key);
        if !t.is_empty() {
            return t;
        }
    }
    record
        .get("machine")
        .map(|m| text(m, "loadavg_at_start"))
        .filter(|t| !t.is_empty())
        .map(|t| format!("{t} (at start)"))
        .unwrap_or_default()
}

/// Rows for one record.
fn rows(record: &Value, out: &mut Vec<Row>) {
    let scenario = text(record, "scenario");
    if let Some(reason) = record.get("skipped").and_then(Value::as_str) {
        out.push(Row {
            scenario,
            subject: subject(record),
            figure: "skipped".to_string(),
            value: reason.to_string(),
            target: None,
            load: String::new(),
        });
        return;
    }
    let mut figures = Vec::new();
    leaves(record, "", IDENTITY, &mut figures);
    let Some(keep) = shown(&scenario) else {
        for (figure, v) in figures {
            out.push(Row {
                scenario: scenario.clone(),
                subject: subject(record),
                target: target(record, &figure, v),
                figure,
                value: fmt(v),
                load: load(record),
            });
        }
        return;
    };
    for figure in keep {
        let row = |value: String, target: Option<Target>| Row {
            scenario: scenario.clone(),
            subject: subject(record),
            figure: figure.to_string(),
            value,
            target,
            load: load(record),
        };
        match figures.iter().find(|(f, _)| f == figure) {
            Some((_, v)) => out.push(row(fmt(*v), target(record, figure, *v))),
            None => {
                // Not measured: a figure with a target says so, and why
                // when the record has an error for it.
                let Some(t) = target(record, figure, f64::NAN) else {
                    continue;
                };
                let stem = figure.trim_end_matches("_secs");
                let why = text(record, &format!("{stem}_error"));
                let value = if why.is_empty() {
                    "not measured".to_string()
                } else {
                    // One table cell: one line, no `|`, not a whole log.
                    let why: String = why
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .replace('|', "/")
                        .chars()
                        .take(160)
                        .collect();
                    format!("not measured: {why}")
                };
                out.push(row(value, Some(Target { met: false, ..t })));
            }
        }
    }
}

/// drover against Ansible: for each batch size with both tools, Ansible's
/// time and CPU over drover's (target: at least 20x).
fn ansible_ratios(records: &[Value], out: &mut Vec<Row>) {
    let of = |tool: &str, batch: f64| {
        records.iter().find(|r| {
            text(r, "scenario") == "ansible"
                && text(r, "tool") == tool
                && num(r, "batch") == Some(batch)
        })
    };
    let mut batches: Vec<f64> = records
        .iter()
        .filter(|r| text(r, "scenario") == "ansible")
        .filter_map(|r| num(r, "batch"))
        .collect();
    batches.sort_by(f64::total_cmp);
    batches.dedup();
    for b in batches {
        let (Some(d), Some(a)) = (of("drover", b), of("ansible", b)) else {
            continue;
        };
        for key in ["wall_secs", "cpu_secs"] {
            let (Some(dv), Some(av)) = (num(d, key), num(a, key)) else {
                continue;
            };
            let ratio = av / dv.max(1e-9);
            out.push(Row {
                scenario: "ansible".to_string(),
                subject: format!("ansible / drover batch={}", fmt(b)),
                figure: format!("{key} ratio"),
                value: format!("{ratio:.1}x"),
                target: Some(at_least(ratio, 20.0, "x")),
                load: format!("{} / {}", load(d), load(a)),
            });
        }
    }
}

/// Parses every line of `input` that is a JSON object; other lines are
/// ignored.
pub fn parse(input: &str) -> Vec<Value> {
    input
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// The table, as Markdown.
pub fn render(records: &[Value]) -> String {
    let mut rows_out = Vec::new();
    for r in records {
        rows(r, &mut rows_out);
    }
    ansible_ratios(records, &mut rows_out);
    let mut t = String::from(
        "| scenario | subject | figure | value | target | met | load (1/5/15 min) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in &rows_out {
        let (target, met) = match &r.target {
            Some(t) => (t.text.clone(), if t.met { "yes" } else { "**no**" }),
            None => (String::new(), ""),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario, r.subject, r.figure, r.value, target, met, r.load
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_targets_and_ratios() {
        let input = r#"not json
{"scenario":"footprint","subject":"drover-agent","rss_peak_mib":6.5,"cpu_percent":0.02,"load_end":"0.1 0.2 0.3"}
{"scenario":"ansible","tool":"drover","batch":1,"hosts":30,"wall_secs":2.0,"cpu_secs":1.0}
{"scenario":"ansible","tool":"ansible","batch":1,"hosts":30,"wall_secs":50.0,"cpu_secs":40.0}
{"scenario":"fleet","n":10000,"connect_secs":20.0,"sessions_lost":0,"agents_json_secs":null,"agents_json_error":"too large","report_to_visible_ms":{"p50":1.0,"p99":60.0},"machine":{"loadavg_at_start":"1.0 1.0 1.0"}}
{"scenario":"footprint","subject":"salt-minion","skipped":"no venv"}"#;
        let records = parse(input);
        assert_eq!(records.len(), 5);
        let t = render(&records);
        assert!(t.contains("| rss_peak_mib | 6.50 | < 8 MiB | yes |"), "{t}");
        assert!(
            t.contains("| wall_secs ratio | 25.0x | >= 20x | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| cpu_secs ratio | 40.0x | >= 20x | yes |"),
            "{t}"
        );
        assert!(t.contains("| connect_secs | 20 | < 15 s | **no** |"), "{t}");
        assert!(
            t.contains("| report_to_visible_ms.p99 | 60 | < 50 ms | **no** |"),
            "{t}"
        );
        assert!(t.contains("| skipped | no venv |"), "{t}");
        assert!(!t.contains("sessions_lost"), "{t}");
        assert!(t.contains("| 1.0 1.0 1.0 (at start) |"), "{t}");
        assert!(
            t.contains("| agents_json_secs | not measured: too large | < 1 s | **no** |"),
            "{t}"
        );
    }
}
