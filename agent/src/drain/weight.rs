//! Setting an instance's weight in every HAProxy it is registered with,
//! for shifting traffic (canary, blue-green).
//!
//! Every HAProxy is read first: a backend whose algorithm ignores weights
//! (static-rr, first) is refused before anything changes. A hash backend
//! is tried: HAProxy 2.6 does not show whether it uses `hash-type
//! consistent`, and refuses the change itself when it does not. Then the
//! weight is set on every HAProxy (all are tried even when one fails, so
//! the reachable ones agree), and read back: the step is done only when
//! every HAProxy shows it.

use std::time::Instant;

use drover_proto::v1::LoadBalancerView;

use super::haproxy::{self, Algorithm, COMMAND_TIMEOUT, HaproxyError, Snapshot, Weight};
use super::view;
use crate::config::HaproxyDrain;

/// HAProxy's highest weight.
pub const MAX_WEIGHT: u32 = 256;

/// What HAProxy 2.6 answers a weight change on a static algorithm.
const STATIC_REFUSAL: &str = "static LB algorithm";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("weight {0} is out of range: HAProxy takes 0 to 256")]
    OutOfRange(u32),
    /// The backend's algorithm ignores weights.
    #[error(
        "backend {backend} uses {algorithm}: HAProxy ignores weight changes; use roundrobin or leastconn"
    )]
    Static { backend: String, algorithm: String },
    /// A hash without `hash-type consistent`, found out by HAProxy's
    /// refusal.
    #[error(
        "backend {backend} uses {algorithm} hashing without `hash-type consistent`: HAProxy ignores weight changes; use roundrobin or leastconn (or add `hash-type consistent`)"
    )]
    MapBasedHash { backend: String, algorithm: String },
    /// One or more HAProxies could not be read, refused, or do not show
    /// the weight; each is named with why.
    #[error("{0}")]
    Balancers(String),
}

/// A finished weight change.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub message: String,
    /// What each HAProxy showed afterwards, in config order...
    pub views: Vec<LoadBalancerView>,
    /// ...when asked at this instant.
    pub asked: Instant,
}

/// What every HAProxy showed before a weight change, in config order.
#[derive(Debug)]
pub struct Checked {
    before: Vec<Result<Snapshot, HaproxyError>>,
}

/// Reads every HAProxy of `h` before a change to `weight`: refuses an
/// out-of-range weight, a backend whose algorithm ignores weights and a
/// server an HAProxy does not list. An HAProxy that cannot be read is not
/// refused here: [`apply`] tries it and fails naming it.
pub async fn check(h: &HaproxyDrain, weight: Weight) -> Result<Checked, WeightError> {
    if let Weight::Absolute(w) = weight
        && w > MAX_WEIGHT
    {
        return Err(WeightError::OutOfRange(w));
    }
    let mut before = Vec::with_capacity(h.sockets.len());
    for addr in &h.sockets {
        let read = haproxy::read(addr, COMMAND_TIMEOUT).await;
        if let Ok(snap) = &read {
            if snap.server(&h.backend, &h.server).is_none() {
                return Err(WeightError::Balancers(format!(
                    "HAProxy {addr} lists no server {}/{}; weight not changed",
                    h.backend, h.server
                )));
            }
            if let (Weight::Absolute(_), Some(Algorithm::Static(algo))) =
                (weight, snap.backend(&h.backend).map(|b| &b.algorithm))
            {
                return Err(WeightError::Static {
                    backend: h.backend.clone(),
                    algorithm: algo.clone(),
                });
            }
        }
        before.push(read);
    }
    Ok(Checked { before })
}

/// [`check`], then [`apply`] (a refused hash puts back the configured
/// weight where it was accepted).
pub async fn set(h: &HaproxyDrain, weight: Weight) -> Result<Weighted, WeightError> {
    let checked = check(h, weight).await?;
    apply(h, weight, checked, Weight::Configured).await
}

/// Sets `weight` on every HAProxy of `h`, all of them even when one
/// fails, then reads it back (see the module doc). When an HAProxy
/// refuses it because its backend hashes without `hash-type consistent`,
/// those that took it get `previous` back (best effort) and nothing else
/// is tried.
pub async fn apply(
    h: &HaproxyDrain,
    weight: Weight,
    checked: Checked,
    previous: Weight,
) -> Result<Weighted, WeightError> {
    let before = checked.before;
    let mut problems = Vec::new();
    let mut took = Vec::new();
    for (addr, read) in h.sockets.iter().zip(&before) {
        match haproxy::set_weight(addr, &h.backend, &h.server, weight).await {
            Ok(()) => took.push(addr),
            Err(HaproxyError::Refused { answer, .. }) if answer.contains(STATIC_REFUSAL) => {
                for done in took {
                    if let Err(e) = haproxy::set_weight(done, &h.backend, &h.server, previous).await
                    {
                        tracing::warn!(haproxy = %done, "put weight {previous} back on {}/{}: {e}", h.backend, h.server);
                    }
                }
                let algorithm = read
                    .as_ref()
                    .ok()
                    .and_then(|snap| snap.backend(&h.backend))
                    .map(|b| b.algorithm.name().to_string())
                    .unwrap_or_else(|| "a static algorithm".to_string());
                return Err(WeightError::MapBasedHash {
                    backend: h.backend.clone(),
                    algorithm,
                });
            }
            Err(e) => problems.push(e.to_string()),
        }
    }

    // Read it back.
    let asked = Instant::now();
    let now = view::unix_ms();
    let mut views = Vec::with_capacity(h.sockets.len());
    let mut shown = Vec::new();
    for (addr, read) in h.sockets.iter().zip(&before) {
        let after = haproxy::read(addr, COMMAND_TIMEOUT).await;
        views.push(view::from_answer(addr, &h.backend, &h.server, &after, now));
        let configured = |snap: &Snapshot| snap.configured_weight(&h.backend, &h.server);
        let expected = match weight {
            Weight::Absolute(w) => Some(w),
            // The configured weight does not change without a reload.
            Weight::Configured => match (&after, read) {
                (Ok(snap), _) if configured(snap).is_some() => configured(snap),
                (_, Ok(snap)) => configured(snap),
                _ => None,
            },
        };
        match &after {
            Err(e) => problems.push(e.to_string()),
            Ok(snap) => {
                let got = user_weight(snap, h);
                if let (Some(want), Some(got)) = (expected, got)
                    && want != got
                {
                    problems.push(format!(
                        "HAProxy {addr} shows weight {got} for {}/{} after `weight {weight}`, not {want}",
                        h.backend, h.server
                    ));
                }
                shown.push(got);
            }
        }
    }
    problems.dedup();
    if !problems.is_empty() {
        let mut msg = problems.join("; ");
        if let Weight::Absolute(w) = weight {
            msg.push_str(&format!(
                " (the agent holds weight {w} and sets it there once that HAProxy answers)"
            ));
        }
        return Err(WeightError::Balancers(msg));
    }
    let what = match weight {
        Weight::Absolute(w) => format!("weight {w}"),
        Weight::Configured => match shown.first().copied().flatten() {
            Some(w) => format!("configured weight {w} restored"),
            None => "configured weight restored".to_string(),
        },
    };
    Ok(Weighted {
        message: format!(
            "{what} on {}/{} on {} HAProxy",
            h.backend,
            h.server,
            h.sockets.len()
        ),
        views,
        asked,
    })
}

fn user_weight(snap: &Snapshot, h: &HaproxyDrain) -> Option<u32> {
    snap.server(&h.backend, &h.server).and_then(|s| s.uweight)
}
