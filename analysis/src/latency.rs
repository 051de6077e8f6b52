//! "The canary's response time degraded by more than 50%": a ratio and an
//! absolute floor, sustained over consecutive windows.

use serde::{Deserialize, Serialize};

use crate::format;
use crate::{Histogram, Thresholds};

/// One arm's latency over the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Latency {
    /// Request-weighted mean of HAProxy's rtime over the servers that
    /// qualify (see `Thresholds::latency_min_responses` and
    /// `Latency::from_rtime`), in ms, and how many responses it stands for.
    Mean { ms: f64, responses: u64 },
    /// From the instances' own Prometheus histograms: merged per-bucket
    /// deltas over the window (bounds in seconds).
    Histogram(Histogram),
}

/// One server's HAProxy reading, for `Latency::from_rtime`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RtimeSample {
    /// `rtime` from `show stat`, in ms.
    pub rtime_ms: f64,
    /// Responses the server gave in this window (the weight).
    pub responses: u64,
    /// Responses it gave since it was deployed on its current release.
    /// A baseline server has served only the old release: pass
    /// `u64::MAX`.
    pub since_deploy: u64,
}

impl Latency {
    /// The request-weighted mean rtime of the servers of one arm, counting
    /// a server only once it has served `latency_min_responses` responses
    /// since it was deployed (before that its rtime still averages in the
    /// previous release's responses). `None` when no server qualifies or
    /// none served a response in the window.
    pub fn from_rtime(servers: &[RtimeSample], t: &Thresholds) -> Option<Latency> {
        let (mut weighted, mut responses) = (0.0_f64, 0_u64);
        for s in servers {
            if s.since_deploy < t.latency_min_responses
                || s.responses == 0
                || !s.rtime_ms.is_finite()
            {
                continue;
            }
            weighted += s.rtime_ms * s.responses as f64;
            responses = responses.saturating_add(s.responses);
        }
        (responses > 0).then(|| Latency::Mean {
            ms: weighted / responses as f64,
            responses,
        })
    }

    /// Whether every number in it is finite: JSON has no NaN or infinity
    /// (other than a bucket bound), so a judgement holding one could not
    /// be read back.
    pub(crate) fn is_finite(&self) -> bool {
        match self {
            Latency::Mean { ms, .. } => ms.is_finite(),
            Latency::Histogram(h) => h.sum.is_finite() && h.buckets.iter().all(|b| !b.le.is_nan()),
        }
    }

    /// The mean in ms, if this window has enough responses to judge.
    fn mean_ms(&self, min_samples: u64) -> Option<f64> {
        match self {
            Latency::Mean { ms, responses } => {
                (*responses >= min_samples.max(1) && ms.is_finite() && *ms >= 0.0).then_some(*ms)
            }
            Latency::Histogram(h) => {
                if h.count < min_samples.max(1) {
                    return None;
                }
                h.mean().map(|s| s * 1000.0)
            }
        }
    }

    /// p50 and p90 in ms, if this is a histogram with enough observations.
    fn quantiles_ms(&self, min_samples: u64) -> Option<(f64, f64)> {
        match self {
            Latency::Histogram(h) if h.count >= min_samples.max(1) => {
                let (p50, p90) = (h.quantile(0.5)? * 1000.0, h.quantile(0.9)? * 1000.0);
                (p50.is_finite() && p90.is_finite()).then_some((p50, p90))
            }
            _ => None,
        }
    }
}

/// The rule applied to one statistic (a mean, p50 or p90) in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileTest {
    /// 0.5 or 0.9.
    pub q: f64,
    pub canary_ms: f64,
    pub baseline_ms: f64,
    /// canary / baseline; `None` when the baseline is 0 ms.
    pub ratio: Option<f64>,
    pub delta_ms: f64,
    /// Over both the ratio and the floor in this window.
    pub over: bool,
    /// Consecutive windows over, this one included.
    pub consecutive_over: u32,
}

/// What the latency rule found, for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyFinding {
    /// No usable latency in at least one arm: nothing counted, nothing reset.
    NoData,
    /// The same look judged again (same or earlier `at_ms`): shown, not
    /// counted.
    Repeated,
    /// Within the ratio or the floor in this window.
    Within,
    /// Over in this window, not yet for enough consecutive windows.
    Over,
    /// Over for `latency_windows` consecutive windows: fail.
    Sustained,
}

/// The latency rule's numbers at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTest {
    /// The statistic that decides, in ms: the mean (HAProxy rtime, or a
    /// histogram's sum/count when only one arm has a histogram), or with
    /// histograms in both arms the quantile (p50 or p90) with the longer
    /// run of windows over, p90 on a tie.
    pub canary_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    /// canary / baseline; `None` without numbers or at a 0 ms baseline.
    pub ratio: Option<f64>,
    pub delta_ms: Option<f64>,
    /// The longest run of consecutive windows over (mean, p50 or p90).
    pub consecutive_over: u32,
    /// With histograms in both arms: the rule on p50 and p90.
    pub p50: Option<QuantileTest>,
    pub p90: Option<QuantileTest>,
    pub fails: bool,
    pub finding: LatencyFinding,
    pub why: String,
}

/// Consecutive windows over, per statistic: the part of the judge's state
/// the latency rule keeps between looks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Streaks {
    pub mean: u32,
    pub p50: u32,
    pub p90: u32,
}

fn over(canary: f64, baseline: f64, t: &Thresholds) -> bool {
    // No division: a 0 ms baseline is judged by the floor alone.
    canary >= t.latency_ratio * baseline && canary - baseline >= t.latency_min_delta_ms
}

fn stat(
    q: f64,
    canary: f64,
    baseline: f64,
    streak: &mut u32,
    count: bool,
    t: &Thresholds,
) -> QuantileTest {
    let is_over = over(canary, baseline, t);
    if count {
        *streak = if is_over { streak.saturating_add(1) } else { 0 };
    }
    QuantileTest {
        q,
        canary_ms: canary,
        baseline_ms: baseline,
        ratio: (baseline > 0.0).then(|| canary / baseline),
        delta_ms: canary - baseline,
        over: is_over,
        consecutive_over: *streak,
    }
}

fn describe(name: &str, s: &QuantileTest, t: &Thresholds) -> String {
    let ratio = s
        .ratio
        .map_or_else(|| "baseline 0 ms".to_string(), |r| format!("{r:.2}x"));
    format!(
        "{name} canary {} vs baseline {} ({ratio}, {:+.1} ms), {}/{} windows over",
        format::ms(s.canary_ms),
        format::ms(s.baseline_ms),
        s.delta_ms,
        s.consecutive_over,
        t.latency_windows
    )
}

/// Judge one window's latency, advancing the streaks when `count` (a new
/// look) is set.
pub(crate) fn judge(
    canary: Option<&Latency>,
    baseline: Option<&Latency>,
    streaks: &mut Streaks,
    count: bool,
    t: &Thresholds,
) -> LatencyTest {
    let longest = streaks.mean.max(streaks.p50).max(streaks.p90);
    let mut test = LatencyTest {
        canary_ms: None,
        baseline_ms: None,
        ratio: None,
        delta_ms: None,
        consecutive_over: longest,
        p50: None,
        p90: None,
        fails: longest >= t.latency_windows,
        finding: LatencyFinding::NoData,
        why: String::new(),
    };
    let min = t.latency_min_samples;
    let quantiles = canary
        .and_then(|c| c.quantiles_ms(min))
        .zip(baseline.and_then(|b| b.quantiles_ms(min)));
    let decided = if let Some(((c50, c90), (b50, b90))) = quantiles {
        let p50 = stat(0.5, c50, b50, &mut streaks.p50, count, t);
        let p90 = stat(0.9, c90, b90, &mut streaks.p90, count, t);
        let decider = if p50.consecutive_over > p90.consecutive_over {
            p50.clone()
        } else {
            p90.clone()
        };
        test.why = format!("{}; {}", describe("p50", &p50, t), describe("p90", &p90, t));
        test.p50 = Some(p50);
        test.p90 = Some(p90);
        Some(decider)
    } else if let Some((c, b)) = canary
        .and_then(|c| c.mean_ms(min))
        .zip(baseline.and_then(|b| b.mean_ms(min)))
    {
        let mean = stat(0.5, c, b, &mut streaks.mean, count, t);
        test.why = describe("mean", &mean, t);
        Some(mean)
    } else {
        None
    };
    let longest = streaks.mean.max(streaks.p50).max(streaks.p90);
    test.consecutive_over = longest;
    test.fails = longest >= t.latency_windows;
    match decided {
        None => {
            let missing = match (
                canary.and_then(|c| c.mean_ms(min)),
                baseline.and_then(|b| b.mean_ms(min)),
            ) {
                (None, None) => "either arm",
                (None, Some(_)) => "the canary",
                _ => "the baseline",
            };
            test.why = format!(
                "no usable latency in {missing} (none, or under {} responses): nothing counted, {longest}/{} windows over",
                t.latency_min_samples, t.latency_windows
            );
        }
        Some(s) => {
            test.canary_ms = Some(s.canary_ms);
            test.baseline_ms = Some(s.baseline_ms);
            test.ratio = s.ratio;
            test.delta_ms = Some(s.delta_ms);
            test.finding = if !count {
                LatencyFinding::Repeated
            } else if test.fails {
                LatencyFinding::Sustained
            } else if test.p50.as_ref().is_some_and(|q| q.over)
                || test.p90.as_ref().is_some_and(|q| q.over)
                || (test.p50.is_none() && s.over)
            {
                LatencyFinding::Over
            } else {
                LatencyFinding::Within
            };
            if !count {
                test.why
                    .push_str(" (a look already judged: not counted again)");
            }
        }
    }
    if test.fails {
        test.why.push_str(": fail");
    }
    test
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bucket;

    fn mean(ms: f64) -> Latency {
        Latency::Mean {
            ms,
            responses: 1_000,
        }
    }

    fn run(pairs: &[(Option<Latency>, Option<Latency>)]) -> (LatencyTest, Streaks) {
        let t = Thresholds::default();
        let mut streaks = Streaks::default();
        let mut last = None;
        for (c, b) in pairs {
            last = Some(judge(c.as_ref(), b.as_ref(), &mut streaks, true, &t));
        }
        (last.expect("at least one window"), streaks)
    }

    #[test]
    fn three_consecutive_windows_over_fail() {
        let over = (Some(mean(130.0)), Some(mean(80.0)));
        let (test, _) = run(&[over.clone(), over.clone()]);
        assert_eq!(test.finding, LatencyFinding::Over);
        assert!(!test.fails);
        assert_eq!(test.consecutive_over, 2);
        let (test, _) = run(&[over.clone(), over.clone(), over.clone()]);
        assert!(test.fails, "{test:?}");
        assert_eq!(test.finding, LatencyFinding::Sustained);
        assert_eq!(test.ratio, Some(130.0 / 80.0));
        assert!(test.why.ends_with(": fail"), "{}", test.why);
    }

    #[test]
    fn a_window_within_resets_the_run() {
        let over = (Some(mean(130.0)), Some(mean(80.0)));
        let within = (Some(mean(90.0)), Some(mean(80.0)));
        let (test, _) = run(&[
            over.clone(),
            over.clone(),
            within,
            over.clone(),
            over.clone(),
        ]);
        assert!(!test.fails);
        assert_eq!(test.consecutive_over, 2);
    }

    #[test]
    fn both_the_ratio_and_the_floor_are_needed() {
        // 2x but only +10 ms: +10 ms canary is not a regression.
        let small = (Some(mean(20.0)), Some(mean(10.0)));
        let (test, _) = run(&[small.clone(), small.clone(), small.clone()]);
        assert!(!test.fails, "{test:?}");
        // +40 ms but only 1.2x.
        let slow_base = (Some(mean(240.0)), Some(mean(200.0)));
        let (test, _) = run(&[slow_base.clone(), slow_base.clone(), slow_base.clone()]);
        assert!(!test.fails, "{test:?}");
        // A 0 ms baseline: no division, the floor decides.
        let zero = (Some(mean(30.0)), Some(mean(0.0)));
        let (test, _) = run(&[zero.clone(), zero.clone(), zero.clone()]);
        assert!(test.fails, "{test:?}");
        assert_eq!(test.ratio, None);
    }

    #[test]
    fn a_window_without_latency_counts_nothing_and_resets_nothing() {
        let over = (Some(mean(130.0)), Some(mean(80.0)));
        let (test, streaks) = run(&[over.clone(), over.clone(), (None, Some(mean(80.0)))]);
        assert_eq!(test.finding, LatencyFinding::NoData);
        assert!(test.why.contains("the canary"), "{}", test.why);
        assert_eq!(streaks.mean, 2);
        // Too few responses is the same as none.
        let thin = (
            Some(Latency::Mean {
                ms: 500.0,
                responses: 3,
            }),
            Some(mean(80.0)),
        );
        let (test, _) = run(&[over.clone(), over.clone(), thin, over.clone()]);
        assert!(test.fails, "the run of 2 continued to 3: {test:?}");
    }

    fn latency_hist(buckets_ms: &[(f64, u64)]) -> Latency {
        let buckets: Vec<Bucket> = buckets_ms
            .iter()
            .map(|&(le, count)| Bucket {
                le: le / 1000.0,
                count,
            })
            .collect();
        let count = buckets.last().map_or(0, |b| b.count);
        Latency::Histogram(Histogram {
            buckets,
            sum: 0.05 * count as f64,
            count,
        })
    }

    #[test]
    fn with_histograms_p90_alone_can_fail() {
        const INF: f64 = f64::INFINITY;
        // Same median, canary's tail much slower.
        let base = latency_hist(&[
            (25.0, 50),
            (50.0, 90),
            (100.0, 100),
            (250.0, 100),
            (INF, 100),
        ]);
        let canary = latency_hist(&[
            (25.0, 50),
            (50.0, 60),
            (100.0, 70),
            (250.0, 100),
            (INF, 100),
        ]);
        let w = (Some(canary), Some(base));
        let (test, streaks) = run(&[w.clone(), w.clone(), w.clone()]);
        let p50 = test.p50.clone().expect("p50");
        let p90 = test.p90.clone().expect("p90");
        assert!(!p50.over, "{p50:?}");
        assert!(p90.over, "{p90:?}");
        // base p90: rank 90 reached at 50 ms; canary: rank 90 in (100, 250] at 20/30
        assert!((p90.baseline_ms - 50.0).abs() < 1e-9, "{p90:?}");
        assert!((p90.canary_ms - 200.0).abs() < 1e-9, "{p90:?}");
        assert!(test.fails);
        assert_eq!(streaks.p90, 3);
        assert_eq!(streaks.p50, 0);
        assert_eq!(
            test.canary_ms,
            Some(p90.canary_ms),
            "the deciding quantile is shown"
        );
    }

    #[test]
    fn rtime_counts_only_servers_past_the_warm_up() {
        let t = Thresholds::default();
        let servers = [
            RtimeSample {
                rtime_ms: 100.0,
                responses: 300,
                since_deploy: 2_000,
            },
            RtimeSample {
                rtime_ms: 200.0,
                responses: 100,
                since_deploy: 1_536,
            },
            // Still averaging in the old release's responses.
            RtimeSample {
                rtime_ms: 10.0,
                responses: 500,
                since_deploy: 900,
            },
        ];
        assert_eq!(
            Latency::from_rtime(&servers, &t),
            Some(Latency::Mean {
                ms: 125.0,
                responses: 400
            })
        );
        assert_eq!(Latency::from_rtime(&servers[2..], &t), None);
        assert_eq!(Latency::from_rtime(&[], &t), None);
    }
}
