//! `agentd-proto`: the control protocol between the agentd daemon and its clients
//! (the `agentd` CLI and the `agentd-mcp` shim).
//!
//! * [`messages`]: versioned serde request/response types ([`Request`], [`Response`]).
//! * [`framing`]: one JSON document per frame, each frame prefixed by a 4-byte
//!   big-endian length, capped at [`MAX_FRAME_BYTES`].
//! * [`mcp_tokens`]: hashed bearer tokens for `agentd-mcp --http`.
//! * [`profile`]: per-profile paths (config, socket, data dir, keychain service, tokens).
//! * [`socket`]: where the control socket lives (Unix socket or Windows named pipe).
//! * [`system`]: the fixed paths of system mode.
//! * [`text`]: terminal-safe rendering of client-sent text, and the bounds on its length.
//! * [`client`]: a small async client that sends one request and reads one response.
//!
//! This crate never carries an upstream secret: the most sensitive value in it is a
//! grant-scoped listener token inside a [`Handle`], which is loopback-only and expires with
//! its grant.

pub mod client;
pub mod framing;
pub mod mcp_tokens;
pub mod messages;
pub mod profile;
pub mod socket;
pub mod system;
pub mod text;

pub use client::{Client, ClientError};
pub use framing::{FrameError, MAX_FRAME_BYTES};
pub use messages::*;
pub use socket::{default_socket_path, SocketPathError};
