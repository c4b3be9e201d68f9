//! Local listeners the daemon opens for grants. Only PostgreSQL today.

pub mod peer;
pub mod postgres;
