//! drover's canary judge: is the new release (the canary arm) worse than the
//! old one (the baseline arm) over the same windows?
//!
//! Pure and small: counts and latencies in, verdicts out, no I/O and no
//! clock. The coordinator's rollout engine feeds it a [`Look`] every
//! analysis interval (cumulative counts per arm since the step's analysis
//! began, and the last window's latency), persists the [`Analysis`] with
//! every [`Judgement`], and acts on the [`Verdict`].
//!
//! The rules (REFERENCE.md "A simple, sound rule", defaults in
//! [`Thresholds`]):
//! - **Errors**: fail when the exact conditional test of the Poisson rate
//!   ratio rejects "canary rate <= 2x baseline rate" at p < 0.001 per look,
//!   with at least 5 canary errors and a difference of at least 0.1
//!   percentage points ([`error_test`]). A baseline with no errors is
//!   judged like any other: nothing divides by its rate.
//! - **Guard**: a canary error rate >= 5% over >= 100 requests fails at once,
//!   whatever the baseline.
//! - **Latency**: canary >= 1.5x the baseline and >= 25 ms above it in 3
//!   consecutive windows with usable latency (HAProxy's rtime mean, or p50
//!   and p90 from Prometheus histograms, either sustained fails).
//! - **Inconclusive**: at the end of the bake an arm with fewer than 500
//!   requests makes the analysis inconclusive, never a pass.
//!
//! BENCHMARKS.md ("Canary judge quality") measures the rule's false
//! rollbacks and detection on simulated request streams ([`quality`]).

mod binomial;
mod counter;
mod errors;
mod format;
mod histogram;
mod judge;
mod latency;
pub mod quality;
mod thresholds;

pub use binomial::binomial_upper_tail;
pub use counter::{Counter, HaproxyReading, ServerCounters};
pub use errors::{ErrorFinding, ErrorTest, error_test};
pub use histogram::{Bucket, Histogram};
pub use judge::{Analysis, Arm, Failure, Judgement, Look, Verdict};
pub use latency::{Latency, LatencyFinding, LatencyTest, QuantileTest, RtimeSample};
pub use thresholds::{ThresholdError, Thresholds};
