//! gRPC services. Both share one [`Ctx`]; handlers stay thin and leave the
//! state to the registry, tokens and CA.

pub mod agent;
pub mod control;
pub mod coordinators;
pub mod drills;
pub mod rollouts;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::artifacts::Artifacts;
use crate::auth::Authorizer;
use crate::metrics::Metrics;
use crate::pki::Ca;
use crate::registry::Registry;
use crate::runner::Rollouts;
use crate::tls::Enrolling;
use crate::tokens::Tokens;

/// What every handler needs.
#[derive(Debug)]
pub struct Ctx {
    pub name: String,
    /// HA: the fencing epoch this coordinator leads with (0: no election).
    pub epoch: u64,
    /// HA: the other coordinators' copies of artifacts.
    pub replicas: Option<crate::replicate::Replicas>,
    pub registry: Arc<Registry>,
    pub rollouts: Arc<Rollouts>,
    pub tokens: Tokens,
    pub artifacts: Artifacts,
    pub ca: Ca,
    pub authz: Authorizer,
    pub metrics: Arc<Metrics>,
    pub cert_lifetime: Duration,
    pub max_token_ttl: Duration,
    pub shutdown: CancellationToken,
    /// Owns every task a handler spawns; shutdown joins them.
    pub tasks: TaskTracker,
    /// Cert-less connections: `Enroll` marks its connection as done.
    pub enrolling: Arc<Enrolling>,
    /// DR drills: the serving peaks, and where plan commands come from.
    pub peaks: crate::drill::Peaks,
    pub drill_runs: Arc<crate::drill::runner::Drills>,
    /// Plans kept with `drover drill plan --keep`, and the pre-checks.
    pub kept_plans: Arc<crate::drill::kept::KeptPlans>,
    pub drills: crate::config::DrillsConfig,
}
