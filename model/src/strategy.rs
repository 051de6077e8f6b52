//! How a rollout moves traffic: rolling (instances only), canary (a few
//! instances on the new release get a growing share of traffic through the
//! load balancer's weights, judged against the rest at every step) or
//! blue-green (the idle color is deployed everywhere, then traffic shifts to
//! it in steps). The spec's strategy fields and the analysis thresholds live
//! here; their rules are part of [`RolloutSpec::check`](crate::RolloutSpec::check).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::spec::SpecError;

/// How a rollout moves traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Batches of instances, drained and updated in place; the load
    /// balancer's weights are not touched.
    #[default]
    Rolling,
    /// The fewest instances that can carry each step's share are updated,
    /// weighted to that share and judged against the old release.
    Canary,
    /// Two colors per host: the idle one is deployed everywhere, then
    /// traffic shifts to it step by step; the old color stays up for
    /// `keep_old`.
    BlueGreen,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
        }
    }

    /// Whether it shifts traffic by weights and judges each step.
    pub fn shifts_traffic(self) -> bool {
        !matches!(self, Strategy::Rolling)
    }

    /// The traffic steps the deployment procedures recommend.
    pub fn default_steps(self) -> Vec<Share> {
        let pct: &[u32] = match self {
            Strategy::Rolling => &[],
            Strategy::Canary => &[5, 25, 50, 100],
            Strategy::BlueGreen => &[10, 25, 50, 100],
        };
        pct.iter().map(|&p| Share::percent(p)).collect()
    }

    /// How long each step is watched: 30 minutes for a canary (the
    /// procedures' bake), 5 minutes per blue-green step.
    pub fn default_bake(self) -> Duration {
        match self {
            Strategy::Rolling => Duration::ZERO,
            Strategy::Canary => Duration::from_secs(30 * 60),
            Strategy::BlueGreen => Duration::from_secs(5 * 60),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Strategy, SpecError> {
        match s {
            "rolling" => Ok(Strategy::Rolling),
            "canary" => Ok(Strategy::Canary),
            "blue-green" | "bluegreen" | "blue_green" => Ok(Strategy::BlueGreen),
            _ => Err(SpecError::invalid(
                "strategy",
                "rolling, canary or blue-green",
                format!("{s:?}"),
            )),
        }
    }
}

/// Blue-green: which of an instance pair an instance is (`color` in
/// agent.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// The other one of the pair.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// `blue` or `green`; anything else (an agent without colors says "")
    /// is none.
    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A share of traffic, in hundredths of a percent (`5%` is 500, `0.5%` is
/// 50), from 0.01% to 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u32);

impl Share {
    pub const FULL: Share = Share(10_000);

    pub fn percent(p: u32) -> Share {
        Share(p.saturating_mul(100))
    }

    /// Hundredths of a percent.
    pub fn basis_points(self) -> u32 {
        self.0
    }

    pub fn from_basis_points(bp: u32) -> Share {
        Share(bp)
    }

    /// As a fraction of 1.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    pub fn is_full(self) -> bool {
        self.0 >= 10_000
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            n if n % 10 == 0 => write!(f, "{whole}.{}%", n / 10),
            n => write!(f, "{whole}.{n:02}%"),
        }
    }
}

/// The text was not a share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a share of traffic like 5% or 0.5% (above 0%, at most 100%), got {0:?}")]
pub struct ShareError(pub String);

impl FromStr for Share {
    type Err = ShareError;

    /// `5%`, `0.5%`, `100%`; the `%` is required so that `5` is never read
    /// as five instances.
    fn from_str(s: &str) -> Result<Share, ShareError> {
        let bad = || ShareError(s.to_string());
        let num = s.trim().strip_suffix('%').ok_or_else(bad)?.trim();
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<2}").parse().map_err(|_| bad())?
        };
        let bp = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        if bp == 0 || bp > 10_000 {
            return Err(bad());
        }
        Ok(Share(bp))
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Share, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `"5%,25%,50%,100%"` as a list of shares.
pub fn parse_steps(s: &str) -> Result<Vec<Share>, ShareError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Steps written as a list (`["5%", "25%"]`) or one string (`"5%,25%"`).
pub mod steps_serde {
    use super::*;

    pub fn serialize<S: Serializer>(steps: &[Share], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(steps)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Share>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Share>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("traffic steps like \"5%,25%,50%,100%\" or [\"5%\", \"25%\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Share>, E> {
                parse_steps(v).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Share>, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Share>()? {
                    out.push(s);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// A number from the spec that is not a count (a ratio, a probability, a
/// rate). Never NaN or infinite, so it compares and hashes like a number.
#[derive(Debug, Clone, Copy, PartialOrd)]
pub struct Num(f64);

impl Num {
    pub fn new(v: f64) -> Option<Num> {
        v.is_finite().then_some(Num(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl PartialEq for Num {
    fn eq(&self, other: &Num) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Num {}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Num {
    /// A number, or a percentage string (`"0.1%"` is 0.001).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number like 1.5, or a percentage like \"0.1%\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Num::new(v).ok_or_else(|| E::custom(format!("{v} is not a finite number")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
                parse_num(v).ok_or_else(|| {
                    E::custom(format!("expected a number or a percentage, got {v:?}"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `1.5`, `0.001` or `0.1%` (a hundredth of the number).
pub fn parse_num(s: &str) -> Option<Num> {
    let s = s.trim();
    let (text, scale) = match s.strip_suffix('%') {
        Some(p) => (p.trim(), 0.01),
        None => (s, 1.0),
    };
    Num::new(text.parse::<f64>().ok()? * scale)
}

/// What an analysis that could not decide does at the end of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInconclusive {
    /// Hold the step, paused, for a human to promote, resume (look again)
    /// or roll back. Never a pass by default.
    #[default]
    Pause,
    /// Roll back as for a failed analysis.
    Fail,
    /// Go on as for a passed one (for services whose canary traffic is
    /// known to be sparse).
    Pass,
}

impl OnInconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInconclusive::Pause => "pause",
            OnInconclusive::Fail => "fail",
            OnInconclusive::Pass => "pass",
        }
    }
}

impl FromStr for OnInconclusive {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<OnInconclusive, SpecError> {
        match s {
            "pause" => Ok(OnInconclusive::Pause),
            "fail" => Ok(OnInconclusive::Fail),
            "pass" => Ok(OnInconclusive::Pass),
            _ => Err(SpecError::invalid(
                "analysis.on_inconclusive",
                "pause, fail or pass",
                format!("{s:?}"),
            )),
        }
    }
}

/// Where the analysis reads requests, errors and latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsSource {
    /// The instances' own metrics when every target instance reports them,
    /// HAProxy's per-server counters otherwise.
    #[default]
    Auto,
    /// HAProxy's per-server counters (no app instrumentation needed;
    /// latency is HAProxy's rtime average).
    Haproxy,
    /// The instances' own Prometheus `/metrics` (`[instance.metrics]` in
    /// agent.toml): requests by code and a latency histogram.
    Metrics,
}

impl MetricsSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsSource::Auto => "auto",
            MetricsSource::Haproxy => "haproxy",
            MetricsSource::Metrics => "metrics",
        }
    }
}

impl FromStr for MetricsSource {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<MetricsSource, SpecError> {
        match s {
            "auto" => Ok(MetricsSource::Auto),
            "haproxy" => Ok(MetricsSource::Haproxy),
            "metrics" => Ok(MetricsSource::Metrics),
            _ => Err(SpecError::invalid(
                "analysis.source",
                "auto, haproxy or metrics",
                format!("{s:?}"),
            )),
        }
    }
}

/// How each traffic step is judged: the canary (instances on the new
/// release) against the baseline (instances still on the old one) over the
/// same windows. Defaults follow REFERENCE.md's recommendations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisSpec {
    /// How often the arms are compared.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Counting starts this long after the step's weights are in place;
    /// `None`: 60 s, or a quarter of the bake when that is shorter.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub warmup: Option<Duration>,
    /// How long a step may look for enough traffic before it is
    /// inconclusive; `None`: 30 minutes, or the bake when that is longer.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_analysis: Option<Duration>,
    pub on_inconclusive: OnInconclusive,
    pub source: MetricsSource,
    /// The canary fails when its error rate is credibly above this many
    /// times the baseline's.
    pub error_ratio: Num,
    /// Per-look significance of the error test.
    pub alpha: Num,
    /// A canary with fewer errors than this never fails the error test.
    pub min_canary_errors: u64,
    /// Nor does one whose error rate exceeds the baseline's by less than
    /// this (a fraction; `"0.1%"` in TOML).
    pub min_difference: Num,
    /// The canary fails at once at this error rate ...
    pub guard_error_rate: Num,
    /// ... over at least this many requests, whatever the baseline does.
    pub guard_min_requests: u64,
    /// Fewer requests than this in either arm is not enough to pass.
    pub min_requests: u64,
    /// The canary fails when its latency is this many times the
    /// baseline's ...
    pub latency_ratio: Num,
    /// ... and at least this much slower ...
    #[serde(with = "humantime_serde")]
    pub latency_min_delta: Duration,
    /// ... in this many consecutive looks.
    pub latency_windows: u32,
}

impl Default for AnalysisSpec {
    fn default() -> AnalysisSpec {
        AnalysisSpec {
            interval: Duration::from_secs(10),
            warmup: None,
            max_analysis: None,
            on_inconclusive: OnInconclusive::Pause,
            source: MetricsSource::Auto,
            error_ratio: Num(2.0),
            alpha: Num(0.001),
            min_canary_errors: 5,
            min_difference: Num(0.001),
            guard_error_rate: Num(0.05),
            guard_min_requests: 200,
            min_requests: 500,
            latency_ratio: Num(1.5),
            latency_min_delta: Duration::from_millis(25),
            latency_windows: 3,
        }
    }
}

impl AnalysisSpec {
    /// The warm-up for a step baked for `bake`.
    pub fn warmup_for(&self, bake: Duration) -> Duration {
        self.warmup
            .unwrap_or_else(|| Duration::from_secs(60).min(bake / 4))
    }

    /// How long a step baked for `bake` may look for enough traffic.
    pub fn max_analysis_for(&self, bake: Duration) -> Duration {
        self.max_analysis
            .unwrap_or_else(|| Duration::from_secs(30 * 60).max(bake))
    }

    /// The analysis rules; errors name `analysis.<field>`.
    pub fn check(&self, bake: Duration) -> Result<(), SpecError> {
        let bad = |field: &str, expected: &str, got: String| {
            Err(SpecError::invalid(
                &format!("analysis.{field}"),
                expected,
                got,
            ))
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.interval < Duration::from_secs(1) {
            return bad("interval", "at least 1s", show(self.interval));
        }
        if self.warmup_for(bake) >= bake && !bake.is_zero() {
            return bad(
                "warmup",
                &format!("shorter than the bake ({})", show(bake)),
                show(self.warmup_for(bake)),
            );
        }
        if self.max_analysis_for(bake) < bake {
            return bad(
                "max_analysis",
                &format!("at least the bake ({})", show(bake)),
                show(self.max_analysis_for(bake)),
            );
        }
        if self.error_ratio.get() < 1.0 {
            return bad("error_ratio", "at least 1.0", self.error_ratio.to_string());
        }
        if !(self.alpha.get() > 0.0 && self.alpha.get() < 0.5) {
            return bad("alpha", "above 0 and below 0.5", self.alpha.to_string());
        }
        for (field, v) in [
            ("min_difference", self.min_difference),
            ("guard_error_rate", self.guard_error_rate),
        ] {
            if !(0.0..=1.0).contains(&v.get()) {
                return bad(field, "a rate from 0 to 1 (or 0% to 100%)", v.to_string());
            }
        }
        if self.guard_error_rate.get() == 0.0 {
            return bad(
                "guard_error_rate",
                "above 0, or every canary with one error fails",
                "0".to_string(),
            );
        }
        if self.latency_ratio.get() < 1.0 {
            return bad(
                "latency_ratio",
                "at least 1.0",
                self.latency_ratio.to_string(),
            );
        }
        if self.latency_windows == 0 {
            return bad("latency_windows", "at least 1", "0".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_and_print_as_written() {
        for (text, bp) in [
            ("5%", 500),
            ("0.5%", 50),
            ("100%", 10_000),
            ("12.25%", 1225),
        ] {
            let s: Share = text.parse().expect(text);
            assert_eq!(s.basis_points(), bp, "{text}");
            assert_eq!(s.to_string(), text);
        }
        for bad in ["5", "0%", "101%", "1.234%", "%", "-5%", "a%"] {
            assert!(bad.parse::<Share>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_steps("5%, 25%,50%,100%").expect("steps"),
            Strategy::Canary.default_steps()
        );
    }

    #[test]
    fn numbers_take_percentages_and_refuse_nonsense() {
        assert_eq!(parse_num("0.1%").map(Num::get), Some(0.001));
        assert_eq!(parse_num("1.5").map(Num::get), Some(1.5));
        assert_eq!(parse_num("NaN"), None);
        assert_eq!(parse_num("x"), None);
    }

    #[test]
    fn warmup_and_max_analysis_follow_a_short_bake() {
        let a = AnalysisSpec::default();
        assert_eq!(
            a.warmup_for(Duration::from_secs(40)),
            Duration::from_secs(10)
        );
        assert_eq!(
            a.warmup_for(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            a.max_analysis_for(Duration::from_secs(3600)),
            Duration::from_secs(3600)
        );
        assert_eq!(a.check(Duration::from_secs(20)), Ok(()));
        let late = AnalysisSpec {
            warmup: Some(Duration::from_secs(30)),
            ..AnalysisSpec::default()
        };
        let e = late
            .check(Duration::from_secs(20))
            .expect_err("warmup past the bake");
        assert_eq!(e.field(), Some("analysis.warmup"));
    }
}
