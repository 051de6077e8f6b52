//! drover's end-to-end harness: starts the real `drover-coordinator`,
//! `drover-agent` and `drover` binaries on loopback, each in a temp dir, waits
//! on readiness (never on a fixed sleep) and kills everything on drop.
//!
//! Build the binaries first: `cargo build --workspace --bins`. The tests in
//! `tests/e2e/` and the `drover-fleet` demo are its users.

pub mod bench;
pub mod fleetsim;
pub mod harness;

pub use harness::agent::{Agent, AgentSpec, InstanceSpec};
pub use harness::cli::{Cli, HostView, InstanceView, TokenView};
pub use harness::coordinator::{Coordinator, CoordinatorSpec, ReadyFile};
pub use harness::fleet::WAIT;
pub use harness::fleet::{Fleet, FleetBuilder};
pub use harness::haproxy::{Haproxy, ServerStat, ServerState};
pub use harness::load::{CapacityReport, CapacitySampler, Load, LoadReport, LoadSpec};
pub use harness::pki::{CertPair, Pki};
pub use harness::process::{CmdOutput, Proc, run_cmd};
pub use harness::release::{Hostile, sample_release};
pub use harness::rollout::{
    RolloutEventView, RolloutInstanceView, RolloutView, WebFleet, WebFleetBuilder,
};
pub use harness::{
    bin_path, free_port, holds_for, http_get, metrics_sum, tail, wait_until, wait_until_with,
};
