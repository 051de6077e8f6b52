//! The spec `drover rollout start` sends: the `-f` file read as a TOML table,
//! each flag given overriding its key, read into `drover-model`'s
//! [`RolloutSpec`] (missing keys take its defaults) and checked here with the
//! one validation the coordinator also runs ([`RolloutSpec::check`]) so a
//! typo exits 2 before anything is sent. It goes on the wire as the
//! `RolloutSpec` message (conversions in `drover-proto`); the coordinator
//! checks it again and resolves the artifact digest when the spec leaves it
//! empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use drover_model::strategy::parse_steps;
use drover_model::{
    Amount, DigestRule, RolloutSpec, Share, SpecError, Spread, parse_batches, positive_rule,
    share_rule,
};
use toml::{Table, Value};

use crate::cli::parse_duration;
use crate::error::usage;
use crate::labels::parse_selector;

/// The spec's fields as flags. Every one is optional with `-f`; without it
/// `--service` and `--version` are required and the rest take the
/// coordinator's defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecFlags {
    /// Read the spec from this TOML file; flags given as well override its keys
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Service to update, e.g. web [spec: service]
    #[arg(long, value_name = "NAME", required_unless_present = "file", value_parser = parse_name)]
    pub service: Option<String>,
    /// Version to deploy, as pushed with `drover artifact push` [spec: target.version]
    #[arg(long, value_name = "VERSION", required_unless_present = "file", value_parser = parse_name)]
    pub version: Option<String>,
    /// Only instances on hosts whose labels match, e.g. `env=prod,zone in (a,b)`
    /// [spec: selector]
    #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: Option<String>,
    /// Batch sizes, counts or percentages of the instances; the last one repeats
    /// [default: 1] [spec: batches]
    #[arg(long, value_name = "SIZES", value_parser = parse_batch_flag)]
    pub batch: Option<Batches>,
    /// Capacity drover never pushes below: a count or a percentage of the
    /// instances, rounded up [default: 80%] [spec: min_healthy]
    #[arg(long, value_name = "N|P%", value_parser = parse_min_healthy)]
    pub min_healthy: Option<Amount>,
    /// Most instances drover works on at once, on top of the floor
    /// [spec: max_unavailable]
    #[arg(long, value_name = "N|P%", value_parser = parse_positive_amount)]
    pub max_unavailable: Option<Amount>,
    /// How long a new instance must stay healthy to pass [default: 10s]
    /// [spec: min_healthy_time]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub min_healthy_time: Option<Duration>,
    /// How long a new instance may take to become healthy [default: 5m]
    /// [spec: healthy_deadline]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub healthy_deadline: Option<Duration>,
    /// The rollout fails when nothing progressed for this long [default: 10m]
    /// [spec: progress_deadline]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub progress_deadline: Option<Duration>,
    /// Timeout of each step (drain, stop, deploy, start, undrain) [default: 2m]
    /// [spec: step_timeout]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub step_timeout: Option<Duration>,
    /// Failed instances tolerated before the rollout stops [default: 0]
    /// [spec: max_failures]
    #[arg(long, value_name = "N|P%", value_parser = parse_budget)]
    pub max_failures: Option<Amount>,
    /// Instances on lost hosts tolerated before the rollout stops [default: 0]
    /// [spec: max_unreachable]
    #[arg(long, value_name = "N|P%", value_parser = parse_budget)]
    pub max_unreachable: Option<Amount>,
    /// When the rollout stops on failures, return every updated instance to
    /// its previous release [spec: auto_rollback]
    #[arg(long)]
    pub auto_rollback: bool,
    /// At most K instances (default 1) per value of this host label unavailable
    /// at once, e.g. `zone` or `zone:2` [spec: spread_by]
    #[arg(long, value_name = "LABEL[:K]", value_parser = parse_spread)]
    pub spread_by: Option<Spread>,
    /// Instances whose host is lost: `skip` them (counted against
    /// --max-unreachable) or `wait` for the host [default: wait] [spec: lost_hosts]
    #[arg(long, value_name = "POLICY", value_parser = ["skip", "wait"])]
    pub lost_hosts: Option<String>,
    /// How traffic moves: `rolling` (batches drained and updated in place),
    /// `canary` (a few instances on the new release get a growing share of
    /// traffic through HAProxy weights, judged against the old release at
    /// every step) or `blue-green` (the idle color of every host gets the
    /// release and, after the pre-traffic hook, the traffic step by step;
    /// the old color is kept drained for --keep-old, then stopped)
    /// [default: rolling] [spec: strategy]
    #[arg(long, value_name = "STRATEGY", value_parser = ["rolling", "canary", "blue-green"],
          help_heading = "Canary and blue-green")]
    pub strategy: Option<String>,
    /// Shares of traffic the new release gets, step by step, growing to
    /// 100%; each needs a `%` [default: 5%,25%,50%,100% for canary,
    /// 10%,25%,50%,100% for blue-green] [spec: steps]
    #[arg(long, value_name = "SHARES", value_parser = parse_steps_flag,
          help_heading = "Canary and blue-green")]
    pub steps: Option<Steps>,
    /// How long each traffic step is watched by the analysis before the
    /// next (`drover rollout promote` ends it early) [default: 30m for
    /// canary, 5m per step for blue-green] [spec: bake]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          help_heading = "Canary and blue-green")]
    pub bake: Option<Duration>,
    /// Blue-green: how long the old color stays up, drained, after the
    /// switch, so that `drover rollout rollback` moves traffic back at once
    /// [default: 60m] [spec: keep_old]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          help_heading = "Canary and blue-green")]
    pub keep_old: Option<Duration>,
    /// Blue-green: a hook named in the coordinator's config
    /// (`[pre_traffic_hooks.NAME]`), run against the idle color before any
    /// traffic moves; a non-zero exit rolls the switch back [default: none]
    /// [spec: pre_traffic_hook]
    #[arg(long, value_name = "NAME", value_parser = parse_name,
          help_heading = "Canary and blue-green")]
    pub pre_traffic_hook: Option<String>,
    /// How long a step may look for enough traffic to judge before it is
    /// inconclusive [default: 30m, or the bake when longer]
    /// [spec: analysis.max_analysis]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          help_heading = "Canary and blue-green")]
    pub max_analysis: Option<Duration>,
    /// What an inconclusive step does: `pause` for a human to promote,
    /// resume or roll back, `fail` (roll back) or `pass` (go on)
    /// [default: pause] [spec: analysis.on_inconclusive]
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "fail", "pass"],
          help_heading = "Canary and blue-green")]
    pub on_inconclusive: Option<String>,
    /// How often the analysis compares the new release with the old
    /// [default: 10s] [spec: analysis.interval]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          help_heading = "Canary and blue-green")]
    pub analysis_interval: Option<Duration>,
    /// Counting starts this long after a step's weights are in place
    /// [default: 60s, or a quarter of the bake when shorter]
    /// [spec: analysis.warmup]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          help_heading = "Canary and blue-green")]
    pub warmup: Option<Duration>,
    /// Where requests, errors and latency are read: `haproxy` (its
    /// per-server counters), `metrics` (each instance's own Prometheus
    /// /metrics) or `auto` (metrics when every instance reports them)
    /// [default: auto] [spec: analysis.source]
    #[arg(long, value_name = "SOURCE", value_parser = ["auto", "haproxy", "metrics"],
          help_heading = "Canary and blue-green")]
    pub analysis_source: Option<String>,
}

/// `--batch`, parsed: a newtype so clap takes it as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches(pub Vec<Amount>);

/// `--steps`, parsed: a newtype so clap takes it as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<Share>);

/// Spec keys and the flags that set them, for error hints.
const FLAG_OF: &[(&str, &str)] = &[
    ("service", "--service"),
    ("selector", "--selector"),
    ("target.version", "--version"),
    ("batches", "--batch"),
    ("max_unavailable", "--max-unavailable"),
    ("min_healthy", "--min-healthy"),
    ("min_healthy_time", "--min-healthy-time"),
    ("healthy_deadline", "--healthy-deadline"),
    ("progress_deadline", "--progress-deadline"),
    ("max_failures", "--max-failures"),
    ("max_unreachable", "--max-unreachable"),
    ("spread_by", "--spread-by"),
    ("lost_hosts", "--lost-hosts"),
    ("step_timeout", "--step-timeout"),
    ("strategy", "--strategy"),
    ("steps", "--steps"),
    ("bake", "--bake"),
    ("keep_old", "--keep-old"),
    ("pre_traffic_hook", "--pre-traffic-hook"),
    ("analysis.max_analysis", "--max-analysis"),
    ("analysis.on_inconclusive", "--on-inconclusive"),
    ("analysis.interval", "--analysis-interval"),
    ("analysis.warmup", "--warmup"),
    ("analysis.source", "--analysis-source"),
];

fn parse_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(t.to_string())
}

fn amount(s: &str) -> Result<Amount, String> {
    s.parse::<Amount>().map_err(|e| e.to_string())
}

// The flag parsers apply the spec's own rules to one value, so a bad flag
// is named by clap before the whole spec is checked.

fn at_most_100(a: Amount) -> Result<Amount, String> {
    share_rule(a)
        .map(|()| a)
        .map_err(|expected| format!("expected {expected}, got {a}"))
}

fn positive(a: Amount) -> Result<Amount, String> {
    positive_rule(a)
        .map(|()| a)
        .map_err(|expected| format!("expected {expected}, got {a}"))
}

fn parse_batch_flag(s: &str) -> Result<Batches, String> {
    let list = parse_batches(s)
        .map_err(|e| format!("{e}; expected batch sizes like 1,25%,100% (the last one repeats)"))?;
    for a in &list {
        positive(*a)
            .map_err(|e| format!("each batch size {}", e.replacen("expected", "must be", 1)))?;
    }
    Ok(Batches(list))
}

/// `--steps`: shares with their `%` (so `5` is never read as five
/// instances); whether they grow to 100% is the spec's rule, checked with
/// the rest.
fn parse_steps_flag(s: &str) -> Result<Steps, String> {
    let steps =
        parse_steps(s).map_err(|e| format!("{e}; steps are shares like 5%,25%,50%,100%"))?;
    if steps.is_empty() {
        return Err("expected shares of traffic like 5%,25%,50%,100%".into());
    }
    Ok(Steps(steps))
}

fn parse_min_healthy(s: &str) -> Result<Amount, String> {
    amount(s).and_then(at_most_100)
}

fn parse_budget(s: &str) -> Result<Amount, String> {
    amount(s).and_then(at_most_100)
}

fn parse_positive_amount(s: &str) -> Result<Amount, String> {
    amount(s).and_then(positive)
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; expected a duration like 0s, 10s or 1m"))
}

fn parse_spread(s: &str) -> Result<Spread, String> {
    let spread: Spread = s.parse().map_err(|e: SpecError| match e {
        SpecError::Invalid { expected, .. } => format!("expected {expected}"),
        e => e.to_string(),
    })?;
    spread.check().map_err(|e| match e.field() {
        Some("spread_by.label") => "expected a label key like zone, or zone:2".to_string(),
        Some("spread_by.max_unavailable") => {
            "K must be at least 1, or nothing could ever be taken down".to_string()
        }
        _ => e.to_string(),
    })?;
    Ok(spread)
}

fn amount_value(a: Amount) -> Value {
    match a {
        Amount::Count(n) => Value::Integer(i64::from(n)),
        Amount::Percent(_) => Value::String(a.to_string()),
    }
}

fn duration_value(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

/// Reads `-f`: a TOML table, or a usage error naming the file and line.
fn read_file(path: &Path) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("read rollout spec {}: {e}", path.display())))?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> anyhow::Result<Table> {
    text.parse::<Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().to_string();
        match line {
            Some(line) => usage(format!("{}: line {line}: {msg}", path.display())),
            None => usage(format!("{}: {msg}", path.display())),
        }
    })
}

/// The `target` table, created if missing.
fn target_mut<'t>(t: &'t mut Table, origin: &str) -> anyhow::Result<&'t mut Table> {
    t.entry("target")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| {
            usage(format!(
                "rollout spec{origin}: target: expected a table like {{ version = \"v2\" }}"
            ))
        })
}

/// The `analysis` table, created if missing.
fn analysis_mut<'t>(t: &'t mut Table, origin: &str) -> anyhow::Result<&'t mut Table> {
    t.entry("analysis")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| {
            usage(format!(
                "rollout spec{origin}: analysis: expected a table like [analysis] interval = \"10s\""
            ))
        })
}

/// Moves the top-level `version = "v2"` shorthand into `target.version`.
fn lift_version(t: &mut Table, origin: &str) -> anyhow::Result<()> {
    let Some(v) = t.remove("version") else {
        return Ok(());
    };
    let Value::String(version) = v else {
        return Err(usage(format!(
            "rollout spec{origin}: version: expected a string like \"v2\", got {v}"
        )));
    };
    let target = target_mut(t, origin)?;
    match target.get("version") {
        Some(Value::String(other)) if *other != version => Err(usage(format!(
            "rollout spec{origin}: version = \"{version}\" and target.version = \"{other}\" \
             disagree; set one of them"
        ))),
        _ => {
            target.insert("version".into(), Value::String(version));
            Ok(())
        }
    }
}

/// Overrides the table's keys with the flags given.
fn apply(t: &mut Table, f: &SpecFlags, origin: &str) -> anyhow::Result<()> {
    let mut set = |k: &str, v: Value| {
        t.insert(k.to_string(), v);
    };
    if let Some(s) = &f.service {
        set("service", Value::String(s.clone()));
    }
    if let Some(s) = &f.selector {
        set("selector", Value::String(s.clone()));
    }
    if let Some(Batches(b)) = &f.batch {
        let list = b.iter().map(|a| Value::String(a.to_string())).collect();
        set("batches", Value::Array(list));
    }
    for (key, a) in [
        ("min_healthy", f.min_healthy),
        ("max_unavailable", f.max_unavailable),
        ("max_failures", f.max_failures),
        ("max_unreachable", f.max_unreachable),
    ] {
        if let Some(a) = a {
            set(key, amount_value(a));
        }
    }
    for (key, d) in [
        ("min_healthy_time", f.min_healthy_time),
        ("healthy_deadline", f.healthy_deadline),
        ("progress_deadline", f.progress_deadline),
        ("step_timeout", f.step_timeout),
    ] {
        if let Some(d) = d {
            set(key, duration_value(d));
        }
    }
    if f.auto_rollback {
        set("auto_rollback", Value::Boolean(true));
    }
    if let Some(s) = &f.spread_by {
        let mut spread = Table::new();
        spread.insert("label".into(), Value::String(s.label.clone()));
        spread.insert(
            "max_unavailable".into(),
            Value::Integer(i64::from(s.max_unavailable)),
        );
        set("spread_by", Value::Table(spread));
    }
    if let Some(p) = &f.lost_hosts {
        set("lost_hosts", Value::String(p.clone()));
    }
    if let Some(s) = &f.strategy {
        set("strategy", Value::String(s.clone()));
    }
    if let Some(Steps(steps)) = &f.steps {
        let list = steps.iter().map(|s| Value::String(s.to_string())).collect();
        set("steps", Value::Array(list));
    }
    for (key, d) in [("bake", f.bake), ("keep_old", f.keep_old)] {
        if let Some(d) = d {
            set(key, duration_value(d));
        }
    }
    if let Some(h) = &f.pre_traffic_hook {
        set("pre_traffic_hook", Value::String(h.clone()));
    }
    let analysis: Vec<(&str, Value)> = [
        ("max_analysis", f.max_analysis.map(duration_value)),
        ("interval", f.analysis_interval.map(duration_value)),
        ("warmup", f.warmup.map(duration_value)),
        (
            "on_inconclusive",
            f.on_inconclusive.clone().map(Value::String),
        ),
        ("source", f.analysis_source.clone().map(Value::String)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    if !analysis.is_empty() {
        let table = analysis_mut(t, origin)?;
        for (k, v) in analysis {
            table.insert(k.to_string(), v);
        }
    }
    if let Some(v) = &f.version {
        target_mut(t, origin)?.insert("version".into(), Value::String(v.clone()));
    }
    // An empty digest asks the coordinator to take it from the artifact store.
    if let Some(target) = t.get_mut("target").and_then(Value::as_table_mut) {
        target
            .entry("digest")
            .or_insert_with(|| Value::String(String::new()));
    }
    Ok(())
}

/// Whether the flag setting `field` (`batches[2]`, `spread_by.label`) was
/// given, and its name.
fn flag_for(field: &str, f: &SpecFlags) -> Option<(&'static str, bool)> {
    let key = field.split(['[', '.']).next().unwrap_or(field);
    let key = if field.starts_with("target.") || field.starts_with("analysis.") {
        field
    } else {
        key
    };
    let (_, flag) = FLAG_OF.iter().find(|(k, _)| *k == key)?;
    let given = match key {
        "service" => f.service.is_some(),
        "selector" => f.selector.is_some(),
        "target.version" => f.version.is_some(),
        "batches" => f.batch.is_some(),
        "max_unavailable" => f.max_unavailable.is_some(),
        "min_healthy" => f.min_healthy.is_some(),
        "min_healthy_time" => f.min_healthy_time.is_some(),
        "healthy_deadline" => f.healthy_deadline.is_some(),
        "progress_deadline" => f.progress_deadline.is_some(),
        "max_failures" => f.max_failures.is_some(),
        "max_unreachable" => f.max_unreachable.is_some(),
        "spread_by" => f.spread_by.is_some(),
        "lost_hosts" => f.lost_hosts.is_some(),
        "step_timeout" => f.step_timeout.is_some(),
        "strategy" => f.strategy.is_some(),
        "steps" => f.steps.is_some(),
        "bake" => f.bake.is_some(),
        "keep_old" => f.keep_old.is_some(),
        "pre_traffic_hook" => f.pre_traffic_hook.is_some(),
        "analysis.max_analysis" => f.max_analysis.is_some(),
        "analysis.on_inconclusive" => f.on_inconclusive.is_some(),
        "analysis.interval" => f.analysis_interval.is_some(),
        "analysis.warmup" => f.warmup.is_some(),
        "analysis.source" => f.analysis_source.is_some(),
        _ => false,
    };
    Some((flag, given))
}

/// Checks the spec as the coordinator will, so mistakes exit 2 locally. An
/// empty digest is left for the coordinator to resolve.
fn check(t: &Table, f: &SpecFlags, origin: &str) -> anyhow::Result<RolloutSpec> {
    let spec: RolloutSpec = Value::Table(t.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            usage(format!("rollout spec{origin}: {}", e.message().trim()))
        })?;
    spec.check(DigestRule::MayBeEmpty).map_err(|e| {
        let hint = match e.field().and_then(|field| flag_for(field, f)) {
            Some((flag, true)) => format!(" (set by {flag})"),
            Some((flag, false)) => format!(" (change it with {flag})"),
            None => String::new(),
        };
        usage(format!("rollout spec: {e}{hint}"))
    })?;
    Ok(spec)
}

/// `--initial`: a first deploy, with a floor of 0.
pub fn initial(f: &mut SpecFlags) {
    f.min_healthy = Some(Amount::Count(0));
}

/// The spec to send, checked; its digest may be empty.
pub fn build(f: &SpecFlags) -> anyhow::Result<RolloutSpec> {
    let (mut table, origin) = match &f.file {
        Some(path) => (read_file(path)?, format!(" {}", path.display())),
        None => (Table::new(), String::new()),
    };
    lift_version(&mut table, &origin)?;
    apply(&mut table, f, &origin)?;
    check(&table, f, &origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_USAGE, exit_code};
    use drover_model::LostHostPolicy;

    fn flags(service: &str, version: &str) -> SpecFlags {
        SpecFlags {
            service: Some(service.into()),
            version: Some(version.into()),
            ..SpecFlags::default()
        }
    }

    fn usage_msg(r: anyhow::Result<RolloutSpec>) -> String {
        let err = r.expect_err("should fail");
        assert_eq!(exit_code(&err), EXIT_USAGE, "{err:#}");
        format!("{err:#}")
    }

    #[test]
    fn flags_alone_make_a_spec_with_the_documented_defaults() {
        let spec = build(&flags("web", "v2")).expect("build");
        assert_eq!(
            spec,
            RolloutSpec {
                service: "web".into(),
                // Empty: the coordinator takes the pushed artifact's.
                target: drover_model::Release::new("v2", ""),
                ..RolloutSpec::default()
            }
        );
        assert_eq!(spec.batches, vec![Amount::Count(1)]);
        assert_eq!(spec.min_healthy, Amount::Percent(80));

        let f = SpecFlags {
            selector: Some("env=prod".into()),
            batch: Some(parse_batch_flag("1,25%,100%").expect("batch")),
            min_healthy: Some(Amount::Count(8)),
            max_unavailable: Some(Amount::Percent(20)),
            min_healthy_time: Some(Duration::from_secs(0)),
            healthy_deadline: Some(Duration::from_secs(60)),
            progress_deadline: Some(Duration::from_secs(600)),
            step_timeout: Some(Duration::from_secs(90)),
            max_failures: Some(Amount::Percent(10)),
            max_unreachable: Some(Amount::Count(1)),
            auto_rollback: true,
            spread_by: Some(parse_spread("zone:2").expect("spread")),
            lost_hosts: Some("skip".into()),
            ..flags("web", "v2")
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.selector, "env=prod");
        assert_eq!(
            spec.batches,
            vec![Amount::Count(1), Amount::Percent(25), Amount::Percent(100)]
        );
        assert_eq!(spec.min_healthy, Amount::Count(8));
        assert_eq!(spec.max_unavailable, Some(Amount::Percent(20)));
        assert_eq!(spec.min_healthy_time, Duration::ZERO);
        assert_eq!(spec.healthy_deadline, Duration::from_secs(60));
        assert_eq!(spec.step_timeout, Duration::from_secs(90));
        assert_eq!(spec.max_failures, Amount::Percent(10));
        assert_eq!(spec.max_unreachable, Amount::Count(1));
        assert!(spec.auto_rollback);
        assert_eq!(
            spec.spread_by,
            Some(Spread {
                label: "zone".into(),
                max_unavailable: 2
            })
        );
        assert_eq!(spec.lost_hosts, LostHostPolicy::Skip);
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("rollout.toml");
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = "cd".repeat(32);
        let path = write(
            &dir,
            &format!(
                "service = \"web\"\nselector = \"env=prod\"\nbatches = \"1,50%\"\n\
                 min_healthy = \"90%\"\nspread_by = \"zone\"\n\
                 [target]\nversion = \"v2\"\ndigest = \"{digest}\"\n"
            ),
        );
        let f = SpecFlags {
            file: Some(path.clone()),
            min_healthy: Some(Amount::Count(2)),
            ..SpecFlags::default()
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.service, "web");
        assert_eq!(spec.selector, "env=prod");
        assert_eq!(spec.batches, vec![Amount::Count(1), Amount::Percent(50)]);
        assert_eq!(spec.min_healthy, Amount::Count(2));
        assert_eq!(spec.target.digest, digest);
        assert_eq!(spec.spread_by.map(|s| s.label), Some("zone".into()));

        // A new --version replaces the version; the file's digest stays for
        // the coordinator to check against it.
        let f = SpecFlags {
            file: Some(path),
            version: Some("v3".into()),
            service: Some("api".into()),
            ..SpecFlags::default()
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.service, "api");
        assert_eq!(spec.target.version, "v3");
        assert_eq!(spec.target.digest, digest);
    }

    #[test]
    fn version_shorthand_moves_into_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SpecFlags {
            file: Some(write(&dir, "service = \"web\"\nversion = \"v2\"\n")),
            ..SpecFlags::default()
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.target, drover_model::Release::new("v2", ""));

        let f = SpecFlags {
            file: Some(write(
                &dir,
                "service = \"web\"\nversion = \"v2\"\ntarget = { version = \"v3\" }\n",
            )),
            ..SpecFlags::default()
        };
        let msg = usage_msg(build(&f));
        assert!(msg.contains("disagree"), "{msg}");
        // The flag wins over both.
        let f = SpecFlags {
            version: Some("v4".into()),
            ..f
        };
        assert!(build(&f).is_err(), "the file itself is contradictory");
    }

    #[test]
    fn file_mistakes_name_the_file_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = |text: &str| SpecFlags {
            file: Some(write(&dir, text)),
            ..SpecFlags::default()
        };
        let msg = usage_msg(build(&f("service = \"web\"\nversion = \n")));
        assert!(msg.contains("rollout.toml: line 2"), "{msg}");
        let msg = usage_msg(build(&f(
            "service = \"web\"\nversion = \"v2\"\nbatch = 3\n",
        )));
        assert!(msg.contains("rollout.toml"), "{msg}");
        assert!(msg.contains("unknown field `batch`"), "{msg}");
        let msg = usage_msg(build(&f("version = \"v2\"\n")));
        assert!(
            msg.contains(
                "service: expected a service name, got nothing (change it with --service)"
            ),
            "{msg}"
        );
        let missing = SpecFlags {
            file: Some(dir.path().join("nope.toml")),
            ..SpecFlags::default()
        };
        let msg = usage_msg(build(&missing));
        assert!(msg.contains("read rollout spec"), "{msg}");
        assert!(msg.contains("nope.toml"), "{msg}");
    }

    #[test]
    fn flag_values_are_checked_locally() {
        let err = parse_batch_flag("0").expect_err("zero batch");
        assert!(err.contains("at least 1"), "{err}");
        assert!(parse_batch_flag("1,0%").is_err());
        assert!(parse_batch_flag("1,,2").is_err());
        assert!(parse_batch_flag("150%").is_err());
        let err = parse_min_healthy("120%").expect_err("over 100");
        assert!(err.contains("0% to 100%"), "{err}");
        assert_eq!(parse_min_healthy("8"), Ok(Amount::Count(8)));
        assert_eq!(parse_min_healthy("0%"), Ok(Amount::Percent(0)));
        assert!(parse_min_healthy("eight").is_err());
        assert!(parse_positive_amount("0").is_err());
        assert_eq!(parse_budget("0"), Ok(Amount::Count(0)));
        assert!(parse_spread("zone:0").is_err());
        assert!(parse_spread(":2").is_err());
        assert!(parse_spread("zone:x").is_err());
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert!(parse_duration_or_zero("soon").is_err());
    }

    #[test]
    fn canary_flags_make_the_spec_and_override_the_file() {
        use drover_model::{MetricsSource, OnInconclusive, Strategy};
        let f = SpecFlags {
            strategy: Some("canary".into()),
            steps: Some(parse_steps_flag("1%,10%,100%").expect("steps")),
            bake: Some(Duration::from_secs(600)),
            max_analysis: Some(Duration::from_secs(1200)),
            on_inconclusive: Some("fail".into()),
            analysis_interval: Some(Duration::from_secs(5)),
            warmup: Some(Duration::from_secs(30)),
            analysis_source: Some("haproxy".into()),
            ..flags("web", "v2")
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.strategy, Strategy::Canary);
        assert_eq!(
            spec.steps,
            vec![Share::percent(1), Share::percent(10), Share::FULL]
        );
        assert_eq!(spec.bake, Some(Duration::from_secs(600)));
        let a = &spec.analysis;
        assert_eq!(a.max_analysis, Some(Duration::from_secs(1200)));
        assert_eq!(a.on_inconclusive, OnInconclusive::Fail);
        assert_eq!(a.interval, Duration::from_secs(5));
        assert_eq!(a.warmup, Some(Duration::from_secs(30)));
        assert_eq!(a.source, MetricsSource::Haproxy);
        // Thresholds no flag sets keep their defaults.
        assert_eq!(a.alpha, drover_model::AnalysisSpec::default().alpha);

        // The file's [analysis] keeps what the flags do not set.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            &dir,
            "service = \"web\"\nversion = \"v2\"\nstrategy = \"canary\"\n\
             steps = [\"5%\", \"100%\"]\nbake = \"20m\"\n\
             [analysis]\nalpha = 0.0005\nmin_difference = \"0.2%\"\ninterval = \"20s\"\n",
        );
        let f = SpecFlags {
            file: Some(path.clone()),
            bake: Some(Duration::from_secs(300)),
            analysis_interval: Some(Duration::from_secs(15)),
            ..SpecFlags::default()
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.steps, vec![Share::percent(5), Share::FULL]);
        assert_eq!(spec.bake, Some(Duration::from_secs(300)));
        assert_eq!(spec.analysis.alpha.get(), 0.0005);
        assert_eq!(spec.analysis.min_difference.get(), 0.002);
        assert_eq!(spec.analysis.interval, Duration::from_secs(15));
        // Blue-green takes keep_old and the hook.
        let f = SpecFlags {
            file: Some(path),
            strategy: Some("blue-green".into()),
            keep_old: Some(Duration::from_secs(1800)),
            pre_traffic_hook: Some("smoke".into()),
            ..SpecFlags::default()
        };
        let spec = build(&f).expect("build");
        assert_eq!(spec.strategy, Strategy::BlueGreen);
        assert_eq!(spec.keep_old_time(), Duration::from_secs(1800));
        assert_eq!(spec.pre_traffic_hook.as_deref(), Some("smoke"));
    }

    #[test]
    fn canary_mistakes_name_the_flag() {
        // A share needs its %, so 5 is never read as five instances.
        let err = parse_steps_flag("5").expect_err("no %");
        assert!(err.contains("like 5% or 0.5%"), "{err}");
        assert!(err.contains("\"5\""), "{err}");
        assert!(
            parse_steps_flag("5%,,100%").is_ok(),
            "empty items are skipped"
        );
        assert!(parse_steps_flag(",").is_err());
        assert!(parse_steps_flag("0%,100%").is_err());
        assert!(parse_steps_flag("5%,101%").is_err());

        let canary = |f: SpecFlags| SpecFlags {
            strategy: Some("canary".into()),
            ..f
        };
        for (f, want) in [
            (
                canary(SpecFlags {
                    steps: Some(parse_steps_flag("25%,5%,100%").expect("steps")),
                    ..flags("web", "v2")
                }),
                "rollout spec: steps[1]: expected shares that grow step by step, got 5% \
                 (set by --steps)",
            ),
            (
                canary(SpecFlags {
                    steps: Some(parse_steps_flag("5%,50%").expect("steps")),
                    ..flags("web", "v2")
                }),
                "rollout spec: steps: expected a last step of 100%, where every instance is \
                 on the new release, got 50% (set by --steps)",
            ),
            (
                SpecFlags {
                    bake: Some(Duration::from_secs(60)),
                    ..flags("web", "v2")
                },
                "rollout spec: bake: expected nothing for a rolling update (set strategy = \
                 canary or blue-green), got a value (set by --bake)",
            ),
            (
                canary(SpecFlags {
                    keep_old: Some(Duration::from_secs(60)),
                    ..flags("web", "v2")
                }),
                "rollout spec: keep_old: expected nothing unless strategy = blue-green, got a \
                 value (set by --keep-old)",
            ),
            (
                canary(SpecFlags {
                    pre_traffic_hook: Some("smoke".into()),
                    ..flags("web", "v2")
                }),
                "rollout spec: pre_traffic_hook: expected nothing unless strategy = \
                 blue-green, got a value (set by --pre-traffic-hook)",
            ),
            (
                canary(SpecFlags {
                    bake: Some(Duration::from_secs(40)),
                    warmup: Some(Duration::from_secs(60)),
                    ..flags("web", "v2")
                }),
                "rollout spec: analysis.warmup: expected shorter than the bake (40s), got 1m \
                 (set by --warmup)",
            ),
            (
                canary(SpecFlags {
                    bake: Some(Duration::from_secs(3600)),
                    max_analysis: Some(Duration::from_secs(600)),
                    ..flags("web", "v2")
                }),
                "rollout spec: analysis.max_analysis: expected at least the bake (1h), got \
                 10m (set by --max-analysis)",
            ),
            (
                canary(SpecFlags {
                    bake: Some(Duration::from_secs(5)),
                    ..flags("web", "v2")
                }),
                "rollout spec: bake: expected at least one analysis interval (10s), got 5s \
                 (set by --bake)",
            ),
        ] {
            assert_eq!(usage_msg(build(&f)), want);
        }
        // A field set in the file is named with the flag that changes it.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SpecFlags {
            file: Some(write(
                &dir,
                "service = \"web\"\nversion = \"v2\"\nstrategy = \"canary\"\n\
                 [analysis]\ninterval = \"0s\"\n",
            )),
            ..SpecFlags::default()
        };
        let msg = usage_msg(build(&f));
        assert_eq!(
            msg,
            "rollout spec: analysis.interval: expected at least 1s, got 0s \
             (change it with --analysis-interval)"
        );
        // A threshold no flag sets is named as the file's field.
        let f = SpecFlags {
            file: Some(write(
                &dir,
                "service = \"web\"\nversion = \"v2\"\nstrategy = \"canary\"\n\
                 [analysis]\nalpha = 0.7\n",
            )),
            ..SpecFlags::default()
        };
        assert_eq!(
            usage_msg(build(&f)),
            "rollout spec: analysis.alpha: expected above 0 and below 0.5, got 0.7"
        );
        let f = SpecFlags {
            file: Some(write(
                &dir,
                "service = \"web\"\nversion = \"v2\"\nanalysis = 3\n",
            )),
            warmup: Some(Duration::from_secs(5)),
            ..SpecFlags::default()
        };
        assert!(usage_msg(build(&f)).contains("analysis: expected a table"));
    }

    /// Every key the documentation shows is one the spec reads, with a
    /// value of the right form: the spec file in `rollout start --help`
    /// and the one in the README.
    #[test]
    fn the_documented_spec_files_read() {
        let read = |what: &str, text: &str| {
            let mut t = parse_file(Path::new(what), text).expect("TOML");
            lift_version(&mut t, "").expect("version");
            apply(&mut t, &SpecFlags::default(), "").expect("no flags");
            let spec: RolloutSpec = Value::Table(t)
                .try_into()
                .unwrap_or_else(|e: toml::de::Error| panic!("{what}: {e}\n{text}"));
            spec
        };
        let help = super::super::START_AFTER_HELP;
        let file: String = (help.lines())
            .skip_while(|l| !l.starts_with("Spec file"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        let spec = read("--help", &file);
        assert_eq!(spec.strategy, drover_model::Strategy::Canary);
        assert_eq!(spec.analysis.latency_windows, 3);
        assert_eq!(spec.analysis.min_difference.get(), 0.001);

        let readme = include_str!("../../../../README.md");
        let block: String = (readme.lines())
            .skip_while(|l| !l.starts_with("The spec can also come from a file"))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        let spec = read("README.md", &block);
        assert!(
            spec.analysis.alpha.get() == 0.001 && spec.bake.is_some(),
            "{block}"
        );
        // Its values are the defaults it says they are.
        assert_eq!(
            spec.analysis,
            drover_model::AnalysisSpec {
                warmup: spec.analysis.warmup,
                max_analysis: spec.analysis.max_analysis,
                ..drover_model::AnalysisSpec::default()
            }
        );
        assert_eq!(
            spec.traffic_steps(),
            drover_model::Strategy::Canary.default_steps()
        );
        assert_eq!(
            spec.bake,
            Some(drover_model::Strategy::Canary.default_bake())
        );
    }

    #[test]
    fn cross_field_mistakes_name_the_flags() {
        let f = SpecFlags {
            min_healthy_time: Some(Duration::from_secs(600)),
            ..flags("web", "v2")
        };
        let msg = usage_msg(build(&f));
        assert!(
            msg.starts_with("rollout spec: min_healthy_time: expected at most healthy_deadline"),
            "{msg}"
        );
        assert!(msg.ends_with("(set by --min-healthy-time)"), "{msg}");
        let f = SpecFlags {
            step_timeout: Some(Duration::from_secs(600)),
            ..flags("web", "v2")
        };
        let msg = usage_msg(build(&f));
        assert!(msg.contains("progress_deadline"), "{msg}");
        assert!(
            msg.ends_with("(change it with --progress-deadline)"),
            "{msg}"
        );
    }
}
