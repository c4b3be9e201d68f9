//! `credential = { source = "dynamic", … }`: a PostgreSQL role born with the grant and
//! dropped when it ends (the model: Vault's database secrets engine).
//!
//! - [`RoleManager::create`]: role `agentd_<grant id>` with a random 256-bit password (only
//!   its SCRAM-SHA-256 verifier is sent to the server), `VALID UNTIL` the grant's expiry,
//!   `IN ROLE` the configured roles, a connection limit; plus agentd's marker
//!   `COMMENT ON ROLE … IS 'agentd grant g_… data-dir <id>'`, all in one transaction.
//! - [`RoleManager::drop_role`]: `pg_terminate_backend` for the role's sessions, then the
//!   revocation statements (default: take over and drop what it owns, drop the role).
//! - [`RoleManager::sweep`]: drops `agentd_%` roles carrying *this* data directory's marker
//!   that no live grant owns (daemon start after a crash). Roles made by another daemon
//!   (another data directory) sharing the server are left alone.
//!
//! The admin login is used only here; listeners log in as the grant's role. No SQL text is
//! logged (it holds the verifier), and admin errors have the password and verifier redacted.

use super::pgadmin::{quote_ident, quote_literal, AdminError, AdminSession};
use super::{CredentialError, Login};
use crate::config::{DynamicRole, Resource};
use crate::listener::postgres::upstream::{self, UpstreamTarget};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Prefix of every role agentd creates.
pub const ROLE_PREFIX: &str = "agentd_";

/// File in the data directory holding its random id (the owner tag in role markers).
pub const OWNER_TAG_FILE: &str = "instance-id";

/// The role name for a grant: `agentd_` + the grant id with anything but ASCII letters,
/// digits and `_` removed, lower-cased (`agentd_g_1a2b3c4d5e6f7a8b`).
pub fn role_name(grant_id: &str) -> String {
    let clean: String = grant_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .map(|c| c.to_ascii_lowercase())
        .take(50)
        .collect();
    format!("{ROLE_PREFIX}{clean}")
}

/// The comment agentd puts on its roles: `agentd grant GRANT data-dir TAG`.
pub fn marker(grant_id: &str, owner_tag: &str) -> String {
    format!("agentd grant {grant_id} data-dir {owner_tag}")
}

/// This data directory's id (16 hex digits in `DATA_DIR/instance-id`), created on first
/// use. Roles are marked with it so that a sweep drops only roles this data directory made.
///
/// # Errors
/// The file cannot be read or written.
pub fn owner_tag(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(OWNER_TAG_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let tag = text.trim();
        if tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(tag.to_owned());
        }
    }
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::fsutil::create_private_dir(data_dir)?;
    std::fs::write(&path, format!("{tag}\n"))?;
    Ok(tag)
}

/// What ending a role did.
#[derive(Debug, Clone, Default)]
pub struct DropReport {
    /// Sessions of the role that `pg_terminate_backend` signalled.
    pub terminated_sessions: u64,
    /// The role is gone (dropped now, or already absent).
    pub dropped: bool,
    /// Why not, as `SQLSTATE message` (no secret).
    pub error: Option<String>,
}

/// What a sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Orphan roles dropped.
    pub dropped: Vec<String>,
    /// Orphan roles that could not be dropped, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Creates and drops the per-grant roles of one dynamic permission. `Debug` redacts the
/// admin password.
#[derive(Debug, Clone)]
pub struct RoleManager {
    admin: UpstreamTarget,
    spec: DynamicRole,
    owner_tag: String,
}

impl RoleManager {
    /// A manager that logs in to `resource` as `spec.admin_username` with `admin_password`.
    ///
    /// # Errors
    /// The resource's TLS settings cannot be used (message names the problem).
    pub fn new(
        resource_name: &str,
        resource: &Resource,
        spec: &DynamicRole,
        admin_password: SecretString,
        connect_timeout: Duration,
        owner_tag: &str,
    ) -> Result<Self, CredentialError> {
        let tls = upstream::tls_for(resource).map_err(|e| {
            CredentialError::Dynamic(format!("resource {resource_name} TLS settings: {e}"))
        })?;
        Ok(Self {
            admin: UpstreamTarget {
                resource: resource_name.to_owned(),
                host: resource.host.clone(),
                port: resource.port,
                database: resource.database.clone(),
                username: spec.admin_username.clone(),
                secret: Arc::new(admin_password),
                tls,
                connect_timeout,
                scram_keys: Default::default(),
                auth: upstream::AuthPolicy::for_resource(resource),
                renewable: None,
            },
            spec: spec.clone(),
            owner_tag: owner_tag.to_owned(),
        })
    }

    /// The admin user name.
    pub fn admin_username(&self) -> &str {
        &self.spec.admin_username
    }

    async fn session(&self) -> Result<AdminSession, CredentialError> {
        AdminSession::connect(&self.admin).await.map_err(|e| {
            CredentialError::Dynamic(format!(
                "admin login as {:?} on {} failed: {e}",
                self.spec.admin_username, self.admin.resource
            ))
        })
    }

    /// Creates the role for `grant_id`, valid until `expires_at`, and returns its login.
    ///
    /// # Errors
    /// [`CredentialError::Dynamic`]: admin login or a creation statement failed (SQLSTATE
    /// and the server's message, password and verifier redacted).
    pub async fn create(
        &self,
        grant_id: &str,
        expires_at: SystemTime,
    ) -> Result<Login, CredentialError> {
        let name = role_name(grant_id);
        let password = random_password();
        let verifier = Zeroizing::new(postgres_protocol::password::scram_sha_256(
            password.expose_secret().as_bytes(),
        ));
        let expiration = chrono::DateTime::<chrono::Utc>::from(expires_at)
            .format("%Y-%m-%d %H:%M:%S+00")
            .to_string();
        let values = Values {
            name: &name,
            password: &verifier,
            expiration: &expiration,
            connection_limit: self.spec.connection_limit,
            grant_roles: &self
                .spec
                .grant_roles
                .iter()
                .map(|r| quote_ident(r))
                .collect::<Vec<_>>()
                .join(", "),
            orphan_owner: "",
        };
        let mut sql = Zeroizing::new(
            creation_statements(&self.spec)
                .iter()
                .map(|s| values.fill(s))
                .collect::<Vec<_>>()
                .join(";\n"),
        );
        sql.push_str(&format!(
            ";\nCOMMENT ON ROLE {} IS {}",
            quote_ident(&name),
            quote_literal(&marker(grant_id, &self.owner_tag))
        ));
        let mut session = self.session().await?;
        let created = session
            .query(&sql, &[password.expose_secret(), verifier.as_str()])
            .await;
        session.close().await;
        created
            .map_err(|e| CredentialError::Dynamic(format!("creating role {name} failed: {e}")))?;
        Ok(Login {
            username: name,
            password,
        })
    }

    /// Terminates the role's sessions and runs the revocation statements. Never fails: the
    /// report says what happened (the grant's access is already cut by the listener).
    pub async fn drop_role(&self, role: &str) -> DropReport {
        let mut report = DropReport::default();
        let mut session = match self.session().await {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        let result = self.drop_in(&mut session, role, &mut report).await;
        session.close().await;
        match result {
            Ok(()) => report.dropped = true,
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }

    async fn drop_in(
        &self,
        session: &mut AdminSession,
        role: &str,
        report: &mut DropReport,
    ) -> Result<(), AdminError> {
        let role_literal = quote_literal(role);
        let terminated = session
            .query(
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {role_literal}"
                ),
                &[],
            )
            .await?;
        report.terminated_sessions = terminated
            .iter()
            .filter(|r| r.first().and_then(Option::as_deref) == Some("t"))
            .count() as u64;
        let exists = session
            .query(
                &format!("SELECT 1 FROM pg_roles WHERE rolname = {role_literal}"),
                &[],
            )
            .await?;
        if exists.is_empty() {
            return Ok(());
        }
        let orphan_owner = self.spec.orphan_owner.replace('"', "\"\"");
        let values = Values {
            name: role,
            password: "",
            expiration: "",
            connection_limit: self.spec.connection_limit,
            grant_roles: "",
            orphan_owner: &orphan_owner,
        };
        let statements = revocation_statements(&self.spec);
        if statements.iter().any(|s| s.contains("{{orphan_owner}}")) {
            ensure_orphan_owner(session, &self.spec.orphan_owner).await?;
        }
        let sql = statements
            .iter()
            .map(|s| values.fill(s))
            .collect::<Vec<_>>()
            .join(";\n");
        session.query(&sql, &[]).await.map(|_| ())
    }

    /// Drops every role marked by this data directory that is not in `live`.
    ///
    /// # Errors
    /// The admin login or the listing query failed (nothing was dropped then).
    pub async fn sweep(&self, live: &[String]) -> Result<SweepReport, CredentialError> {
        let mut session = self.session().await?;
        let pattern = format!("agentd grant g!_% data-dir {}", self.owner_tag);
        let listed = session
            .query(
                &format!(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE 'agentd!_%' ESCAPE '!' \
                     AND shobj_description(oid, 'pg_authid') LIKE {} ESCAPE '!' ORDER BY rolname",
                    quote_literal(&pattern)
                ),
                &[],
            )
            .await;
        session.close().await;
        let rows = listed
            .map_err(|e| CredentialError::Dynamic(format!("listing agentd roles failed: {e}")))?;
        let mut report = SweepReport::default();
        for role in rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
        {
            if live.contains(&role) {
                continue;
            }
            let dropped = self.drop_role(&role).await;
            match dropped.error {
                None => report.dropped.push(role),
                Some(e) => report.failed.push((role, e)),
            }
        }
        Ok(report)
    }
}

/// 32 random bytes as 43 base64url characters.
fn random_password() -> SecretString {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut bytes[..]);
    SecretString::from(URL_SAFE_NO_PAD.encode(&bytes[..]))
}

/// The values Vault-style `{{placeholders}}` expand to. All are safe inside `"…"` or `'…'`:
/// the name is `agentd_` + `[a-z0-9_]`, the verifier is base64 plus `$:-`, the expiration
/// digits and `-: +`, the roles already quoted identifiers.
struct Values<'a> {
    name: &'a str,
    password: &'a str,
    expiration: &'a str,
    connection_limit: i32,
    grant_roles: &'a str,
    orphan_owner: &'a str,
}

impl Values<'_> {
    fn fill(&self, statement: &str) -> String {
        statement
            .trim()
            .trim_end_matches(';')
            .replace("{{name}}", self.name)
            .replace("{{password}}", self.password)
            .replace("{{expiration}}", self.expiration)
            .replace("{{connection_limit}}", &self.connection_limit.to_string())
            .replace("{{grant_roles}}", self.grant_roles)
            .replace("{{orphan_owner}}", self.orphan_owner)
    }
}

/// The configured creation statements, or the default.
pub fn creation_statements(spec: &DynamicRole) -> Vec<String> {
    if !spec.creation_statements.is_empty() {
        return spec.creation_statements.clone();
    }
    let mut create = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' CONNECTION LIMIT {{connection_limit}}".to_owned();
    if !spec.grant_roles.is_empty() {
        create.push_str(" IN ROLE {{grant_roles}}");
    }
    vec![create]
}

/// Creates the orphan owner once (NOLOGIN; no privileges, no memberships) if it does not
/// exist, and makes the admin a member of it so `REASSIGN OWNED … TO` it is allowed.
async fn ensure_orphan_owner(session: &mut AdminSession, role: &str) -> Result<(), AdminError> {
    let ident = quote_ident(role);
    let literal = quote_literal(role);
    session
        .query(
            &format!(
                "DO $agentd$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {literal}) THEN \
                 CREATE ROLE {ident} NOLOGIN; END IF; END$agentd$"
            ),
            &[],
        )
        .await?;
    let member = session
        .query(
            &format!("SELECT 1 WHERE pg_has_role(CURRENT_USER, {literal}, 'USAGE')"),
            &[],
        )
        .await?;
    if member.is_empty() {
        session
            .query(&format!("GRANT {ident} TO CURRENT_USER"), &[])
            .await?;
    }
    Ok(())
}

/// The configured revocation statements, or the default.
pub fn revocation_statements(spec: &DynamicRole) -> Vec<String> {
    if !spec.revocation_statements.is_empty() {
        return spec.revocation_statements.clone();
    }
    [
        "GRANT \"{{name}}\" TO CURRENT_USER",
        // For the length of this transaction only (DROP ROLE removes the membership): the
        // orphan owner may then hold what the role created (ALTER OWNER needs CREATE on
        // the schema, which the role had).
        "GRANT \"{{name}}\" TO \"{{orphan_owner}}\"",
        "REASSIGN OWNED BY \"{{name}}\" TO \"{{orphan_owner}}\"",
        "DROP OWNED BY \"{{name}}\"",
        "DROP ROLE IF EXISTS \"{{name}}\"",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DynamicRole {
        DynamicRole {
            admin_username: "adm".into(),
            admin: None,
            grant_roles: vec!["app_ro".into(), "we\"ird".into()],
            connection_limit: 3,
            creation_statements: vec![],
            revocation_statements: vec![],
            orphan_owner: "agentd_orphans".into(),
        }
    }

    #[test]
    fn names_and_markers() {
        assert_eq!(role_name("g_1A2b\"; DROP"), "agentd_g_1a2bdrop");
        assert_eq!(
            marker("g_1", "00ff"),
            "agentd grant g_1 data-dir 00ff".to_owned()
        );
    }

    #[test]
    fn default_statements_fill_placeholders() {
        let s = spec();
        let roles = s
            .grant_roles
            .iter()
            .map(|r| quote_ident(r))
            .collect::<Vec<_>>()
            .join(", ");
        let v = Values {
            name: "agentd_g_1",
            password: "SCRAM-SHA-256$4096:abc$def:ghi",
            expiration: "2026-11-23 12:00:00+00",
            connection_limit: 3,
            grant_roles: &roles,
            orphan_owner: "agentd_orphans",
        };
        let sql = v.fill(&creation_statements(&s)[0]);
        assert_eq!(
            sql,
            "CREATE ROLE \"agentd_g_1\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi' \
             VALID UNTIL '2026-11-23 12:00:00+00' CONNECTION LIMIT 3 IN ROLE \"app_ro\", \"we\"\"ird\""
        );
        let no_roles = DynamicRole {
            grant_roles: vec![],
            ..spec()
        };
        assert!(!creation_statements(&no_roles)[0].contains("IN ROLE"));
        assert_eq!(
            v.fill(&revocation_statements(&s)[4]),
            "DROP ROLE IF EXISTS \"agentd_g_1\""
        );
    }

    #[test]
    fn owner_tag_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = owner_tag(dir.path()).unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(owner_tag(dir.path()).unwrap(), a);
    }

    #[test]
    fn passwords_are_random_and_long() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
