//! The fixed layout of **system mode** (see the daemon's `principal` module): the daemon
//! runs as its own OS user [`DAEMON_USER`] and every person or agent is a client on
//! [`SOCKET`]. These paths are the contract between the daemon, the CLI, the MCP shim,
//! `agentd doctor` and the packages (`packaging/`).

/// The OS user the system daemon runs as.
pub const DAEMON_USER: &str = "agentd";

/// The system config file: owned by root, readable by the daemon, writable by nobody else.
pub const CONFIG: &str = "/etc/agentd/config.toml";

/// The system config directory.
pub const CONFIG_DIR: &str = "/etc/agentd";

/// The daemon's data directory (audit log, state file, secret store): owned by
/// [`DAEMON_USER`], mode 0700.
pub const DATA_DIR: &str = "/var/lib/agentd";

/// The runtime directory holding the control socket and the grants' Unix sockets: owned by
/// [`DAEMON_USER`], mode 0755 (clients must reach the socket; the daemon checks every
/// peer's uid).
pub const RUN_DIR: &str = "/run/agentd";

/// The system control socket.
pub const SOCKET: &str = "/run/agentd/agentd.sock";
