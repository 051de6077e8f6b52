//! Binomial tail probabilities, exact enough for p-values of 1e-300.
//!
//! The probability of one outcome is computed with Loader's saddle-point
//! form (C. Loader, "Fast and Accurate Computation of Binomial
//! Probabilities", 2000; what R's `dbinom` uses): it keeps full relative
//! precision for n up to 10^7 and beyond, where the textbook
//! `exp(lgamma(n+1) - lgamma(k+1) - ...)` loses most of its digits to
//! cancellation. The tail is then summed outward from that term with the
//! ratio of successive terms, in the direction in which terms shrink, and
//! stops once the rest is provably below 1e-17 of the sum.

/// ln(sqrt(2π)).
const LN_SQRT_2PI: f64 = 0.9189385332046728;

/// `stirlerr(n) = ln(n!) - ((n + 1/2) ln n - n + ln sqrt(2π))` for n = 1..=15
/// (computed at 40 digits), where the asymptotic series below is not yet
/// accurate.
const STIRLERR_SMALL: [f64; 15] = [
    0.08106146679532726,
    0.0413406959554093,
    0.02767792568499834,
    0.020790672103765093,
    0.016644691189821193,
    0.013876128823070748,
    0.01189670994589177,
    0.010411265261972096,
    0.009255462182712733,
    0.00833056343336287,
    0.007573675487951841,
    0.00694284010720953,
    0.006408994188004207,
    0.005951370112758848,
    0.005554733551962801,
];

/// The error of Stirling's formula for ln(n!), n >= 1 an integer.
fn stirlerr(n: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if n <= 15.0 {
        // n is a whole number in 1..=15 here.
        return STIRLERR_SMALL[(n as usize).saturating_sub(1).min(14)];
    }
    let nn = n * n;
    if n > 500.0 {
        (S0 - S1 / nn) / n
    } else if n > 80.0 {
        (S0 - (S1 - S2 / nn) / nn) / n
    } else if n > 35.0 {
        (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
    }
}

/// The deviance term `x ln(x/np) + np - x`, computed without cancellation
/// when x is close to np.
fn bd0(x: f64, np: f64) -> f64 {
    if (x - np).abs() < 0.1 * (x + np) {
        let mut v = (x - np) / (x + np);
        let mut s = (x - np) * v;
        let mut ej = 2.0 * x * v;
        v *= v;
        for j in 1..1000 {
            ej *= v;
            let s1 = s + ej / f64::from(2 * j + 1);
            if s1 == s {
                return s1;
            }
            s = s1;
        }
        return s;
    }
    x * (x / np).ln() + np - x
}

/// ln P(X = x) for X ~ Binomial(n, p), q = 1 - p, 0 < p < 1, x <= n.
fn ln_pmf(x: u64, n: u64, p: f64, q: f64) -> f64 {
    let (xf, nf) = (x as f64, n as f64);
    if x == 0 {
        return if p < 0.1 {
            -bd0(nf, nf * q) - nf * p
        } else {
            nf * q.ln()
        };
    }
    if x == n {
        return if q < 0.1 {
            -bd0(nf, nf * p) - nf * q
        } else {
            nf * p.ln()
        };
    }
    let rest = nf - xf;
    let lc = stirlerr(nf) - stirlerr(xf) - stirlerr(rest) - bd0(xf, nf * p) - bd0(rest, nf * q);
    // ln(2π x (n-x)/n) / 2
    let lf = 2.0 * LN_SQRT_2PI + xf.ln() + (-xf / nf).ln_1p();
    lc - 0.5 * lf
}

/// P(X >= k) for X ~ Binomial(n, p).
///
/// Exact to about 1e-13 relative for n up to 10^7 and tails far below
/// 1e-100 (it underflows to 0 only under about 1e-308). `p` outside
/// [0, 1] is clamped; a NaN `p` gives 1 (no evidence of anything).
pub fn binomial_upper_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p.is_nan() || p >= 1.0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    let q = 1.0 - p;
    let nf = n as f64;
    if (k as f64) > nf * p {
        // Terms shrink from k upward: sum P(X = j) for j >= k.
        let (sum, _) = sum_outward(n, k, p, q, Direction::Up);
        (ln_pmf(k, n, p, q) + sum.ln()).exp()
    } else {
        // Terms shrink from k-1 downward: 1 - P(X <= k-1).
        let (sum, _) = sum_outward(n, k - 1, p, q, Direction::Down);
        let lower = (ln_pmf(k - 1, n, p, q) + sum.ln()).exp();
        (1.0 - lower).clamp(0.0, 1.0)
    }
}

enum Direction {
    Up,
    Down,
}

/// Sum of P(X = j)/P(X = from) for j from `from` outward (including it),
/// in a direction in which the terms shrink; returns the sum and the
/// number of terms added.
fn sum_outward(n: u64, from: u64, p: f64, q: f64, dir: Direction) -> (f64, u64) {
    let odds = p / q;
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    let mut j = from;
    let mut terms = 1;
    loop {
        let ratio = match dir {
            Direction::Up => {
                if j >= n {
                    break;
                }
                // P(j+1)/P(j)
                (n - j) as f64 / (j + 1) as f64 * odds
            }
            Direction::Down => {
                if j == 0 {
                    break;
                }
                // P(j-1)/P(j)
                j as f64 / (n - j + 1) as f64 / odds
            }
        };
        term *= ratio;
        sum += term;
        terms += 1;
        j = match dir {
            Direction::Up => j + 1,
            Direction::Down => j - 1,
        };
        // The ratios only fall from here on, so what is left is at most
        // term * ratio / (1 - ratio).
        if term == 0.0 || (ratio < 1.0 && term * ratio / (1.0 - ratio) <= sum * 1e-17) {
            break;
        }
    }
    (sum, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        let err = ((got - want) / want).abs();
        assert!(
            err <= rel,
            "got {got:e}, want {want:e} (relative error {err:e} > {rel:e})"
        );
    }

    // Reference values computed with mpmath at 50 digits by summing the
    // exact binomial terms (see the comment of each case).

    #[test]
    fn small_cases_match_exact_sums() {
        // sum_{j>=3} C(10,j) 0.2^j 0.8^(10-j)
        close(binomial_upper_tail(10, 3, 0.2), 0.32220047360000004, 1e-13);
        // P(X >= 12), X ~ Bin(12, 2/3): (2/3)^12
        close(
            binomial_upper_tail(12, 12, 2.0 / 3.0),
            0.0077073466292589396,
            1e-13,
        );
        // below the mean: 1 - P(X <= 1), X ~ Bin(20, 0.5)
        close(binomial_upper_tail(20, 2, 0.5), 0.9999799728393555, 1e-15);
    }

    #[test]
    fn large_n_and_tiny_tails() {
        // X ~ Bin(10^7, 1e-6), P(X >= 30): mean 10, far tail.
        close(
            binomial_upper_tail(10_000_000, 30, 1e-6),
            2.5099024221281293e-07,
            1e-10,
        );
        // X ~ Bin(10^7, 0.5), P(X >= 5,010,000): 6.3 sigma above the mean.
        close(
            binomial_upper_tail(10_000_000, 5_010_000, 0.5),
            1.2724002455775864e-10,
            1e-9,
        );
        // X ~ Bin(1000, 0.01), P(X >= 100): about 1e-64.
        close(
            binomial_upper_tail(1000, 100, 0.01),
            8.274776878913917e-65,
            1e-9,
        );
    }

    #[test]
    fn at_the_mean_of_a_huge_n() {
        // P(X >= n/2), X ~ Bin(10^7, 1/2) = 1/2 + P(X = n/2)/2, at 40 digits.
        close(
            binomial_upper_tail(10_000_000, 5_000_000, 0.5),
            0.500_126_156_622_947_1,
            1e-12,
        );
    }

    #[test]
    fn edges() {
        assert_eq!(binomial_upper_tail(10, 0, 0.3), 1.0);
        assert_eq!(binomial_upper_tail(10, 11, 0.3), 0.0);
        assert_eq!(binomial_upper_tail(10, 1, 0.0), 0.0);
        assert_eq!(binomial_upper_tail(10, 10, 1.0), 1.0);
        assert_eq!(binomial_upper_tail(0, 0, 0.5), 1.0);
        assert_eq!(binomial_upper_tail(10, 3, f64::NAN), 1.0);
        let t = binomial_upper_tail(10_000_000, 1, 1e-9);
        // 1 - (1 - 1e-9)^(10^7), at 40 digits (f64's powi is off by 3e-8 here).
        close(t, 0.009950166255782196, 1e-12);
    }

    #[test]
    fn tail_is_monotone_in_k() {
        let mut last = 1.0;
        for k in 0..=200 {
            let t = binomial_upper_tail(200, k, 0.3);
            assert!(
                t <= last + 1e-15,
                "P(X >= {k}) = {t} > P(X >= {}) = {last}",
                k.saturating_sub(1)
            );
            assert!((0.0..=1.0).contains(&t));
            last = t;
        }
    }
}
