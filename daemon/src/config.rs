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
//! # Rules are tried in order; the first whose agents and window both match decides.
//! [[resources.app-db.permissions.read_only.rules]]
//! agents = ["claude-code", "cursor"]     # agent types; empty or absent = any agent
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
            handshake_timeout: default_handshake_timeout(),
            max_handshakes: default_max_handshakes(),
            mode: crate::principal::Mode::User,
            clients: Vec::new(),
            admin_group: None,
            retention: default_retention(),
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
    /// Resource kind; only `postgres` exists today.
    pub kind: ResourceKind,
    /// Free text shown to agents.
    #[serde(default)]
    pub description: String,
    /// Free-form labels shown to agents and used by `list_resources` filters and
    /// `recommend_access`, e.g. `["orders", "production"]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Upstream host name or address.
    pub host: String,
    /// Upstream port (default 5432).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database on the upstream server; the only one grants on this resource may open.
    pub database: String,
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

/// One policy rule of a permission. A rule matches when the agent type is in `agents` (or
/// `agents` is empty) and the local time is inside `window` (or there is none).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Agent types the rule applies to, e.g. `claude-code`, `cursor`; compared exactly but
    /// case-insensitively. Empty (or absent) means any agent. Letters, digits, `-`, `_`.
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

/// Where a permission's upstream login comes from. Three sources:
///
/// ```toml
/// credential = { source = "keyring" }                       # default; `agentd secret set R P`
/// credential = { source = "command", argv = ["op", "read", "op://vault/db/password"], timeout_seconds = 10 }
/// credential = { source = "dynamic", admin_username = "agentd_admin", grant_roles = ["app_readonly"] }
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSource {
    /// The OS keychain, entry `RESOURCE/PERMISSION` under the daemon's keyring service
    /// (or `entry` when given), holding the password of the permission's `username`. Set it
    /// with `agentd secret set RESOURCE PERMISSION`. `source = "keychain"` is accepted too.
    #[serde(alias = "keychain")]
    Keyring {
        /// Explicit entry name instead of `RESOURCE/PERMISSION`.
        #[serde(default)]
        entry: Option<String>,
    },
    /// An external program (no shell) that prints one JSON object on stdout:
    /// `{"username": "...", "password": "...", "expires_at": "RFC 3339"}` (`username`
    /// optional when the permission has one; `expires_at` optional). The result is cached
    /// until `expires_at` minus a minute; without `expires_at` the program runs once per
    /// grant. The pattern of AWS `credential_process` and git credential helpers.
    Command {
        /// Program and arguments, e.g. `["op", "read", "op://vault/db/password"]`; `argv[0]`
        /// is looked up on `PATH`.
        argv: Vec<String>,
        /// Kill the program and fail the grant after this many seconds (default 10, 1 to
        /// 300).
        #[serde(default = "default_command_timeout")]
        timeout_seconds: u64,
    },
    /// A PostgreSQL role created for each grant and dropped when it ends (Vault's database
    /// secrets engine model). The admin login is used only by the daemon to create and drop
    /// roles; listeners log in as the grant's own role.
    Dynamic(DynamicRole),
}

/// `credential = { source = "dynamic", … }`: how per-grant roles are made and removed.
///
/// Statements may use Vault's placeholders: `{{name}}` (the role, `agentd_g_<16 hex>`),
/// `{{password}}` (a SCRAM-SHA-256 verifier of the role's random password: the password
/// itself never leaves the daemon), `{{expiration}}` (the grant's expiry,
/// `YYYY-MM-DD HH:MM:SS+00`), `{{connection_limit}}` and `{{grant_roles}}` (the roles as
/// quoted identifiers, comma-separated). Every substituted value is made of characters that
/// need no escaping inside `"…"` or `'…'`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DynamicRole {
    /// The admin role agentd logs in as to create and drop roles. It needs `CREATEROLE`,
    /// membership in `grant_roles` with ADMIN OPTION (PostgreSQL 16+) and in
    /// `pg_signal_backend` (or be a superuser).
    pub admin_username: String,
    /// Keychain entry holding the admin's password (default `RESOURCE/admin`); set it with
    /// `agentd secret set RESOURCE PERMISSION`.
    #[serde(default)]
    pub admin: Option<String>,
    /// Roles each grant's role is made a member of (`IN ROLE …`); they carry the privileges.
    #[serde(default)]
    pub grant_roles: Vec<String>,
    /// `CONNECTION LIMIT` of each grant's role (default 10; -1 for none).
    #[serde(default = "default_connection_limit")]
    pub connection_limit: i32,
    /// Statements that create the role; default
    /// `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' CONNECTION LIMIT {{connection_limit}} IN ROLE {{grant_roles}}`.
    /// They run in one transaction together with agentd's own `COMMENT ON ROLE` marker.
    #[serde(default)]
    pub creation_statements: Vec<String>,
    /// Statements that remove the role after its sessions were terminated; default
    /// `GRANT "{{name}}" TO CURRENT_USER; GRANT "{{name}}" TO "{{orphan_owner}}";
    /// REASSIGN OWNED BY "{{name}}" TO "{{orphan_owner}}"; DROP OWNED BY "{{name}}";
    /// DROP ROLE IF EXISTS "{{name}}"` (one transaction; the second membership only lets the
    /// orphan owner take objects in schemas where the role could create, and dies with the
    /// role).
    #[serde(default)]
    pub revocation_statements: Vec<String>,
    /// The NOLOGIN role that takes over what a grant's role owned when it is dropped
    /// (`{{orphan_owner}}`; default `agentd_orphans`). agentd's admin login creates it once
    /// (no privileges, no memberships) and joins it so it may reassign to it. Never the
    /// admin: a `SECURITY DEFINER` function written during a grant would otherwise run with
    /// the admin's rights after the grant.
    #[serde(default = "default_orphan_owner")]
    pub orphan_owner: String,
}

fn default_orphan_owner() -> String {
    "agentd_orphans".to_owned()
}

impl DynamicRole {
    /// The keychain entry of the admin password: `admin`, else `RESOURCE/admin`.
    pub fn admin_entry(&self, resource: &str) -> String {
        self.admin
            .clone()
            .unwrap_or_else(|| format!("{resource}/admin"))
    }
}

impl CredentialSource {
    /// The keychain entry this source reads (the login's password for `keyring`, the
    /// admin's for `dynamic`); `None` for `command`.
    pub fn keychain_entry(&self, resource: &str, permission: &str) -> Option<String> {
        match self {
            CredentialSource::Keyring { entry } => {
                Some(entry.clone().unwrap_or_else(|| {
                    crate::credentials::keychain::entry_name(resource, permission)
                }))
            }
            CredentialSource::Command { .. } => None,
            CredentialSource::Dynamic(d) => Some(d.admin_entry(resource)),
        }
    }
}

fn default_command_timeout() -> u64 {
    10
}
fn default_connection_limit() -> i32 {
    10
}

impl Default for CredentialSource {
    fn default() -> Self {
        Self::Keyring { entry: None }
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
        if self.daemon.handshake_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "daemon.handshake_timeout".to_owned(),
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
                validate_credential(perm, &field).map_err(|(f, m)| invalid(f, &m))?;
                for (i, rule) in perm.rules.iter().enumerate() {
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

/// Checks a permission's `username` and `credential` together; the error is `(field,
/// message)`.
fn validate_credential(
    perm: &Permission,
    field: &dyn Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let err = |f: &str, m: &str| Err((field(f), m.to_owned()));
    match &perm.credential {
        CredentialSource::Keyring { .. } if perm.username.is_empty() => {
            err("username", "must not be empty")
        }
        CredentialSource::Keyring { .. } => Ok(()),
        CredentialSource::Command {
            argv,
            timeout_seconds,
        } => {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return err(
                    "credential.argv",
                    "must name a program, e.g. [\"op\", \"read\", \"op://vault/db/password\"]",
                );
            }
            if !(1..=300).contains(timeout_seconds) {
                return err("credential.timeout_seconds", "must be between 1 and 300");
            }
            Ok(())
        }
        CredentialSource::Dynamic(d) => {
            if !perm.username.is_empty() {
                return err("username", "not used with source = \"dynamic\": each grant gets its own role (agentd_g_…); set credential.admin_username for the admin login");
            }
            if d.admin_username.is_empty() {
                return err("credential.admin_username", "must not be empty");
            }
            if d.connection_limit < -1 {
                return err(
                    "credential.connection_limit",
                    "must be -1 (no limit) or more",
                );
            }
            if d.orphan_owner.is_empty() || d.orphan_owner.eq_ignore_ascii_case(&d.admin_username) {
                return err(
                    "credential.orphan_owner",
                    "must name a role of its own (not the admin): it takes over what grants' roles leave behind",
                );
            }
            for (i, role) in d.grant_roles.iter().enumerate() {
                if role.is_empty() {
                    return err(&format!("credential.grant_roles[{i}]"), "must not be empty");
                }
            }
            if !d.creation_statements.is_empty()
                && !d.creation_statements.iter().any(|s| s.contains("{{name}}"))
            {
                return err(
                    "credential.creation_statements",
                    "must use {{name}} (the generated role)",
                );
            }
            if !d.revocation_statements.is_empty()
                && !d
                    .revocation_statements
                    .iter()
                    .any(|s| s.contains("{{name}}"))
            {
                return err(
                    "credential.revocation_statements",
                    "must use {{name}} (the role to drop)",
                );
            }
            Ok(())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[resources.app]
kind = "postgres"
host = "127.0.0.1"
database = "app"
tls = "require"
[resources.app.permissions.ro]
username = "agent_ro"
policy = "auto"
max_ttl = "1h"
default_ttl = "2h"
"#;

    #[test]
    fn parses_and_clamps_default_ttl() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        let (r, p) = c.permission("app", "ro").unwrap();
        assert_eq!(r.port, 5432);
        assert_eq!(p.effective_default_ttl(), Duration::from_secs(3600));
        assert_eq!(p.credential, CredentialSource::Keyring { entry: None });
    }

    #[test]
    fn error_names_file_line_and_field() {
        let bad = GOOD.replace("host = \"127.0.0.1\"\n", "");
        let err = Config::parse(&bad, Path::new("/etc/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/c.toml"), "{err}");
        assert!(err.contains("line "), "{err}");
        assert!(err.contains("host"), "{err}");

        let bad = GOOD.replace("max_ttl = \"1h\"", "max_ttl = \"soon\"");
        let err = Config::parse(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 10"), "{err}");
        assert!(
            err.contains("field resources.app.permissions.ro.max_ttl"),
            "{err}"
        );
        assert!(err.contains("invalid duration"), "{err}");

        let bad = GOOD.replace("tls = \"require\"", "tls = \"disable\"");
        let err = Config::parse(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("resources.app.tls"), "{err}");
        assert!(err.contains("allow_insecure"), "{err}");

        let bad = GOOD.replace("policy = \"auto\"", "polcy = \"auto\"");
        let err = Config::parse(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("polcy"), "{err}");
    }

    #[test]
    fn new_settings_have_defaults() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.daemon.pending_timeout, Duration::from_secs(600));
        assert!(c.daemon.notify);
        assert_eq!(c.daemon.data_dir, None);
        assert!(
            c.daemon.data_dir().ends_with("agentd") || c.daemon.data_dir().ends_with("agentd-data")
        );
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.audit.max_file_bytes, 64 * 1024 * 1024);
        let (_, p) = c.permission("app", "ro").unwrap();
        assert_eq!(p.over_max_ttl, OverMaxTtl::Clamp);
        assert!(p.rules.is_empty());
    }

    #[test]
    fn parses_daemon_audit_and_rules() {
        let text = format!(
            r#"
[daemon]
data_dir = "/srv/agentd"
pending_timeout = "2m"
notify = false
[audit]
statements = false
max_file_bytes = 4096
fsync = false
{GOOD}
over_max_ttl = "refuse"
[[resources.app.permissions.ro.rules]]
agents = ["claude-code", "Cursor"]
window = {{ days = ["mon", "FRI", "sunday"], start = "22:00", end = "06:00" }}
policy = "deny"
max_ttl = "5m"
[[resources.app.permissions.ro.rules]]
policy = "approval"
"#
        );
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(c.daemon.data_dir(), PathBuf::from("/srv/agentd"));
        assert_eq!(c.audit_dir(), PathBuf::from("/srv/agentd/audit"));
        assert_eq!(c.daemon.pending_timeout, Duration::from_secs(120));
        assert!(!c.daemon.notify);
        assert!(!c.audit.statements && !c.audit.fsync);
        let (_, p) = c.permission("app", "ro").unwrap();
        assert_eq!(p.over_max_ttl, OverMaxTtl::Refuse);
        assert_eq!(p.rules.len(), 2);
        let w = p.rules[0].window.as_ref().unwrap();
        use chrono::Weekday::*;
        assert_eq!(w.days, vec![Mon, Fri, Sun]);
        assert!(w.is_overnight());
        assert_eq!(w.start, chrono::NaiveTime::from_hms_opt(22, 0, 0).unwrap());
        assert_eq!(p.rules[0].max_ttl, Some(Duration::from_secs(300)));
        assert_eq!(p.rules[1].agents, Vec::<String>::new());
        assert_eq!(p.rules[1].window, None);
    }

    #[test]
    fn clock_times() {
        for ok in ["00:00", "9:05", "23:59", "12:30"] {
            assert!(parse_clock_time(ok).is_some(), "{ok}");
        }
        for bad in [
            "25:00", "24:00", "12:60", "12", "12:5", "1200", "", ":30", "-1:00", "12:30:00", "9am",
        ] {
            assert!(parse_clock_time(bad).is_none(), "{bad}");
        }
    }

    fn err_of(extra: &str) -> String {
        Config::parse(&format!("{GOOD}{extra}"), Path::new("c.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rule_errors_name_the_field() {
        let rule = |body: &str| format!("[[resources.app.permissions.ro.rules]]\n{body}\n");
        let cases = [
            (
                rule("policy = \"auto\"\nwindow = { start = \"25:00\", end = \"06:00\" }"),
                "resources.app.permissions.ro.rules[0].window.start: invalid time \"25:00\"",
            ),
            (
                format!(
                    "{}{}",
                    rule("policy = \"auto\""),
                    rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"6pm\" }")
                ),
                "resources.app.permissions.ro.rules[1].window.end: invalid time \"6pm\"",
            ),
            (
                rule("policy = \"auto\"\nwindow = { days = [\"mon\", \"funday\"], start = \"09:00\", end = \"17:00\" }"),
                "resources.app.permissions.ro.rules[0].window.days[1]: invalid day \"funday\"",
            ),
            (
                rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"09:00\" }"),
                "resources.app.permissions.ro.rules[0].window.end: start and end must differ",
            ),
            (
                rule("policy = \"auto\"\nagents = [\"claude code\"]"),
                "resources.app.permissions.ro.rules[0].agents[0]: invalid agent type \"claude code\"",
            ),
            (
                rule("policy = \"auto\"\nmax_ttl = \"0s\""),
                "resources.app.permissions.ro.rules[0].max_ttl: must be at least 1s",
            ),
            (
                rule("policy = \"auto\"\nagent = [\"x\"]"),
                "unknown field `agent`",
            ),
            (rule("agents = []"), "missing field `policy`"),
            (
                rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"17:00\", tz = \"UTC\" }"),
                "unknown field `tz`",
            ),
            (
                "over_max_ttl = \"truncate\"\n".to_owned(),
                "field resources.app.permissions.ro.over_max_ttl",
            ),
        ];
        for (extra, want) in cases {
            let err = err_of(&extra);
            assert!(err.contains(want), "{extra}\n=> {err}\nwanted {want}");
            assert!(err.contains("c.toml"), "{err}");
        }
    }

    #[test]
    fn credential_sources_parse_and_validate() {
        let base = GOOD.replace("username = \"agent_ro\"\n", "");
        let with = |cred: &str| {
            Config::parse(
                &base.replace("policy = \"auto\"", &format!("{cred}\npolicy = \"auto\"")),
                Path::new("c.toml"),
            )
        };
        let c = with(r#"credential = { source = "command", argv = ["op", "read", "op://v/db"] }"#)
            .unwrap();
        let (_, p) = c.permission("app", "ro").unwrap();
        assert_eq!(
            p.credential,
            CredentialSource::Command {
                argv: vec!["op".into(), "read".into(), "op://v/db".into()],
                timeout_seconds: 10
            }
        );
        assert_eq!(p.credential.keychain_entry("app", "ro"), None);
        let c = with(
            r#"credential = { source = "dynamic", admin_username = "adm", grant_roles = ["ro"] }"#,
        )
        .unwrap();
        let (_, p) = c.permission("app", "ro").unwrap();
        let CredentialSource::Dynamic(d) = &p.credential else {
            panic!("{:?}", p.credential)
        };
        assert_eq!(
            (d.connection_limit, d.admin_entry("app").as_str()),
            (10, "app/admin")
        );
        assert_eq!(
            p.credential.keychain_entry("app", "ro").as_deref(),
            Some("app/admin")
        );
        let c = with("username = \"u\"\ncredential = { source = \"keychain\" }").unwrap();
        assert_eq!(
            c.permission("app", "ro")
                .unwrap()
                .1
                .credential
                .keychain_entry("app", "ro")
                .as_deref(),
            Some("app/ro")
        );

        for (cred, want) in [
            (
                "",
                "resources.app.permissions.ro.username: must not be empty",
            ),
            (
                r#"credential = { source = "command", argv = [] }"#,
                "credential.argv: must name a program",
            ),
            (
                r#"credential = { source = "command", argv = ["x"], timeout_seconds = 0 }"#,
                "credential.timeout_seconds: must be between 1 and 300",
            ),
            (
                r#"credential = { source = "command", argv = ["x"], shell = true }"#,
                "unknown field `shell`",
            ),
            (
                r#"username = "u"
credential = { source = "dynamic", admin_username = "adm" }"#,
                "username: not used with source = \"dynamic\"",
            ),
            (
                r#"credential = { source = "dynamic", admin_username = "" }"#,
                "credential.admin_username: must not be empty",
            ),
            (
                r#"credential = { source = "dynamic", admin_username = "a", connection_limit = -2 }"#,
                "credential.connection_limit",
            ),
            (
                r#"credential = { source = "dynamic", admin_username = "a", creation_statements = ["CREATE ROLE x"] }"#,
                "must use {{name}}",
            ),
            (
                r#"credential = { source = "vault" }"#,
                "unknown variant `vault`",
            ),
        ] {
            let err = with(cred).unwrap_err().to_string();
            assert!(err.contains(want), "{cred}\n=> {err}\nwanted {want}");
        }
    }

    #[test]
    fn daemon_and_audit_limits() {
        let with = |head: &str| {
            Config::parse(&format!("{head}\n{GOOD}"), Path::new("c.toml"))
                .unwrap_err()
                .to_string()
        };
        let err = with("[daemon]\npending_timeout = \"500ms\"");
        assert!(
            err.contains("daemon.pending_timeout: must be at least 1s"),
            "{err}"
        );
        let err = with("[daemon]\ndata_dir = \"relative/dir\"");
        assert!(
            err.contains("daemon.data_dir: must be an absolute path"),
            "{err}"
        );
        let err = with("[audit]\nmax_file_bytes = 4095");
        assert!(
            err.contains("audit.max_file_bytes: must be at least 4096"),
            "{err}"
        );
        let err = with("[audit]\nrotate = true");
        assert!(err.contains("unknown field `rotate`"), "{err}");
        let bad = GOOD.replace("default_ttl = \"2h\"", "default_ttl = \"0s\"");
        let err = Config::parse(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resources.app.permissions.ro.default_ttl: must be at least 1s"),
            "{err}"
        );
    }
}
