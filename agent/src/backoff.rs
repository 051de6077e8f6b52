//! Reconnect pacing and quiet failure logging for the session loop.

use std::time::Duration;

use rand::Rng;

/// Jittered exponential backoff: each delay is drawn from the upper half of
/// the current step (`step/2 ..= step`), so a fleet that lost its
/// coordinator at the same moment does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap,
            step: initial,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }

    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// Decides which of a run of repeated failures are worth a log line: the
/// first, every tenth, and any whose message differs from the last one
/// logged for the same target.
#[derive(Debug, Default)]
pub struct FailureLog {
    consecutive: u32,
    last: Vec<(String, String)>,
}

impl FailureLog {
    /// Records a failure against `target`; returns the failure count if it
    /// should be logged.
    pub fn record(&mut self, target: &str, message: &str) -> Option<u32> {
        self.consecutive = self.consecutive.saturating_add(1);
        let changed = match self.last.iter_mut().find(|(t, _)| t == target) {
            Some((_, last)) if last == message => false,
            Some((_, last)) => {
                *last = message.to_string();
                true
            }
            None => {
                self.last.push((target.to_string(), message.to_string()));
                true
            }
        };
        (self.consecutive == 1 || self.consecutive.is_multiple_of(10) || changed)
            .then_some(self.consecutive)
    }

    /// Failures since the last success.
    pub fn count(&self) -> u32 {
        self.consecutive
    }

    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_doubling_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.next_delay());
        }
        assert!(steps[0] >= Duration::from_millis(250) && steps[0] <= Duration::from_millis(500));
        assert!(steps[1] >= Duration::from_millis(500) && steps[1] <= Duration::from_secs(1));
        assert!(steps[9] >= Duration::from_secs(15) && steps[9] <= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn failure_log_throttles_repeats() {
        let mut f = FailureLog::default();
        let logged: Vec<u32> = (0..25).filter_map(|_| f.record("a:1", "refused")).collect();
        assert_eq!(logged, vec![1, 10, 20]);
        assert_eq!(f.record("a:1", "timed out"), Some(26));
        assert_eq!(f.record("a:1", "timed out"), None);
        f.reset();
        assert_eq!(f.record("a:1", "timed out"), Some(1));
    }
}
