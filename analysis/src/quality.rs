//! A seeded simulation of canary request streams, to measure how often the
//! judge rolls back a good canary and how many canary requests it needs to
//! catch a bad one, next to a fixed-threshold rule like Flagger's on the
//! very same streams. `examples/judge_quality.rs` prints the figures in
//! BENCHMARKS.md; `tests/quality.rs` guards the rule against regressions.
//!
//! The model: a constant request rate split between the arms by share
//! (as HAProxy weights split it), each request an error with its arm's
//! probability, independently (Bernoulli; simulated by drawing the
//! geometric gaps between errors, which is the same process). The judge
//! looks every `look_every_s` at cumulative counts, as the coordinator
//! does; the fixed rule checks the canary alone every `window_s`.

use crate::{Analysis, Arm, Look, Thresholds, Verdict};

/// xoshiro256++ seeded through splitmix64: small, fast, and the same
/// stream on every machine for a given seed.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// An endless stream of requests, each an error with probability `p`.
#[derive(Debug, Clone)]
struct ErrorStream {
    p: f64,
    /// Successful requests before the next error.
    gap: u64,
}

impl ErrorStream {
    fn new(p: f64, rng: &mut Rng) -> ErrorStream {
        let mut s = ErrorStream { p, gap: 0 };
        s.gap = s.draw_gap(rng);
        s
    }

    fn draw_gap(&self, rng: &mut Rng) -> u64 {
        if self.p <= 0.0 {
            return u64::MAX;
        }
        if self.p >= 1.0 {
            return 0;
        }
        // Geometric on {0, 1, ...}: floor(ln U / ln(1 - p)).
        let g = (rng.unit().ln() / (-self.p).ln_1p()).floor();
        if g >= u64::MAX as f64 {
            u64::MAX
        } else {
            g as u64
        }
    }

    /// Errors among the next `n` requests.
    fn take(&mut self, n: u64, rng: &mut Rng) -> u64 {
        let mut left = n;
        let mut errors = 0;
        while self.gap < left {
            errors += 1;
            left -= self.gap + 1;
            self.gap = self.draw_gap(rng);
        }
        self.gap -= left;
        errors
    }
}

/// One analysis to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests per second over both arms.
    pub requests_per_s: f64,
    /// The canary's share of them (0.1 = 10%).
    pub canary_share: f64,
    pub canary_error_rate: f64,
    pub baseline_error_rate: f64,
    /// The judge looks this often (10 s).
    pub look_every_s: u32,
    /// The step's bake (1,800 s): the judge's `finish` at its end.
    pub bake_s: u32,
}

impl Scenario {
    /// 100 requests/s, looks every 10 s, a 30 min bake.
    pub fn new(canary_share: f64, canary_error_rate: f64, baseline_error_rate: f64) -> Scenario {
        Scenario {
            requests_per_s: 100.0,
            canary_share,
            canary_error_rate,
            baseline_error_rate,
            look_every_s: 10,
            bake_s: 1_800,
        }
    }
}

/// A rule like Flagger's builtin `request-success-rate` check: the
/// canary's success rate over each `window_s` (its `interval`, 60 s) must
/// be at least `min_success_rate` (99%); a window without requests fails
/// too ("no values found"); `threshold` failed checks (5, counted over the
/// whole analysis as Flagger counts them) roll back. No baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedRule {
    pub window_s: u32,
    pub min_success_rate: f64,
    pub threshold: u32,
}

impl Default for FixedRule {
    fn default() -> FixedRule {
        FixedRule {
            window_s: 60,
            min_success_rate: 0.99,
            threshold: 5,
        }
    }
}

/// How one rule ended one simulated analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Rolled back once the canary had served this many requests.
    Rollback {
        canary_requests: u64,
        by_guard: bool,
    },
    Pass,
    Inconclusive,
}

impl Decision {
    pub fn rolled_back(self) -> bool {
        matches!(self, Decision::Rollback { .. })
    }

    /// Canary requests served when it rolled back.
    pub fn caught_at(self) -> Option<u64> {
        match self {
            Decision::Rollback {
                canary_requests, ..
            } => Some(canary_requests),
            _ => None,
        }
    }
}

/// Both rules on the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub judge: Decision,
    pub fixed: Decision,
}

/// Simulate one analysis with `seed`: the judge with `thresholds` and the
/// fixed rule see the same requests.
pub fn simulate(s: &Scenario, thresholds: &Thresholds, fixed: &FixedRule, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut canary_errs = ErrorStream::new(s.canary_error_rate, &mut rng);
    let mut baseline_errs = ErrorStream::new(s.baseline_error_rate, &mut rng);
    let mut analysis = Analysis::new(thresholds.clone());
    let (mut canary, mut baseline) = (Arm::default(), Arm::default());
    let mut judge = None;
    let mut fixed_decision = None;
    let (mut window_requests, mut window_errors, mut window_start_s, mut failed_checks) =
        (0u64, 0u64, 0u32, 0u32);
    let look_every = s.look_every_s.max(1);
    let mut now_s = 0;
    while now_s < s.bake_s && (judge.is_none() || fixed_decision.is_none()) {
        now_s = (now_s + look_every).min(s.bake_s);
        // Deterministic split, as weights give: cumulative counts to date.
        let t = f64::from(now_s);
        let canary_total = (s.requests_per_s * s.canary_share * t).floor() as u64;
        let baseline_total = (s.requests_per_s * (1.0 - s.canary_share) * t).floor() as u64;
        let (n_c, n_b) = (
            canary_total - canary.attempts,
            baseline_total - baseline.attempts,
        );
        let e_c = canary_errs.take(n_c, &mut rng);
        canary.attempts += n_c;
        canary.errors += e_c;
        baseline.errors += baseline_errs.take(n_b, &mut rng);
        baseline.attempts += n_b;

        if judge.is_none() {
            let look = Look {
                at_ms: i64::from(now_s) * 1_000,
                canary: canary.clone(),
                baseline: baseline.clone(),
            };
            let j = if now_s >= s.bake_s {
                analysis.finish(&look)
            } else {
                analysis.look(&look)
            };
            judge = match j.verdict {
                Verdict::Fail => Some(Decision::Rollback {
                    canary_requests: canary.attempts,
                    by_guard: j.errors.guard_tripped,
                }),
                Verdict::Pass => Some(Decision::Pass),
                Verdict::Inconclusive => Some(Decision::Inconclusive),
                Verdict::Continue => None,
            };
        }

        if fixed_decision.is_none() {
            window_requests += n_c;
            window_errors += e_c;
            if now_s - window_start_s >= fixed.window_s || now_s >= s.bake_s {
                let failed = window_requests == 0
                    || window_errors as f64
                        > window_requests as f64 * (1.0 - fixed.min_success_rate) + 1e-9;
                if failed {
                    failed_checks += 1;
                }
                if failed_checks >= fixed.threshold {
                    fixed_decision = Some(Decision::Rollback {
                        canary_requests: canary.attempts,
                        by_guard: false,
                    });
                } else if now_s >= s.bake_s {
                    fixed_decision = Some(Decision::Pass);
                }
                (window_requests, window_errors, window_start_s) = (0, 0, now_s);
            }
        }
    }
    Outcome {
        judge: judge.unwrap_or(Decision::Inconclusive),
        fixed: fixed_decision.unwrap_or(Decision::Pass),
    }
}

/// The seed of the `i`th analysis of a run started with `seed`.
pub fn analysis_seed(seed: u64, i: u64) -> u64 {
    Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
}

/// Figures over many analyses of one scenario, for one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub analyses: u64,
    pub rolled_back: u64,
    /// Rollbacks the absolute guard made (the judge only).
    pub by_guard: u64,
    pub inconclusive: u64,
    /// Canary requests at each rollback, sorted.
    pub caught_at: Vec<u64>,
}

impl Summary {
    fn new() -> Summary {
        Summary {
            analyses: 0,
            rolled_back: 0,
            by_guard: 0,
            inconclusive: 0,
            caught_at: Vec::new(),
        }
    }

    fn add(&mut self, d: Decision) {
        self.analyses += 1;
        match d {
            Decision::Rollback {
                canary_requests,
                by_guard,
            } => {
                self.rolled_back += 1;
                self.by_guard += u64::from(by_guard);
                self.caught_at.push(canary_requests);
            }
            Decision::Inconclusive => self.inconclusive += 1,
            Decision::Pass => {}
        }
    }

    /// Share of analyses rolled back.
    pub fn rollback_rate(&self) -> f64 {
        self.rolled_back as f64 / self.analyses.max(1) as f64
    }

    /// Share of analyses rolled back with at most `n` canary requests.
    pub fn caught_within(&self, n: u64) -> f64 {
        self.caught_at.partition_point(|&c| c <= n) as f64 / self.analyses.max(1) as f64
    }

    /// The q-quantile (nearest rank) of canary requests to a rollback over
    /// all analyses, those never caught counting as infinite: `None` when
    /// it falls among them.
    pub fn requests_quantile(&self, q: f64) -> Option<u64> {
        if self.analyses == 0 {
            return None;
        }
        let rank = ((q * self.analyses as f64).ceil() as usize).max(1);
        self.caught_at.get(rank - 1).copied()
    }
}

/// Both rules' figures over `analyses` seeded analyses of a scenario.
pub fn run(
    s: &Scenario,
    thresholds: &Thresholds,
    fixed: &FixedRule,
    seed: u64,
    analyses: u64,
) -> (Summary, Summary) {
    let (mut judge, mut fixed_sum) = (Summary::new(), Summary::new());
    for i in 0..analyses {
        let o = simulate(s, thresholds, fixed, analysis_seed(seed, i));
        judge.add(o.judge);
        fixed_sum.add(o.fixed);
    }
    judge.caught_at.sort_unstable();
    fixed_sum.caught_at.sort_unstable();
    (judge, fixed_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_stream_is_bernoulli_at_its_rate() {
        let mut rng = Rng::new(7);
        let mut s = ErrorStream::new(0.02, &mut rng);
        let errors: u64 = (0..1_000).map(|_| s.take(1_000, &mut rng)).sum();
        // 20,000 expected, sd 140.
        assert!((19_400..=20_600).contains(&errors), "{errors}");
        let mut none = ErrorStream::new(0.0, &mut rng);
        assert_eq!(none.take(1_000_000, &mut rng), 0);
        let mut all = ErrorStream::new(1.0, &mut rng);
        assert_eq!(all.take(1_000, &mut rng), 1_000);
    }

    #[test]
    fn a_seed_replays_the_same_analysis() {
        let s = Scenario::new(0.1, 0.02, 0.005);
        let t = Thresholds::default();
        let f = FixedRule::default();
        assert_eq!(simulate(&s, &t, &f, 42), simulate(&s, &t, &f, 42));
    }

    #[test]
    fn the_fixed_rule_needs_threshold_failed_windows() {
        // Every canary request fails: the fixed rule rolls back at its 5th
        // window (300 s, 3,000 canary requests at 10 of 100 requests/s).
        let s = Scenario::new(0.1, 1.0, 0.0);
        let o = simulate(&s, &Thresholds::default(), &FixedRule::default(), 1);
        assert_eq!(o.fixed.caught_at(), Some(3_000));
        // The judge at its first look: 100 requests, all failed, under the
        // guard's 200 but far beyond twice the baseline's none.
        assert_eq!(
            o.judge,
            Decision::Rollback {
                canary_requests: 100,
                by_guard: false
            }
        );
    }

    #[test]
    fn summary_quantiles_count_the_uncaught_as_infinite() {
        let mut s = Summary::new();
        for d in [
            Decision::Rollback {
                canary_requests: 300,
                by_guard: false,
            },
            Decision::Rollback {
                canary_requests: 100,
                by_guard: true,
            },
            Decision::Pass,
            Decision::Inconclusive,
        ] {
            s.add(d);
        }
        s.caught_at.sort_unstable();
        assert_eq!(s.requests_quantile(0.5), Some(300));
        assert_eq!(s.requests_quantile(0.9), None);
        assert_eq!(s.caught_within(100), 0.25);
        assert_eq!(s.rollback_rate(), 0.5);
        assert_eq!((s.by_guard, s.inconclusive), (1, 1));
    }
}
