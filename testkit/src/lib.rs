//! Test helpers shared by drover's test crates (dev-only; depends on
//! nothing of drover's, so any crate's tests can use it without a cycle).
//!
//! Tests wait on conditions, never on fixed sleeps: [`wait_until`] from
//! plain threads, [`wait_until_async`] inside a tokio runtime. Both poll
//! until the condition holds and panic with what was awaited (and any
//! diagnostics) at the deadline. [`etcd`] starts a real etcd cluster on
//! loopback for the etcd store's tests; [`postgres`] a real PostgreSQL primary
//! with a streaming replica for the disaster-recovery drills; [`netns`] puts
//! processes in a network namespace whose link a test can cut,
//! [`tcp_proxy`] cuts a single peer, [`chromium`] runs headless Chromium to
//! check web pages through their DOM, [`prometheus`] runs a real
//! Prometheus that scrapes given targets and answers PromQL, and [`otlp`]
//! receives OpenTelemetry traces over OTLP/gRPC for a test to check.

pub mod chromium;
pub mod etcd;
pub mod netns;
pub mod otlp;
pub mod postgres;
pub mod prometheus;
pub mod tcp_proxy;

use std::time::{Duration, Instant};

/// How often [`wait_until`] polls.
pub const POLL: Duration = Duration::from_millis(25);
/// How often [`wait_until_async`] polls.
pub const POLL_ASYNC: Duration = Duration::from_millis(10);

/// What a polled condition may return: `bool`, or `Option<T>` to hand back
/// a value once it is there.
pub trait Poll {
    type Out;
    fn ready(self) -> Option<Self::Out>;
}

impl Poll for bool {
    type Out = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Poll for Option<T> {
    type Out = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Pauses the calling thread on a channel that never receives: the only
/// pause allowed, between polls.
pub fn pause(d: Duration) {
    let (_keep_open, rx) = std::sync::mpsc::channel::<()>();
    let _ = rx.recv_timeout(d);
}

fn timed_out(timeout: Duration, what: &str, diagnostics: String) -> ! {
    panic!(
        "timed out after {:.1}s waiting until {what}\n{diagnostics}",
        timeout.as_secs_f64()
    )
}

/// Polls `f` every [`POLL`] until it is ready; panics with `what` after
/// `timeout`. For plain (non-async) test threads.
pub fn wait_until<P: Poll>(timeout: Duration, what: &str, f: impl FnMut() -> P) -> P::Out {
    wait_until_with(timeout, what, f, String::new)
}

/// Like [`wait_until`]; on timeout the panic message also carries
/// `diagnostics()` (log tails, the last value seen, ...).
pub fn wait_until_with<P: Poll>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> P,
    diagnostics: impl FnOnce() -> String,
) -> P::Out {
    let start = Instant::now();
    loop {
        if let Some(out) = f().ready() {
            return out;
        }
        if start.elapsed() >= timeout {
            timed_out(timeout, what, diagnostics());
        }
        pause(POLL);
    }
}

/// The async [`wait_until_with`]: polls `f` (which may await) every
/// [`POLL_ASYNC`] on the tokio timer.
pub async fn wait_until_async<P: Poll>(
    timeout: Duration,
    what: &str,
    f: impl AsyncFnMut() -> P,
    diagnostics: impl FnOnce() -> String,
) -> P::Out {
    wait_until_async_every(POLL_ASYNC, timeout, what, f, diagnostics).await
}

/// [`wait_until_async`] polling every `every`: for a test that must catch
/// a short window (kill a process while it is mid-download).
pub async fn wait_until_async_every<P: Poll>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> P,
    diagnostics: impl FnOnce() -> String,
) -> P::Out {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(out) = f().await.ready() {
            return out;
        }
        if start.elapsed() >= timeout {
            timed_out(timeout, what, diagnostics());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), "n reaches 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "waiting until never\nlast: 7")]
    fn panics_with_what_and_diagnostics() {
        wait_until_with(
            Duration::from_millis(50),
            "never",
            || false,
            || "last: 7".to_string(),
        );
    }

    #[tokio::test]
    async fn async_conditions_may_await() {
        let (tx, mut rx) = tokio::sync::watch::channel(0);
        let setter = tokio::spawn(async move {
            for i in 1..=3 {
                let _ = tx.send(i);
                tokio::task::yield_now().await;
            }
            tx
        });
        let seen = wait_until_async(
            Duration::from_secs(5),
            "the value 3",
            async || {
                let v = *rx.borrow_and_update();
                (v == 3).then_some(v)
            },
            String::new,
        )
        .await;
        assert_eq!(seen, 3);
        drop(setter.await);
    }
}
