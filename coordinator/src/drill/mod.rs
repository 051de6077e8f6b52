//! Disaster-recovery drills (issue 13): a service's DR plan, checked
//! against the fleet ([`precheck`]), with the serving peaks the capacity
//! check sizes the DR site against ([`peaks`]).

pub mod engine;
pub mod kept;
pub mod peaks;
pub mod precheck;
pub mod runner;

pub use peaks::Peaks;
pub use precheck::{Check, Checker, Fleet};
