//! End-to-end tests: the real drover binaries on loopback, each test with
//! its own temp dir, ports and processes (run in parallel by nextest).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod artifacts;
mod bad_config;
mod bench_smoke;
mod certs;
mod demo;
mod drill;
mod drill_sites;
mod enrolling;
mod etcd_store;
mod first_deploy;
mod fleet;
mod fleetsim;
mod grpc;
mod ha_clients;
mod ha_election;
mod ha_partition;
mod hostile;
mod lifecycle;
mod prometheus;
mod restart;
mod rollout;
mod rollout_artifacts;
mod rollout_bluegreen;
mod rollout_canary;
mod rollout_control;
mod rollout_crash;
mod rollout_deadline;
mod rollout_harness;
mod rollout_hostile;
mod rollout_lb;
mod rollout_reconnect;
mod sample;
mod shutdown;
mod tracing;
mod traffic;
mod ui;

use std::collections::BTreeSet;

use drover_tests::HostView;

/// Host ids of a listing, sorted.
pub fn ids(hosts: &[HostView]) -> BTreeSet<String> {
    hosts.iter().map(|h| h.host_id.clone()).collect()
}

/// A sorted set from string literals.
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}
