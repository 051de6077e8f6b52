//! drover's wire contract.
//!
//! - [`v1`]: generated messages and gRPC clients/servers for `drover.v1`.
//! - [`identity`]: how a peer's role and name are written into, and read out
//!   of, the URI SAN of its certificate.

pub mod identity;
pub mod sd_notify;
pub mod transport;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("drover.v1");
}
