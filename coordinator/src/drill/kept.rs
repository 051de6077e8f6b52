//! Kept DR plans: a plan handed over with `drover drill plan --keep` is
//! checked again every `checks.recheck_every` (default 30 minutes) by the
//! leader, so that a DR site that drifts (an instance down, a release
//! behind, a replica falling behind, a command removed) is noticed before
//! the day it is needed, not during it.
//!
//! A check that stops passing is logged as a warning naming the check and
//! its numbers, and one that passes again as information; every check's
//! latest verdict is on /metrics (`drover_drill_plan_check_passing`) and in
//! `drover drill plans`. One plan per service (a new one replaces it).
//! Plans and their latest results are stored (`drill-plans/<service>`), so
//! they survive restarts and follow the lead to a new leader, which checks
//! them when they fall due.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::drill::DrillPlan;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::engine::Ms;
use super::precheck::{Check, Checker};
use crate::metrics::Metrics;
use crate::registry::now_ms;
use crate::store::{Store, StoreError};

pub const KEY_PREFIX: &str = "drill-plans/";

fn key(service: &str) -> String {
    format!("{KEY_PREFIX}{service}")
}

/// A kept plan and how its latest check went, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub plan_text: String,
    /// Checked as for an ungraceful run.
    pub ungraceful: bool,
    pub kept_by: String,
    pub kept_ms: Ms,
    pub checked_ms: Ms,
    pub checks: Vec<Check>,
    /// Since when some check has failed without all passing since.
    pub failing_since_ms: Option<Ms>,
}

impl Kept {
    fn plan(&self) -> Option<DrillPlan> {
        DrillPlan::from_toml(&self.plan_text).ok()
    }

    pub fn every(&self) -> Duration {
        self.plan()
            .map_or(drover_model::drill::DEFAULT_RECHECK, |p| p.recheck_every())
    }

    pub fn next_check_ms(&self) -> Ms {
        self.checked_ms
            .saturating_add(i64::try_from(self.every().as_millis()).unwrap_or(i64::MAX))
    }
}

/// What changed between two checks of a plan: the checks that stopped
/// passing and those that pass again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change<'a> {
    pub failing: Vec<&'a Check>,
    pub recovered: Vec<&'a Check>,
}

/// Compares a check with the one before (none before: every failing check
/// is news).
pub fn change<'a>(before: Option<&[Check]>, now: &'a [Check]) -> Change<'a> {
    let was = |name: &str| before.and_then(|b| b.iter().find(|c| c.name == name).map(|c| c.passed));
    let mut out = Change::default();
    for c in now {
        match (was(&c.name), c.passed) {
            (Some(true) | None, false) => out.failing.push(c),
            (Some(false), true) => out.recovered.push(c),
            _ => {}
        }
    }
    out
}

/// The leader's kept plans.
pub struct KeptPlans {
    store: Arc<dyn Store>,
    checker: Checker,
    metrics: Arc<Metrics>,
    plans: Mutex<BTreeMap<String, Kept>>,
    /// A plan was kept or forgotten: the schedule changed.
    wake: Notify,
}

impl std::fmt::Debug for KeptPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptPlans")
            .field("services", &lock(&self.plans).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeptPlans {
    /// Loads the stored plans (an unreadable one is logged and skipped).
    pub async fn load(
        store: Arc<dyn Store>,
        checker: Checker,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<KeptPlans>, StoreError> {
        let mut plans = BTreeMap::new();
        for (k, v) in store.scan_prefix(KEY_PREFIX).await? {
            match serde_json::from_slice::<Kept>(&v) {
                Ok(kept) => {
                    let service = k.trim_start_matches(KEY_PREFIX).to_string();
                    publish(&metrics, &service, &kept, None);
                    plans.insert(service, kept);
                }
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "a stored DR plan is unreadable; skipped")
                }
            }
        }
        Ok(Arc::new(KeptPlans {
            store,
            checker,
            metrics,
            plans: Mutex::new(plans),
            wake: Notify::new(),
        }))
    }

    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// Checks `plan` now and keeps it, replacing the service's plan.
    pub async fn keep(
        &self,
        plan: &DrillPlan,
        plan_text: &str,
        ungraceful: bool,
        by: &str,
    ) -> Result<Kept, StoreError> {
        let now = now_ms();
        let checks = self.checker.check(plan, !ungraceful, false).await;
        let before = lock(&self.plans).get(&plan.service).cloned();
        let same_plan = before
            .as_ref()
            .is_some_and(|b| b.plan_text == plan_text && b.ungraceful == ungraceful);
        let kept = Kept {
            plan_text: plan_text.to_string(),
            ungraceful,
            kept_by: by.to_string(),
            kept_ms: now,
            checked_ms: now,
            failing_since_ms: failing_since(
                same_plan.then_some(before.as_ref()).flatten(),
                &checks,
                now,
            ),
            checks,
        };
        self.save(&plan.service, &kept).await?;
        report(
            &plan.service,
            same_plan.then_some(before.as_ref()).flatten(),
            &kept,
        );
        publish(&self.metrics, &plan.service, &kept, before.as_ref());
        lock(&self.plans).insert(plan.service.clone(), kept.clone());
        self.wake.notify_one();
        tracing::info!(service = %plan.service, by, every = %humantime::format_duration(plan.recheck_every()), "DR plan kept: checked again on a schedule");
        Ok(kept)
    }

    /// Stops checking the service's plan; `None` when none was kept.
    pub async fn forget(&self, service: &str) -> Result<Option<Kept>, StoreError> {
        let Some(kept) = lock(&self.plans).get(service).cloned() else {
            return Ok(None);
        };
        self.store.delete(&key(service)).await?;
        lock(&self.plans).remove(service);
        let names: Vec<&str> = kept.checks.iter().map(|c| c.name.as_str()).collect();
        self.metrics.drill_plan_forgotten(service, &names);
        self.wake.notify_one();
        tracing::info!(service, "DR plan forgotten: no longer checked");
        Ok(Some(kept))
    }

    pub fn list(&self) -> Vec<Kept> {
        lock(&self.plans).values().cloned().collect()
    }

    async fn save(&self, service: &str, kept: &Kept) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(kept).unwrap_or_default();
        self.store.put(&key(service), bytes).await
    }

    /// Checks the plans as they fall due, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            let due: Vec<(String, Kept)> = lock(&self.plans)
                .iter()
                .filter(|(_, k)| k.next_check_ms() <= now)
                .map(|(s, k)| (s.clone(), k.clone()))
                .collect();
            for (service, before) in due {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.recheck(&service, before) => {}
                }
            }
            let next = lock(&self.plans).values().map(Kept::next_check_ms).min();
            let wait =
                next.map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = async {
                    match wait {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    async fn recheck(&self, service: &str, before: Kept) {
        let Some(plan) = before.plan() else {
            tracing::error!(
                service,
                "the kept DR plan no longer parses; forget it and keep it again"
            );
            // Not again at once: at the default interval, like any plan.
            let mut plans = lock(&self.plans);
            if let Some(k) = plans.get_mut(service)
                && *k == before
            {
                k.checked_ms = now_ms();
            }
            return;
        };
        let checks = self.checker.check(&plan, !before.ungraceful, false).await;
        let now = now_ms();
        let kept = Kept {
            checked_ms: now,
            failing_since_ms: failing_since(Some(&before), &checks, now),
            checks,
            ..before.clone()
        };
        // Kept again or forgotten while it ran: that newer state stands.
        {
            let plans = lock(&self.plans);
            if plans.get(service) != Some(&before) {
                return;
            }
        }
        if let Err(e) = self.save(service, &kept).await {
            tracing::warn!(service, error = %e, "could not store a DR plan's check; it runs again when due");
        }
        report(service, Some(&before), &kept);
        publish(&self.metrics, service, &kept, Some(&before));
        let mut plans = lock(&self.plans);
        if plans.get(service) == Some(&before) {
            plans.insert(service.to_string(), kept);
        }
    }
}

fn failing_since(before: Option<&Kept>, checks: &[Check], now: Ms) -> Option<Ms> {
    if checks.iter().all(|c| c.passed) {
        None
    } else {
        Some(before.and_then(|b| b.failing_since_ms).unwrap_or(now))
    }
}

/// Logs what changed: a warning per check that stopped passing.
fn report(service: &str, before: Option<&Kept>, now: &Kept) {
    let c = change(before.map(|b| b.checks.as_slice()), &now.checks);
    for f in c.failing {
        tracing::warn!(
            service,
            check = %f.name,
            value = %f.value,
            want = %f.want,
            detail = %f.detail,
            "DR plan pre-check stopped passing: a drill or failover now would be refused"
        );
    }
    for r in c.recovered {
        tracing::info!(service, check = %r.name, value = %r.value, "DR plan pre-check passes again");
    }
}

fn publish(metrics: &Metrics, service: &str, now: &Kept, before: Option<&Kept>) {
    let checks: Vec<(&str, bool)> = now
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.passed))
        .collect();
    let gone: Vec<&str> = before
        .map(|b| {
            b.checks
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| !checks.iter().any(|(m, _)| m == n))
                .collect()
        })
        .unwrap_or_default();
    metrics.drill_plan_checked(service, now.checked_ms / 1000, &checks, &gone);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, passed: bool) -> Check {
        Check {
            name: name.into(),
            passed,
            value: String::new(),
            want: String::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_check_that_stops_passing_is_news_once_and_its_recovery_too() {
        let first = [check("capacity", true), check("release", false)];
        // Kept for the first time: what fails is news.
        let c = change(None, &first);
        assert_eq!(
            c.failing
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["release"]
        );
        assert!(c.recovered.is_empty());
        // Still the same: nothing to say.
        assert_eq!(change(Some(&first), &first), Change::default());
        // capacity drops, release comes back.
        let second = [check("capacity", false), check("release", true)];
        let c = change(Some(&first), &second);
        assert_eq!(
            c.failing
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["capacity"]
        );
        assert_eq!(
            c.recovered
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["release"]
        );
    }

    #[test]
    fn failing_since_holds_while_some_check_fails() {
        let kept = |since| Kept {
            plan_text: String::new(),
            ungraceful: false,
            kept_by: "operator/alice".into(),
            kept_ms: 0,
            checked_ms: 0,
            checks: Vec::new(),
            failing_since_ms: since,
        };
        let failing = [check("capacity", false)];
        let passing = [check("capacity", true)];
        assert_eq!(failing_since(None, &failing, 50), Some(50));
        assert_eq!(failing_since(Some(&kept(Some(10))), &failing, 50), Some(10));
        assert_eq!(failing_since(Some(&kept(Some(10))), &passing, 50), None);
        assert_eq!(failing_since(Some(&kept(None)), &failing, 50), Some(50));
    }
}
