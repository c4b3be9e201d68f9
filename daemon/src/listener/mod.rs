//! Local listeners the daemon opens for grants. Only PostgreSQL today.

pub mod postgres;
