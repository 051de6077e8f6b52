//! drover's networking helpers shared by the binaries: the mutual-TLS client
//! transport (agent, CLI, tests) and systemd readiness notification (agent,
//! coordinator). Kept apart from `drover-proto`, which holds only the wire
//! contract and the identity scheme.

pub mod sd_notify;
pub mod transport;
