//! What the operator asks for: the rollout spec, read from flags or a TOML
//! file, and its validation.
//!
//! Percentages resolve against the number of target instances (every instance
//! the service and selector matched at start, including those already on the
//! target release), so a spec means the same thing however far a re-run got.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::amount::{Amount, batches_serde};
use crate::selector::Selector;
use crate::strategy::{AnalysisSpec, Share, Strategy, steps_serde};

/// A service version: version string plus the artifact's sha256.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: String,
    /// sha256 of the artifact, 64 lowercase hex digits.
    pub digest: String,
}

impl Release {
    pub fn new(version: impl Into<String>, digest: impl Into<String>) -> Release {
        Release {
            version: version.into(),
            digest: digest.into(),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.digest.get(..12).unwrap_or(&self.digest);
        write!(f, "{} ({short})", self.version)
    }
}

/// At most `max_unavailable` instances sharing a value of `label` may be
/// unavailable at once, whether drover took them down or they fell over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub label: String,
    pub max_unavailable: u32,
}

impl FromStr for Spread {
    type Err = SpecError;

    /// `zone` (one unavailable per zone) or `zone:2`.
    fn from_str(s: &str) -> Result<Spread, SpecError> {
        let (label, k) = match s.split_once(':') {
            None => (s, 1),
            Some((label, k)) => {
                let k = k.trim().parse::<u32>().map_err(|_| {
                    SpecError::invalid("spread_by", "LABEL or LABEL:K with K a whole number", s)
                })?;
                (label, k)
            }
        };
        Ok(Spread {
            label: label.trim().to_string(),
            max_unavailable: k,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpreadTable {
    label: String,
    #[serde(default = "one")]
    max_unavailable: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for Spread {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Spread, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Spread;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"LABEL\", \"LABEL:K\" or { label = \"zone\", max_unavailable = K }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Spread, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Spread, A::Error> {
                let t = SpreadTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Spread {
                    label: t.label,
                    max_unavailable: t.max_unavailable,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What to do with instances whose host is lost (agent not reporting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LostHostPolicy {
    /// Leave them as they are and count them against `max_unreachable`.
    Skip,
    /// Wait for the host to come back, up to `progress_deadline`.
    #[default]
    Wait,
}

impl FromStr for LostHostPolicy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<LostHostPolicy, SpecError> {
        match s {
            "skip" => Ok(LostHostPolicy::Skip),
            "wait" => Ok(LostHostPolicy::Wait),
            _ => Err(SpecError::invalid("lost_hosts", "\"skip\" or \"wait\"", s)),
        }
    }
}

/// A rollout as the operator wrote it. Missing fields take the defaults of
/// [`RolloutSpec::default`], which are conservative: one instance at a time,
/// an 80% floor, no failures allowed, no automatic rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSpec {
    pub service: String,
    /// Kubernetes-style label selector; empty matches every instance of the service.
    pub selector: String,
    pub target: Release,
    /// Batch sizes; the last one repeats.
    #[serde(with = "batches_serde")]
    pub batches: Vec<Amount>,
    /// How many instances drover works on at once (its own chains in flight),
    /// on top of the floor. Rounds down, at least 1.
    pub max_unavailable: Option<Amount>,
    /// The floor capacity is never pushed under by drover. Rounds up.
    pub min_healthy: Amount,
    #[serde(with = "humantime_serde")]
    pub min_healthy_time: Duration,
    #[serde(with = "humantime_serde")]
    pub healthy_deadline: Duration,
    /// The rollout fails when nothing progressed for this long.
    #[serde(with = "humantime_serde")]
    pub progress_deadline: Duration,
    /// Failed instances tolerated before the rollout stops. Rounds down.
    pub max_failures: Amount,
    /// Instances on lost hosts tolerated (counted apart from failures). Rounds down.
    pub max_unreachable: Amount,
    pub auto_rollback: bool,
    pub spread_by: Option<Spread>,
    pub lost_hosts: LostHostPolicy,
    /// Timeout of every command; Verify gets `healthy_deadline` on top.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// How traffic moves; rolling by default.
    pub strategy: Strategy,
    /// Canary and blue-green: the shares of traffic the new release gets,
    /// step by step, ending at 100%. Empty: the strategy's default.
    #[serde(with = "steps_serde", skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Share>,
    /// Canary and blue-green: how long each step is watched before the
    /// next. `None`: the strategy's default.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub bake: Option<Duration>,
    /// Blue-green: how long the old color stays up, drained, for an
    /// instant rollback. `None`: 60 minutes.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_old: Option<Duration>,
    /// Blue-green: a hook from the coordinator's config run against the
    /// idle color before any traffic moves; its exit code decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_traffic_hook: Option<String>,
    /// Canary and blue-green: how each step is judged.
    pub analysis: AnalysisSpec,
}

impl Default for RolloutSpec {
    fn default() -> RolloutSpec {
        RolloutSpec {
            service: String::new(),
            selector: String::new(),
            target: Release::default(),
            batches: vec![Amount::Count(1)],
            max_unavailable: None,
            min_healthy: Amount::Percent(80),
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(5 * 60),
            progress_deadline: Duration::from_secs(10 * 60),
            max_failures: Amount::Count(0),
            max_unreachable: Amount::Count(0),
            auto_rollback: false,
            spread_by: None,
            lost_hosts: LostHostPolicy::Wait,
            step_timeout: Duration::from_secs(2 * 60),
            strategy: Strategy::Rolling,
            steps: Vec::new(),
            bake: None,
            keep_old: None,
            pre_traffic_hook: None,
            analysis: AnalysisSpec::default(),
        }
    }
}

/// A spec that cannot be read or does not make sense. Terminal: the operator
/// has to change the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("rollout spec: {0}")]
    Parse(String),
    #[error("{field}: expected {expected}, got {got}")]
    Invalid {
        field: String,
        expected: String,
        got: String,
    },
}

impl SpecError {
    pub fn invalid(field: &str, expected: &str, got: impl fmt::Display) -> SpecError {
        SpecError::Invalid {
            field: field.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::Parse(_) => None,
            SpecError::Invalid { field, .. } => Some(field),
        }
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The rule for an amount that may be zero (`min_healthy`, `max_failures`,
/// `max_unreachable`): a count, or a percentage up to 100%. `Err` holds what
/// was expected, for the caller to word with the field or flag it came from.
pub fn share_rule(a: Amount) -> Result<(), &'static str> {
    match a {
        Amount::Percent(p) if p > 100 => Err("a percentage from 0% to 100%"),
        _ => Ok(()),
    }
}

/// The rule for an amount that must let something happen (batch sizes,
/// `max_unavailable`): at least 1 instance or 1%, at most 100%.
pub fn positive_rule(a: Amount) -> Result<(), &'static str> {
    if a.is_zero() {
        return Err("at least 1 instance or 1%");
    }
    share_rule(a)
}

fn check_percent(field: &str, a: Amount) -> Result<(), SpecError> {
    share_rule(a).map_err(|expected| SpecError::invalid(field, expected, format!("\"{a}\"")))
}

fn check_positive(field: &str, a: Amount) -> Result<(), SpecError> {
    positive_rule(a).map_err(|expected| SpecError::invalid(field, expected, format!("\"{a}\"")))
}

/// Whether [`RolloutSpec::check`] accepts an empty `target.digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestRule {
    /// Empty means "the artifact pushed as this service and version": the
    /// CLI sends it so and the coordinator fills it in from its artifact
    /// store. A digest that is given must still be well formed.
    MayBeEmpty,
    /// What the engine runs: a sha256 digest is required.
    Required,
}

impl Spread {
    /// The spread's own rules; the errors name `spread_by.label` or
    /// `spread_by.max_unavailable`.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.label.trim().is_empty() {
            return Err(SpecError::invalid(
                "spread_by.label",
                "a label key like zone",
                "nothing",
            ));
        }
        if self.max_unavailable == 0 {
            return Err(SpecError::invalid(
                "spread_by.max_unavailable",
                "at least 1, or nothing could ever be taken down",
                0,
            ));
        }
        Ok(())
    }
}

impl RolloutSpec {
    /// Reads a spec from TOML and validates it.
    pub fn from_toml(text: &str) -> Result<RolloutSpec, SpecError> {
        let spec: RolloutSpec =
            toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string().trim().to_string()))?;
        spec.check(DigestRule::Required)?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The longest a single command may be in flight.
    pub fn longest_command(&self) -> Duration {
        self.healthy_deadline.saturating_add(self.step_timeout)
    }

    /// The traffic steps this rollout takes: the spec's, or the
    /// strategy's default; empty for a rolling update.
    pub fn traffic_steps(&self) -> Vec<Share> {
        if self.steps.is_empty() {
            self.strategy.default_steps()
        } else {
            self.steps.clone()
        }
    }

    /// How long each traffic step is watched.
    pub fn bake_time(&self) -> Duration {
        self.bake.unwrap_or_else(|| self.strategy.default_bake())
    }

    /// Blue-green: how long the old color stays up after the switch.
    pub fn keep_old_time(&self) -> Duration {
        self.keep_old.unwrap_or(Duration::from_secs(60 * 60))
    }

    /// [`RolloutSpec::check`] with the digest required: what the engine
    /// accepts.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.check(DigestRule::Required)
    }

    /// The one validation of a spec: the CLI runs it for early, local errors
    /// (with [`DigestRule::MayBeEmpty`]) and the coordinator runs it again
    /// before and after it resolves the digest, authoritatively. Checks
    /// every field; the error names the field and what was expected.
    pub fn check(&self, digest: DigestRule) -> Result<(), SpecError> {
        if self.service.trim().is_empty() {
            return Err(SpecError::invalid("service", "a service name", "nothing"));
        }
        if let Err(e) = self.selector.parse::<Selector>() {
            return Err(SpecError::invalid(
                "selector",
                "a label selector like env=prod,zone in (a,b),!canary",
                e,
            ));
        }
        if self.target.version.trim().is_empty() {
            return Err(SpecError::invalid("target.version", "a version", "nothing"));
        }
        let d = &self.target.digest;
        let may_skip = digest == DigestRule::MayBeEmpty && d.is_empty();
        if !may_skip && d.len() != 64
            || !d
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(SpecError::invalid(
                "target.digest",
                "a sha256 digest of 64 lowercase hex digits",
                format!("{d:?}"),
            ));
        }
        if self.batches.is_empty() {
            return Err(SpecError::invalid(
                "batches",
                "a list of batch sizes like \"1,25%,100%\"",
                "an empty list",
            ));
        }
        for (i, b) in self.batches.iter().enumerate() {
            check_positive(&format!("batches[{i}]"), *b)?;
        }
        if let Some(m) = self.max_unavailable {
            check_positive("max_unavailable", m)?;
        }
        check_percent("min_healthy", self.min_healthy)?;
        check_percent("max_failures", self.max_failures)?;
        check_percent("max_unreachable", self.max_unreachable)?;
        if self.step_timeout.is_zero() {
            return Err(SpecError::invalid(
                "step_timeout",
                "a positive duration",
                "0s",
            ));
        }
        if self.healthy_deadline.is_zero() {
            return Err(SpecError::invalid(
                "healthy_deadline",
                "a positive duration",
                "0s",
            ));
        }
        if self.min_healthy_time > self.healthy_deadline {
            return Err(SpecError::invalid(
                "min_healthy_time",
                &format!(
                    "at most healthy_deadline ({}), or no instance could pass",
                    show(self.healthy_deadline)
                ),
                show(self.min_healthy_time),
            ));
        }
        if self.progress_deadline <= self.longest_command() {
            return Err(SpecError::invalid(
                "progress_deadline",
                &format!(
                    "more than healthy_deadline + step_timeout ({}), the longest a single step may take",
                    show(self.longest_command())
                ),
                show(self.progress_deadline),
            ));
        }
        if let Some(s) = &self.spread_by {
            s.check()?;
        }
        self.check_strategy()
    }

    /// The strategy's own rules: traffic fields only where traffic moves,
    /// steps that grow to 100%, an analysis that can finish.
    fn check_strategy(&self) -> Result<(), SpecError> {
        let strategy = self.strategy;
        if !strategy.shifts_traffic() {
            let given = [
                ("steps", !self.steps.is_empty()),
                ("bake", self.bake.is_some()),
                ("keep_old", self.keep_old.is_some()),
                ("pre_traffic_hook", self.pre_traffic_hook.is_some()),
            ];
            if let Some((field, _)) = given.into_iter().find(|(_, g)| *g) {
                return Err(SpecError::invalid(
                    field,
                    "nothing for a rolling update (set strategy = canary or blue-green)",
                    "a value",
                ));
            }
            if self.analysis != AnalysisSpec::default() {
                return Err(SpecError::invalid(
                    "analysis",
                    "nothing for a rolling update: only canary and blue-green steps are judged \
                     (set strategy = canary or blue-green)",
                    "analysis settings",
                ));
            }
            return Ok(());
        }
        if self.batches != [Amount::Count(1)] {
            return Err(SpecError::invalid(
                "batches",
                &format!(
                    "the default for {strategy}: its steps decide how many instances move \
                     (limit instances in flight with max_unavailable)"
                ),
                format!(
                    "\"{}\"",
                    (self.batches.iter().map(Amount::to_string))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ));
        }
        let steps = self.traffic_steps();
        let mut last: Option<Share> = None;
        for (n, s) in steps.iter().enumerate() {
            if last.is_some_and(|l| *s <= l) {
                return Err(SpecError::invalid(
                    &format!("steps[{n}]"),
                    "shares that grow step by step",
                    s,
                ));
            }
            last = Some(*s);
        }
        if !last.is_some_and(Share::is_full) {
            return Err(SpecError::invalid(
                "steps",
                "a last step of 100%, where every instance is on the new release",
                last.map_or("nothing".to_string(), |s| s.to_string()),
            ));
        }
        let bake = self.bake_time();
        if bake < self.analysis.interval {
            return Err(SpecError::invalid(
                "bake",
                &format!(
                    "at least one analysis interval ({})",
                    show(self.analysis.interval)
                ),
                show(bake),
            ));
        }
        if strategy != Strategy::BlueGreen {
            if self.keep_old.is_some() {
                return Err(SpecError::invalid(
                    "keep_old",
                    "nothing unless strategy = blue-green",
                    "a value",
                ));
            }
            if self.pre_traffic_hook.is_some() {
                return Err(SpecError::invalid(
                    "pre_traffic_hook",
                    "nothing unless strategy = blue-green",
                    "a value",
                ));
            }
        }
        if let Some(h) = &self.pre_traffic_hook
            && (h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(SpecError::invalid(
                "pre_traffic_hook",
                "the name of a hook in the coordinator's config (letters, digits, - and _)",
                format!("{h:?}"),
            ));
        }
        self.analysis.check(bake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(digest: &str) -> RolloutSpec {
        RolloutSpec {
            service: "web".into(),
            target: Release::new("v2", digest),
            ..RolloutSpec::default()
        }
    }

    #[test]
    fn an_empty_digest_waits_for_the_coordinator_but_a_bad_one_never_passes() {
        let empty = spec("");
        assert_eq!(empty.check(DigestRule::MayBeEmpty), Ok(()));
        let e = empty.validate().expect_err("the engine needs a digest");
        assert_eq!(e.field(), Some("target.digest"));

        let bad = spec("ABC");
        for rule in [DigestRule::MayBeEmpty, DigestRule::Required] {
            let e = bad.check(rule).expect_err("malformed digest");
            assert_eq!(e.field(), Some("target.digest"), "{rule:?}");
        }
        assert_eq!(spec(&"ab".repeat(32)).validate(), Ok(()));

        // Every other rule applies whatever the digest rule.
        let no_batches = RolloutSpec {
            batches: vec![Amount::Count(0)],
            ..spec("")
        };
        let e = no_batches
            .check(DigestRule::MayBeEmpty)
            .expect_err("zero batch");
        assert_eq!(
            e.to_string(),
            "batches[0]: expected at least 1 instance or 1%, got \"0\""
        );
    }

    #[test]
    fn strategies_read_from_toml_with_their_defaults_and_rules() {
        let digest = "ab".repeat(32);
        let text = format!(
            "service = \"web\"\ntarget = {{ version = \"v2\", digest = \"{digest}\" }}\n\
             strategy = \"canary\"\nsteps = \"5%,50%,100%\"\nbake = \"2m\"\n\
             [analysis]\nmin_difference = \"0.2%\"\non_inconclusive = \"fail\"\n"
        );
        let canary = RolloutSpec::from_toml(&text).expect("canary spec");
        assert_eq!(canary.strategy, Strategy::Canary);
        assert_eq!(canary.traffic_steps().len(), 3);
        assert_eq!(canary.bake_time(), Duration::from_secs(120));
        assert_eq!(canary.analysis.min_difference.get(), 0.002);
        // It survives its own TOML (the coordinator stores and shows it so).
        assert_eq!(
            RolloutSpec::from_toml(&canary.to_toml()),
            Ok(canary.clone())
        );

        let blue_green = RolloutSpec {
            strategy: Strategy::BlueGreen,
            ..spec(&digest)
        };
        assert_eq!(
            blue_green.traffic_steps(),
            Strategy::BlueGreen.default_steps()
        );
        assert_eq!(blue_green.validate(), Ok(()));

        let refused = [
            (
                RolloutSpec {
                    bake: Some(Duration::from_secs(60)),
                    ..spec(&digest)
                },
                "bake",
            ),
            (
                RolloutSpec {
                    steps: crate::strategy::parse_steps("5%,50%").expect("steps"),
                    ..canary.clone()
                },
                "steps",
            ),
            (
                RolloutSpec {
                    steps: crate::strategy::parse_steps("50%,5%,100%").expect("steps"),
                    ..canary.clone()
                },
                "steps[1]",
            ),
            (
                RolloutSpec {
                    batches: vec![Amount::Percent(25)],
                    ..canary.clone()
                },
                "batches",
            ),
            (
                RolloutSpec {
                    keep_old: Some(Duration::from_secs(60)),
                    ..canary.clone()
                },
                "keep_old",
            ),
            (
                RolloutSpec {
                    bake: Some(Duration::from_secs(1)),
                    ..canary.clone()
                },
                "bake",
            ),
            (
                RolloutSpec {
                    pre_traffic_hook: Some("rm -rf /".into()),
                    ..blue_green.clone()
                },
                "pre_traffic_hook",
            ),
        ];
        for (bad, field) in refused {
            let e = bad.validate().expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }

    #[test]
    fn flag_rules_are_the_spec_rules() {
        assert_eq!(share_rule(Amount::Percent(100)), Ok(()));
        assert_eq!(share_rule(Amount::Count(0)), Ok(()));
        assert!(share_rule(Amount::Percent(101)).is_err());
        assert!(positive_rule(Amount::Percent(0)).is_err());
        assert!(positive_rule(Amount::Percent(101)).is_err());
        assert_eq!(positive_rule(Amount::Count(1)), Ok(()));
        let spread = Spread {
            label: "zone".into(),
            max_unavailable: 0,
        };
        assert_eq!(
            spread.check().expect_err("K = 0").field(),
            Some("spread_by.max_unavailable")
        );
    }
}
