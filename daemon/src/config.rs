//! The TOML configuration: resources, their permissions, credentials and policy.
//!
//! Default path: `~/.config/agentd/config.toml` (platform config dir), overridable with
//! `--config` / `AGENTD_CONFIG`. Example:
//!
//! ```toml
//! [daemon]
//! keyring_service = "agentd"      # keychain service name the secrets live under
//!
//! [resources.app-db]
//! kind = "postgres"
//! description = "Orders and customers"
//! host = "db.internal"
//! port = 5432
//! database = "app"
//! tls = "verify-full"              # disable | require | verify-full
//! ca_file = "/etc/ssl/db-ca.pem"   # optional; system roots otherwise
//!
//! [resources.app-db.permissions.read_only]
//! description = "SELECT on all tables"
//! username = "agent_ro"
//! credential = { source = "keyring" }   # `agentd secret set app-db read_only`
//! policy = "auto"                        # auto | approval | deny
//! default_ttl = "30m"
//! max_ttl = "2h"
//! ```
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
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            keyring_service: default_keyring_service(),
            listen_host: default_listen_host(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

fn default_keyring_service() -> String {
    "agentd".to_owned()
}
fn default_listen_host() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
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

/// A named level of access on a resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// Free text shown to agents.
    #[serde(default)]
    pub description: String,
    /// Upstream user name the daemon logs in as.
    pub username: String,
    /// Where the secret for `username` comes from.
    #[serde(default)]
    pub credential: CredentialSource,
    /// `auto`, `approval` or `deny` (default `approval`).
    #[serde(default = "default_policy")]
    pub policy: PolicyDecision,
    /// Duration when the request names none (default `15m`, never above `max_ttl`).
    #[serde(default, with = "humantime_serde_compat::option")]
    pub default_ttl: Option<Duration>,
    /// Longest grant; longer requests are clamped to it (default `1h`).
    #[serde(default = "default_max_ttl", with = "humantime_serde_compat")]
    pub max_ttl: Duration,
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

/// Where a permission's upstream secret comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSource {
    /// The OS keychain, entry `RESOURCE/PERMISSION` under the daemon's keyring service
    /// (or `entry` when given). Set it with `agentd secret set RESOURCE PERMISSION`.
    Keyring {
        /// Explicit entry name instead of `RESOURCE/PERMISSION`.
        #[serde(default)]
        entry: Option<String>,
    },
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
                if perm.username.is_empty() {
                    return Err(invalid(field("username"), "must not be empty"));
                }
            }
        }
        Ok(())
    }

    /// Looks up a resource and one of its permissions.
    pub fn permission(&self, resource: &str, permission: &str) -> Option<(&Resource, &Permission)> {
        let res = self.resources.get(resource)?;
        Some((res, res.permissions.get(permission)?))
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
pub fn default_config_path() -> PathBuf {
    directories::ProjectDirs::from("", "", "agentd")
        .map(|d| d.config_dir().join("config.toml"))
        .unwrap_or_else(|| PathBuf::from("agentd.toml"))
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
}
