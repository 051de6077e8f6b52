//! What the drover CLI and the coordinator both need, without either's
//! runtime: the rollout spec and its TOML form, amounts and batch lists,
//! label selectors, the identity scheme and certificate helpers, and the
//! offline CA functions behind `drover ca init` and `drover cert issue`.
//!
//! No tokio, no tonic, no store: the CLI links this crate instead of the
//! coordinator (`cargo tree -p drover-cli -e normal` shows neither
//! `drover-coordinator` nor `redb`).

pub mod amount;
pub mod cert;
pub mod drill;
pub mod identity;
pub mod pki;
pub mod selector;
pub mod spec;
pub mod strategy;

pub use amount::{Amount, AmountError, parse_batches};
pub use spec::{
    DigestRule, LostHostPolicy, Release, RolloutSpec, SpecError, Spread, positive_rule, share_rule,
};
pub use strategy::{AnalysisSpec, Color, MetricsSource, Num, OnInconclusive, Share, Strategy};
