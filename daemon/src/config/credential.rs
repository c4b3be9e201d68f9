//! `credential = { source = … }`: where a permission's upstream secret comes from (keychain,
//! command, dynamic PostgreSQL role), and the checks that tie it to `username`.

use super::http::HttpAuth;
use super::{Permission, ResourceKind};
use serde::Deserialize;

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

/// Checks a permission's `username` and `credential` together; the error is `(field,
/// message)`.
pub(super) fn validate_credential(
    kind: ResourceKind,
    auth: Option<&HttpAuth>,
    perm: &Permission,
    field: &dyn Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let err = |f: &str, m: &str| Err((field(f), m.to_owned()));
    if kind == ResourceKind::Http {
        // The secret is a token or key; a user name only matters for basic auth.
        if matches!(perm.credential, CredentialSource::Dynamic(_)) {
            return err("credential", "source = \"dynamic\" makes PostgreSQL roles; use keyring or command for http resources");
        }
        if let Some(HttpAuth::Basic { username }) = auth {
            if username.is_empty() && perm.username.is_empty() {
                return err(
                    "username",
                    "basic auth needs a user name: set auth.username or the permission's username",
                );
            }
        }
        if let CredentialSource::Command {
            argv,
            timeout_seconds,
        } = &perm.credential
        {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return err("credential.argv", "must name a program");
            }
            if !(1..=300).contains(timeout_seconds) {
                return err("credential.timeout_seconds", "must be between 1 and 300");
            }
        }
        return Ok(());
    }
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
