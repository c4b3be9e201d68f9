//! agentd: a credential-isolating local proxy daemon for AI agents.
//!
//! See `ARCHITECTURE.md` at the repository root for the map. In short: [`control`] serves
//! the local control socket, [`broker`] turns access requests into grants, [`listener`]
//! opens a PostgreSQL proxy per grant, [`credentials`] fetches upstream secrets, [`config`]
//! reads the TOML config, [`policy`] decides requests from it, [`audit`] keeps the
//! hash-chained audit log, [`pgcluster`] starts throwaway PostgreSQL clusters for the demo
//! and the tests, and [`cli`] implements the `agentd` subcommands.

pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod demo;
pub mod demo_cleanup;
pub mod demo_http;
pub mod echo_upstream;
pub mod fsutil;
pub mod listener;
pub mod pgcluster;
pub mod policy;
pub mod principal;
#[cfg(unix)]
pub mod system;
