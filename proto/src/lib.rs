//! drover's wire contract.
//!
//! - [`v1`]: generated messages and gRPC clients/servers for `drover.v1`.
//! - [`spec`]: the rollout spec between the wire and `drover-model`.
//! - [`text`]: the words the CLI prints for the wire's enums, and the
//!   typed-or-text readers for the deprecated `*_text` fields.
//! - [`json`]: the contract's JSON views (what `-o json` prints), built
//!   from the wire types field by field so a new field cannot be missed.
//! - [`identity`]: how a peer's role and name are written into, and read out
//!   of, the URI SAN of its certificate. It lives in `drover-model` (which
//!   the CLI and the offline CA use without tonic) and is re-exported here.
//!
//! The mutual-TLS client transport and sd_notify are in `drover-net`.

pub use drover_model::identity;

pub mod json;
pub mod spec;
pub mod text;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("drover.v1");
}
