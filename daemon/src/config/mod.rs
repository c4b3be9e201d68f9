//! The TOML configuration: resources, their permissions, credentials and policy.
//!
//! Default path: `~/.config/agentd/config.toml` (platform config dir), overridable with
//! `--config` / `AGENTD_CONFIG`. Example:
//!
//! ```toml
//! [daemon]
//! keyring_service = "agentd"      # keychain service name the secrets live under
//! data_dir = "/var/lib/agentd"     # audit log + state; default $XDG_DATA_HOME/agentd
//! pending_timeout = "10m"          # pending access requests expire after this
//! retention = "1h"                 # ended grants / decided requests are forgotten after this
//! notify = true                    # desktop notification on a new pending request
//! max_pending_per_user = 8         # pending requests one OS user may have at once
//! max_grants_per_user = 64         # active grants one OS user may hold at once
//!
//! [audit]
//! statements = true                # record SQL statements, not only connections
//! max_file_bytes = 67108864        # rotate the audit file at this size (min 4096)
//! fsync = true                     # fsync after every record
//! on_overflow = "block"            # block (sessions wait for the writer) | drop (counted)
//!
//! [resources.app-db]
//! kind = "postgres"
//! description = "Orders and customers"
//! host = "db.internal"
//! port = 5432
//! database = "app"
//! tls = "verify-full"              # disable | require | verify-full
//! ca_file = "/etc/ssl/db-ca.pem"   # optional; system roots otherwise
//! channel_binding = "prefer"       # prefer | require | disable (SCRAM-SHA-256-PLUS over TLS)
//! allow_weak_auth = false          # allow cleartext/md5 login without tls = "verify-full"
//!
//! [resources.app-db.permissions.read_only]
//! description = "SELECT on all tables"
//! username = "agent_ro"
//! credential = { source = "keyring" }   # `agentd secret set app-db read_only`
//! policy = "approval"                    # auto | approval | deny, when no rule matches
//! default_ttl = "30m"
//! max_ttl = "2h"
//! over_max_ttl = "clamp"                 # clamp | refuse requests longer than max_ttl
//!
//! # Rules are tried in order; the first whose users, agents and window all match decides.
//! [[resources.app-db.permissions.read_only.rules]]
//! users = ["alice"]                      # OS users, verified by the daemon; absent = anyone
//! agents = ["claude-code", "cursor"]     # agent types (claimed by the client); absent = any
//! window = { days = ["mon", "tue", "wed", "thu", "fri"], start = "09:00", end = "18:00" }
//! policy = "auto"
//! max_ttl = "30m"                        # overrides the permission's max_ttl
//!
//! [[resources.app-db.permissions.read_only.rules]]
//! window = { start = "22:00", end = "06:00" }   # overnight: 22:00 to 06:00 the next day
//! policy = "deny"
//! ```
//!
//! Windows are local time, `start` inclusive and `end` exclusive. When `end` is before
//! `start` the window runs overnight, and `days` names the day it *starts* on: `days =
//! ["fri"]` with 22:00–06:00 is Friday 22:00 to Saturday 06:00. See [`crate::policy`].
//!
//! Errors name the file, the line and column, and the field (from `toml`'s spans).

use agentd_proto::PolicyDecision;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type; the message carries line, column
    /// and field.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `toml`'s message with the line/column and the offending field.
        message: String,
    },
    /// The TOML parsed but a value is not allowed.
    #[error("invalid config {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `resources.app-db.permissions.ro.max_ttl`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Daemon-wide settings.
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// The audit log (`[audit]`).
    #[serde(default)]
    pub audit: AuditSettings,
    /// Resources by name.
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
}

/// Daemon-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// Keychain service name under which secrets are stored (default `agentd`).
    #[serde(default = "default_keyring_service")]
    pub keyring_service: String,
    /// Address listeners bind to (default `127.0.0.1`). Whatever the bind address, only
    /// loopback peers are served.
    #[serde(default = "default_listen_host")]
    pub listen_host: std::net::IpAddr,
    /// Upstream connect timeout (default `10s`).
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Directory holding the audit log and the state file; must be absolute. `None` means
    /// the platform default, see [`DaemonSettings::data_dir`].
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// How long an access request may stay pending (waiting for a human) before it expires
    /// (humantime, default `10m`, at least `1s`).
    #[serde(default = "default_pending_timeout", with = "humantime_serde_compat")]
    pub pending_timeout: Duration,
    /// Show a desktop notification when a new access request starts pending (default `true`).
    #[serde(default = "default_true")]
    pub notify: bool,
    /// Most access requests one OS user (peer uid) may have pending at once (default 8, at
    /// least 1). Further requests that need approval are refused with `limit_reached`, so an
    /// agent cannot bury the approver's queue or the desktop in requests. In user mode every
    /// requester is the same uid, so this bounds the whole queue.
    #[serde(default = "default_max_pending_per_user")]
    pub max_pending_per_user: usize,
    /// Most active grants one OS user may hold at once (default 64, at least 1). Each grant
    /// has its own listeners (ports, sockets, tasks); further auto-approved requests are
    /// refused with `limit_reached`. A human's `approve` is not limited.
    #[serde(default = "default_max_grants_per_user")]
    pub max_grants_per_user: usize,
    /// Time a client of a grant listener has to finish startup and authentication
    /// (StartupMessage through the SCRAM exchange; humantime, default `10s`, at least `1s`).
    /// A client still handshaking then gets `FATAL 08006` and is closed (slow-loris defence).
    #[serde(default = "default_handshake_timeout", with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// Most connections one grant listener lets authenticate at the same time (default 128,
    /// at least 1). Further connections get `FATAL 53300` (too_many_connections, which
    /// pools retry) at once and are closed, so connections that never authenticate cannot
    /// pile up memory or tasks.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// `user` (default: the daemon runs as the user it serves) or `system` (the daemon runs
    /// as its own OS user; see [`crate::principal`]).
    #[serde(default)]
    pub mode: crate::principal::Mode,
    /// System mode: the users and groups (names) served as clients. Ignored in user mode.
    #[serde(default)]
    pub clients: Vec<String>,
    /// System mode: a group whose members are admins besides uid 0. Ignored in user mode.
    #[serde(default)]
    pub admin_group: Option<String>,
    /// How long ended grants and decided access requests stay in the daemon's memory (for
    /// `agentd requests --all` and `get_request`) before they are forgotten (humantime,
    /// default `1h`). The audit log remains the record.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// HTTP listeners: a keep-alive client connection with no request in flight is closed
    /// after this long (humantime, default `60s`, at least `1s`). The request head must
    /// arrive within `handshake_timeout`.
    #[serde(default = "default_http_idle_timeout", with = "humantime_serde_compat")]
    pub http_idle_timeout: Duration,
    /// HTTP listeners: a request whose body stops arriving for this long while the listener
    /// waits for it fails and its client connection is closed (humantime, default `30s`, at
    /// least `1s`). Counted per wait, so a slow but steady upload is fine; a client that
    /// sends the head and then stalls or trickles less than a read per timeout is cut.
    #[serde(
        default = "default_http_body_idle_timeout",
        with = "humantime_serde_compat"
    )]
    pub http_body_idle_timeout: Duration,
}

fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_http_body_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            keyring_service: default_keyring_service(),
            listen_host: default_listen_host(),
            connect_timeout: default_connect_timeout(),
            data_dir: None,
            pending_timeout: default_pending_timeout(),
            notify: true,
            max_pending_per_user: default_max_pending_per_user(),
            max_grants_per_user: default_max_grants_per_user(),
            handshake_timeout: default_handshake_timeout(),
            max_handshakes: default_max_handshakes(),
            mode: crate::principal::Mode::User,
            clients: Vec::new(),
            admin_group: None,
            retention: default_retention(),
            http_idle_timeout: default_http_idle_timeout(),
            http_body_idle_timeout: default_http_body_idle_timeout(),
        }
    }
}

impl DaemonSettings {
    /// The data directory in force: `data_dir` when set, else the platform's local data
    /// directory for `agentd` (`$XDG_DATA_HOME/agentd`, i.e. `~/.local/share/agentd`, on
    /// Linux; `~/Library/Application Support/agentd` on macOS; `%LOCALAPPDATA%\agentd\data`
    /// on Windows), else `./agentd-data` when no home directory is known. Under `--profile NAME`, `profiles/NAME` inside it. Not created here.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| agentd_proto::profile::active().data_dir())
    }
}

/// The `[audit]` table: how the append-only audit log is written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Record SQL statements (simple and extended protocol), not only connections and
    /// grants (default `true`).
    #[serde(default = "default_true")]
    pub statements: bool,
    /// Size in bytes at which the current audit file is rotated (default 64 MiB, at least
    /// [`MIN_AUDIT_FILE_BYTES`]).
    #[serde(default = "default_audit_max_file_bytes")]
    pub max_file_bytes: u64,
    /// `fsync` the file after every record (default `true`); off trades crash durability for
    /// speed.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// What a session does when the statement queue is full (default `block`).
    #[serde(default)]
    pub on_overflow: OnOverflow,
    /// Statement queue capacity, in records (default 8192, at least 1).
    #[serde(default = "default_statement_queue")]
    pub statement_queue: usize,
}

fn default_statement_queue() -> usize {
    crate::audit::sink::DEFAULT_CAPACITY
}

/// `[audit] on_overflow`: what happens when sessions produce statement records faster than
/// the audit writer stores them and its queue is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// The session waits for room before it reads the client's next bytes (backpressure):
    /// no statement goes unrecorded, a flood slows down to the writer's pace. The default,
    /// because the audit log promises every statement and dropping would let a flood hide
    /// one.
    #[default]
    Block,
    /// The record is dropped and counted (`statements_dropped`); sessions never wait.
    Drop,
}

/// Smallest allowed `audit.max_file_bytes`, in bytes.
pub const MIN_AUDIT_FILE_BYTES: u64 = 4096;

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            statements: true,
            max_file_bytes: default_audit_max_file_bytes(),
            fsync: true,
            on_overflow: OnOverflow::default(),
            statement_queue: default_statement_queue(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_retention() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_max_pending_per_user() -> usize {
    8
}
fn default_max_grants_per_user() -> usize {
    64
}
fn default_pending_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_audit_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

/// `agentd`, or `agentd-NAME` under `--profile NAME`.
fn default_keyring_service() -> String {
    agentd_proto::profile::active().keyring_service()
}
fn default_listen_host() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_handshakes() -> usize {
    128
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A configured upstream target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Resource kind: `postgres` or `http`.
    pub kind: ResourceKind,
    /// Free text shown to agents.
    #[serde(default)]
    pub description: String,
    /// Free-form labels shown to agents and used by `list_resources` filters and
    /// `recommend_access`, e.g. `["orders", "production"]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `postgres`: upstream host name or address (required).
    #[serde(default)]
    pub host: String,
    /// Upstream port (default 5432).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// `postgres`: database on the upstream server; the only one grants on this resource
    /// may open (required).
    #[serde(default)]
    pub database: String,
    /// `http`: the upstream's base URL, `https://HOST[:PORT][/PREFIX]` (required).
    #[serde(default)]
    pub base_url: Option<String>,
    /// `http`: how the credential goes on each request (required).
    #[serde(default)]
    pub auth: Option<http::HttpAuth>,
    /// TLS to the upstream (default `verify-full`).
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file with the CA certificate(s) to trust for `verify-full`; system roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Must be `true` for `tls = "disable"`: the secret would cross the network in the clear.
    #[serde(default)]
    pub allow_insecure: bool,
    /// SCRAM channel binding (`tls-server-end-point`) to the upstream, like libpq's
    /// `channel_binding` (default `prefer`).
    #[serde(default)]
    pub channel_binding: ChannelBindingMode,
    /// Answer the server's cleartext-password or md5 requests even without
    /// `tls = "verify-full"` (an impersonating server would get the password or a
    /// password-equivalent hash). Default `false`; `agentd config check` warns when set.
    #[serde(default)]
    pub allow_weak_auth: bool,
    /// Permissions by name.
    pub permissions: BTreeMap<String, Permission>,
}

fn default_pg_port() -> u16 {
    5432
}

/// Resource kinds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A PostgreSQL server.
    Postgres,
    /// An HTTPS API; the daemon injects the credential ([`http`]).
    Http,
}

impl ResourceKind {
    /// The kind as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Http => "http",
        }
    }
}

/// TLS to the upstream server.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// No TLS (needs `allow_insecure = true`).
    Disable,
    /// TLS, certificate not verified (protects against passive sniffing only).
    Require,
    /// TLS, certificate chain and host name verified.
    #[default]
    VerifyFull,
}

/// SCRAM channel binding to the upstream (RFC 5929 `tls-server-end-point`, as libpq's
/// `channel_binding` parameter).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBindingMode {
    /// Never bind (plain SCRAM-SHA-256).
    Disable,
    /// Bind (SCRAM-SHA-256-PLUS) when the server offers it over TLS.
    #[default]
    Prefer,
    /// Refuse to log in unless SCRAM-SHA-256-PLUS over TLS is used.
    Require,
}

/// A named level of access on a resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// Free text shown to agents.
    #[serde(default)]
    pub description: String,
    /// Upstream user name the daemon logs in as. Required for `keyring` credentials; for
    /// `command` the fallback when the program prints no username; not allowed for
    /// `dynamic` (the role is generated per grant).
    #[serde(default)]
    pub username: String,
    /// `http` resources: what requests this permission allows (deny by default).
    #[serde(default)]
    pub allow: Vec<http::AllowRule>,
    /// Where the secret for `username` comes from.
    #[serde(default)]
    pub credential: CredentialSource,
    /// `auto`, `approval` or `deny` when no rule matches (default `approval`).
    #[serde(default = "default_policy")]
    pub policy: PolicyDecision,
    /// Duration when the request names none (humantime, default `15m`, at least `1s`, never
    /// above the deciding `max_ttl`).
    #[serde(default, with = "humantime_serde_compat::option")]
    pub default_ttl: Option<Duration>,
    /// Longest grant when no rule with its own `max_ttl` decides (humantime, default `1h`,
    /// at least `1s`).
    #[serde(default = "default_max_ttl", with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// What happens to a request longer than the deciding `max_ttl`: `clamp` (default) or
    /// `refuse`.
    #[serde(default)]
    pub over_max_ttl: OverMaxTtl,
    /// Rules tried in order before `policy`; the first that matches the agent type and the
    /// local time decides (`[[resources.R.permissions.P.rules]]`). See [`crate::policy`].
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// What to do with a request for longer than the permission's (or rule's) `max_ttl`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverMaxTtl {
    /// Grant `max_ttl` instead and say so (`clamped = true`).
    #[default]
    Clamp,
    /// Refuse the request with an error naming `max_ttl`.
    Refuse,
}

/// One policy rule of a permission. A rule matches when the requester's OS user is in
/// `users` (or `users` is empty), the agent type is in `agents` (or `agents` is empty) and
/// the local time is inside `window` (or there is none).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// OS user names the rule applies to, e.g. `alice`; compared exactly against the user
    /// name the daemon looks up for the requesting process's uid (`SO_PEERCRED`, then the
    /// password database), so a client cannot claim one. Empty (or absent) means any user.
    /// Letters, digits, `-`, `_` and `.`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Agent types the rule applies to, e.g. `claude-code`, `cursor`; compared exactly but
    /// case-insensitively. Empty (or absent) means any agent. Letters, digits, `-`, `_`.
    /// The agent type is what the client says it is (the MCP client's name): any local
    /// process can claim any type, so it selects a policy but authenticates nothing.
    #[serde(default)]
    pub agents: Vec<String>,
    /// When the rule applies (local time); `None` means always.
    #[serde(default)]
    pub window: Option<TimeWindow>,
    /// The decision when this rule matches.
    pub policy: PolicyDecision,
    /// Longest grant when this rule decides (humantime, at least `1s`); the permission's
    /// `max_ttl` when absent. May be above the permission's `max_ttl`.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub max_ttl: Option<Duration>,
}

/// A weekly local-time window: `start` inclusive, `end` exclusive, minute precision.
///
/// When `end < start` the window is overnight: it runs from `start` to `end` on the next
/// day, and `days` names the day it starts on (`days = ["fri"]`, `22:00`–`06:00` is Friday
/// 22:00 to Saturday 06:00). `end = "00:00"` means "until midnight". `start == end` is
/// rejected at load.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Days the window starts on, written `"mon"` … `"sun"`; empty (or absent) = every day.
    #[serde(default, deserialize_with = "clock::weekdays")]
    pub days: Vec<chrono::Weekday>,
    /// Start, `"HH:MM"` 24-hour local time, inclusive.
    #[serde(deserialize_with = "clock::time")]
    pub start: chrono::NaiveTime,
    /// End, `"HH:MM"` 24-hour local time, exclusive.
    #[serde(deserialize_with = "clock::time")]
    pub end: chrono::NaiveTime,
}

impl TimeWindow {
    /// Whether the window runs past midnight into the next day (`end < start`).
    pub fn is_overnight(&self) -> bool {
        self.end < self.start
    }
}

/// Parses `"HH:MM"` (24-hour; `H:MM` also accepted) into a time of day; `None` when it is
/// not a valid time (e.g. `"25:00"`, `"9am"`).
pub fn parse_clock_time(s: &str) -> Option<chrono::NaiveTime> {
    let (h, m) = s.split_once(':')?;
    let digits = |x: &str, max_len: usize| {
        !x.is_empty() && x.len() <= max_len && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return None;
    }
    chrono::NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// Parses a day name, `"mon"` … `"sun"` (full names too, any case); `None` otherwise.
pub fn parse_weekday(s: &str) -> Option<chrono::Weekday> {
    s.parse().ok()
}

/// Serde helpers for [`TimeWindow`]; `Config::parse` checks the same strings first so that
/// its errors name the exact field (`…rules[0].window.start`).
mod clock {
    use serde::{Deserialize, Deserializer};

    pub fn time<'de, D: Deserializer<'de>>(d: D) -> Result<chrono::NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_clock_time(&s)
            .ok_or_else(|| serde::de::Error::custom(super::invalid_time_message(&s)))
    }

    pub fn weekdays<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<chrono::Weekday>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                super::parse_weekday(s)
                    .ok_or_else(|| serde::de::Error::custom(super::invalid_day_message(s)))
            })
            .collect()
    }
}

fn invalid_time_message(s: &str) -> String {
    format!("invalid time {s:?}; use HH:MM, 24-hour, 00:00 to 23:59")
}
fn invalid_day_message(s: &str) -> String {
    format!("invalid day {s:?}; use mon, tue, wed, thu, fri, sat or sun")
}

fn default_policy() -> PolicyDecision {
    PolicyDecision::Approval
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl Permission {
    /// The duration used when a request names none: `default_ttl`, else 15 minutes, never
    /// above `max_ttl`.
    pub fn effective_default_ttl(&self) -> Duration {
        self.default_ttl
            .unwrap_or(Duration::from_secs(15 * 60))
            .min(self.max_ttl)
    }
}

/// Durations written the humantime way (`30s`, `15m`, `2h`).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use e.g. 30s, 15m, 2h"
            ))
        })
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] (with line, column and field) or
    /// [`ConfigError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    ///
    /// # Errors
    /// As [`Config::load`], minus `Read`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // Time windows first, on the untyped table, so their errors carry the rule's index
        // (`resources.app.permissions.ro.rules[0].window.start`); anything else malformed is
        // left to the typed parse below.
        if let Ok(table) = text.parse::<toml::Table>() {
            check_windows(&table).map_err(|(field, message)| ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            })?;
        }
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(&e, text),
        })?;
        if let Ok(table) = text.parse::<toml::Table>() {
            check_postgres_fields(&table, text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        if self.daemon.pending_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "daemon.pending_timeout".to_owned(),
                "must be at least 1s",
            ));
        }
        if self.daemon.max_pending_per_user == 0 {
            return Err(invalid(
                "daemon.max_pending_per_user".to_owned(),
                "must be at least 1",
            ));
        }
        if self.daemon.max_grants_per_user == 0 {
            return Err(invalid(
                "daemon.max_grants_per_user".to_owned(),
                "must be at least 1",
            ));
        }
        if self.daemon.handshake_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "daemon.handshake_timeout".to_owned(),
                "must be at least 1s",
            ));
        }
        if self.daemon.http_idle_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "daemon.http_idle_timeout".to_owned(),
                "must be at least 1s",
            ));
        }
        if self.daemon.http_body_idle_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "daemon.http_body_idle_timeout".to_owned(),
                "must be at least 1s",
            ));
        }
        if self.daemon.max_handshakes == 0 {
            return Err(invalid(
                "daemon.max_handshakes".to_owned(),
                "must be at least 1",
            ));
        }
        if let Some(dir) = &self.daemon.data_dir {
            if !dir.is_absolute() {
                return Err(invalid(
                    "daemon.data_dir".to_owned(),
                    "must be an absolute path",
                ));
            }
        }
        if self.audit.statement_queue == 0 {
            return Err(invalid(
                "audit.statement_queue".to_owned(),
                "must be at least 1",
            ));
        }
        if self.audit.max_file_bytes < MIN_AUDIT_FILE_BYTES {
            return Err(invalid(
                "audit.max_file_bytes".to_owned(),
                &format!("must be at least {MIN_AUDIT_FILE_BYTES}"),
            ));
        }
        for (name, res) in &self.resources {
            if !valid_name(name) {
                return Err(invalid(
                    format!("resources.{name}"),
                    "resource names may use letters, digits, '-' and '_' only",
                ));
            }
            if res.tls == TlsMode::Disable && !res.allow_insecure {
                return Err(invalid(
                    format!("resources.{name}.tls"),
                    "tls = \"disable\" sends the upstream secret in the clear; set allow_insecure = true to accept that",
                ));
            }
            if res.channel_binding == ChannelBindingMode::Require && res.tls == TlsMode::Disable {
                return Err(invalid(
                    format!("resources.{name}.channel_binding"),
                    "channel_binding = \"require\" needs TLS to the upstream (tls = \"require\" or \"verify-full\")",
                ));
            }
            let field = |f: &str| format!("resources.{name}.{f}");
            match res.kind {
                ResourceKind::Postgres => {
                    for (f, empty) in [
                        ("host", res.host.is_empty()),
                        ("database", res.database.is_empty()),
                    ] {
                        if empty {
                            return Err(invalid(field(f), "required for kind = \"postgres\""));
                        }
                    }
                    if res.base_url.is_some() || res.auth.is_some() {
                        return Err(invalid(
                            field("base_url"),
                            "base_url and auth are for kind = \"http\"",
                        ));
                    }
                }
                ResourceKind::Http => {
                    http::validate_resource(res.base_url.as_deref(), res.auth.as_ref())
                        .map_err(|(f, m)| invalid(field(&f), &m))?;
                    if !res.host.is_empty() || !res.database.is_empty() {
                        return Err(invalid(
                            field("host"),
                            "host and database are for kind = \"postgres\"; use base_url",
                        ));
                    }
                    if res.tls != TlsMode::VerifyFull {
                        return Err(invalid(
                            field("tls"),
                            "http resources always use tls = \"verify-full\"",
                        ));
                    }
                }
            }
            if res.permissions.is_empty() {
                return Err(invalid(
                    format!("resources.{name}.permissions"),
                    "a resource needs at least one permission",
                ));
            }
            for (pname, perm) in &res.permissions {
                let field = |f: &str| format!("resources.{name}.permissions.{pname}.{f}");
                if !valid_name(pname) {
                    return Err(invalid(
                        format!("resources.{name}.permissions.{pname}"),
                        "permission names may use letters, digits, '-' and '_' only",
                    ));
                }
                if perm.max_ttl < Duration::from_secs(1) {
                    return Err(invalid(field("max_ttl"), "must be at least 1s"));
                }
                if perm.default_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
                    return Err(invalid(field("default_ttl"), "must be at least 1s"));
                }
                credential::validate_credential(res.kind, res.auth.as_ref(), perm, &field)
                    .map_err(|(f, m)| invalid(f, &m))?;
                match res.kind {
                    ResourceKind::Http => http::validate_allow(&perm.allow)
                        .map_err(|(f, m)| invalid(field(&f), &m))?,
                    ResourceKind::Postgres if !perm.allow.is_empty() => {
                        return Err(invalid(
                            field("allow"),
                            "allow lists are for kind = \"http\"",
                        ))
                    }
                    ResourceKind::Postgres => {}
                }
                for (i, rule) in perm.rules.iter().enumerate() {
                    for (j, user) in rule.users.iter().enumerate() {
                        if !valid_user_name(user) {
                            return Err(invalid(
                                field(&format!("rules[{i}].users[{j}]")),
                                &format!("invalid OS user name {user:?}; user names may use letters, digits, '-', '_' and '.' only"),
                            ));
                        }
                    }
                    for (j, agent) in rule.agents.iter().enumerate() {
                        if !valid_name(agent) {
                            return Err(invalid(
                                field(&format!("rules[{i}].agents[{j}]")),
                                &format!("invalid agent type {agent:?}; agent types may use letters, digits, '-' and '_' only"),
                            ));
                        }
                    }
                    if rule.max_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
                        return Err(invalid(
                            field(&format!("rules[{i}].max_ttl")),
                            "must be at least 1s",
                        ));
                    }
                    if let Some(w) = &rule.window {
                        if w.start == w.end {
                            return Err(invalid(
                                field(&format!("rules[{i}].window.end")),
                                "start and end must differ (end before start means an overnight window)",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the audit log is written: `daemon.data_dir()/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        self.daemon.data_dir().join("audit")
    }

    /// Looks up a resource and one of its permissions.
    pub fn permission(&self, resource: &str, permission: &str) -> Option<(&Resource, &Permission)> {
        let res = self.resources.get(resource)?;
        Some((res, res.permissions.get(permission)?))
    }
}

/// A `kind = "postgres"` resource without `host` or `database` is told so with the line of
/// its table, as the typed parse did when those fields were required for every kind.
fn check_postgres_fields(table: &toml::Table, text: &str) -> Result<(), String> {
    let Some(resources) = table.get("resources").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    for (name, res) in resources {
        let Some(res) = res.as_table() else { continue };
        if res.get("kind").and_then(toml::Value::as_str) != Some("postgres") {
            continue;
        }
        for field in ["host", "database"] {
            if !res.contains_key(field) {
                let header = format!("[resources.{name}]");
                let line = text
                    .lines()
                    .position(|l| l.trim() == header)
                    .map_or(1, |i| i + 1);
                return Err(format!(
                    "line {line}, column 1, field resources.{name}: missing field `{field}`"
                ));
            }
        }
    }
    Ok(())
}

/// Checks every `resources.R.permissions.P.rules[i].window`'s `start`, `end` and `days`
/// strings in the untyped table; the error is `(field, message)`. Values of the wrong type
/// are skipped here (the typed parse reports them with line and column).
fn check_windows(table: &toml::Table) -> Result<(), (String, String)> {
    let tables = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_table)
            .into_iter()
            .flat_map(|t| t.iter())
            .filter_map(|(k, v)| Some((k.clone(), v.as_table()?.clone())))
            .collect::<Vec<_>>()
    };
    for (rname, res) in tables(table.get("resources")) {
        for (pname, perm) in tables(res.get("permissions")) {
            let rules = perm.get("rules").and_then(toml::Value::as_array);
            for (i, rule) in rules.into_iter().flatten().enumerate() {
                let Some(window) = rule.get("window").and_then(toml::Value::as_table) else {
                    continue;
                };
                let field = |f: &str| {
                    format!("resources.{rname}.permissions.{pname}.rules[{i}].window.{f}")
                };
                for key in ["start", "end"] {
                    if let Some(s) = window.get(key).and_then(toml::Value::as_str) {
                        if parse_clock_time(s).is_none() {
                            return Err((field(key), invalid_time_message(s)));
                        }
                    }
                }
                let days = window.get("days").and_then(toml::Value::as_array);
                for (j, day) in days.into_iter().flatten().enumerate() {
                    if let Some(s) = day.as_str() {
                        if parse_weekday(s).is_none() {
                            return Err((field(&format!("days[{j}]")), invalid_day_message(s)));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// An OS user name as `useradd` accepts it (portable subset): letters, digits, `-`, `_`,
/// `.`, not starting with `-`, at most 256 bytes.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Renders a `toml` error as `line L, column C: MESSAGE` (the field name is in `toml`'s
/// message, e.g. "missing field `host`").
fn describe_toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim().to_owned();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            match field_at(before) {
                Some(field) => format!("line {line}, column {column}, field {field}: {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message,
    }
}

/// The dotted field an error offset points into, from the nearest `[table]` header above it
/// and the `key =` on its own line (e.g. `resources.app.permissions.ro.max_ttl`).
fn field_at(before: &str) -> Option<String> {
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let key = before[line_start..]
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// The default config path: `$XDG_CONFIG_HOME/agentd/config.toml` on Linux, the platform's
/// config directory elsewhere.
/// Under `--profile NAME`, `CONFIG_DIR/profiles/NAME/config.toml` (see
/// [`agentd_proto::profile`]).
pub fn default_config_path() -> PathBuf {
    agentd_proto::profile::active().config_path()
}

mod credential;
pub mod http;

pub use credential::{CredentialSource, DynamicRole};

#[cfg(test)]
mod tests;
