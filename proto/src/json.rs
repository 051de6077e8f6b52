//! The contract's JSON: what `drover ... -o json` prints, and what the
//! coordinator can serve as is (a web view), built from the wire types.
//!
//! Every view is made by destructuring its message with every field named
//! and no `..`, so a field added to a `.proto` file does not compile here
//! until someone decides how it shows in JSON; a field left out is bound to
//! `_` with the reason next to it.
//!
//! The shape scripts rely on: an empty string that means "none" and a
//! release of unknown version are `null`; times are RFC 3339 UTC with second
//! precision next to the raw unix milliseconds; enums are snake_case words
//! (`rolling_back`, `not_deployed`), except a strategy, spelt as the spec
//! and `--strategy` spell it (`blue-green`); a share of traffic is text as
//! people write it (`"5%"`, `"0.5%"`); a typed reason is an object whose
//! `kind` says which fields it has.

mod artifact;
mod host;
mod reason;
mod rollout;
mod traffic;

pub use artifact::ArtifactJson;
pub use host::{DiskJson, HostJson, InstanceStatusJson, LoadBalancerJson, MetricsJson};
pub use reason::{StopJson, StopKindJson, UnfinishedJson, WaitJson};
pub use rollout::{
    BatchJson, CountsJson, EventJson, PlanJson, ReleaseJson, RolloutInstanceJson, RolloutJson,
    SkipJson,
};
pub use traffic::{
    AnalysisJson, AnalysisLookJson, ArmJson, TrafficJson, TrafficResultJson, TrafficStepJson,
    stage_word, strategy_word,
};

use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 UTC with second precision (`2026-11-26T06:00:00Z`); `None` for
/// 0 or negative, which the wire uses for "never".
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    (ms > 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
    })
}

/// `None` for the wire's empty string.
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// An enum field as its type; a number this build does not know (from a
/// newer peer) reads as the type's default, `UNSPECIFIED`.
fn known<T: TryFrom<i32> + Default>(raw: i32) -> T {
    T::try_from(raw).unwrap_or_default()
}

#[cfg(test)]
mod testing {
    //! What the views' tests share.

    use serde::Serialize;
    use serde_json::Value;

    use crate::v1::{Release, RolloutWait, rollout_wait};

    pub const NOW: i64 = 1_790_000_000_000;

    pub fn release(v: &str) -> Option<Release> {
        Some(Release {
            version: v.into(),
            digest: "ab".repeat(32),
        })
    }

    pub fn to_value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).expect("serialise")
    }

    /// Waiting on the floor: 3 healthy, floor 4.
    pub fn floor_wait() -> RolloutWait {
        let mut w = RolloutWait {
            capacity: 3,
            floor: 4,
            ..RolloutWait::default()
        };
        w.set_kind(rollout_wait::Kind::Floor);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testing::NOW;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_ms(NOW).as_deref(), Some("2026-09-21T14:13:20Z"));
        assert_eq!(
            rfc3339_ms(NOW + 999).as_deref(),
            Some("2026-09-21T14:13:20Z")
        );
        assert_eq!(rfc3339_ms(0), None);
        assert_eq!(rfc3339_ms(-1), None);
        assert_eq!(non_empty(""), None);
        assert_eq!(non_empty("x").as_deref(), Some("x"));
    }
}
