//! `agentd config check [--json]`: load and validate the config, then show what it means —
//! per resource the upstream and TLS mode, per permission the login, the credential (and
//! whether its secret is stored), the TTLs and the policy in plain English — plus where
//! the audit log goes, and warnings about risky or dead settings.
//!
//! Secrets are only probed for presence (fetched and dropped at once, never printed), on a
//! separate thread with a timeout so a locked desktop keychain cannot hang the check.

use crate::config::{Config, CredentialSource, OverMaxTtl, Permission, Resource, TlsMode};
use crate::credentials::{self, keychain, CredentialError};
use crate::policy;
use agentd_proto::PolicyDecision;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether a permission says it only reads: its name or description has the word `read`,
/// `ro`, `readonly` or `select` (agentd cannot see the upstream role's privileges, so this
/// is what the admin wrote). Used for the "prefer dynamic roles" advice.
fn reads_only(name: &str, perm: &Permission) -> bool {
    let text = format!("{name} {}", perm.description).to_ascii_lowercase();
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| matches!(w, "read" | "ro" | "readonly" | "select" | "reader"))
        && !text.contains("write")
}

/// How long one keychain presence probe may take before the rest are skipped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `agentd config check` arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigCheckArgs {
    /// Print one JSON object `{ok, path, resources, warnings, error?}` instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Checks the config at `config_path` and prints the report (text or JSON) on stdout; in
/// text mode a load error goes to stderr. Returns the process exit code: 0 when the config
/// loads (warnings included), 1 when it does not (the message names the file, line,
/// column and field).
///
/// # Errors
/// Only when the report cannot be written (stdout closed) or serialized.
pub fn run(config_path: &Path, args: &ConfigCheckArgs) -> anyhow::Result<i32> {
    let report = check(config_path, &mut probe_keychain());
    let code = if report.ok { 0 } else { 1 };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(error) = &report.error {
        eprintln!("agentd: {error}");
    } else {
        out!("{}", render_text(&report));
    }
    Ok(code)
}

/// Whether a permission's keychain secret (the login's, or a dynamic permission's admin
/// password) is stored. In JSON: `"present"`, `"missing"`, `"error"` (the message goes in
/// `secret_error`), `"unknown"` or `"external"` (a `command` source: nothing in the
/// keychain, the program runs at grant time and is not run by the check).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SecretStatus {
    Present,
    Missing,
    /// The keychain failed (its message, never the secret).
    Error(String),
    /// Not probed: an earlier probe timed out.
    Unknown,
    /// A `command` source: no keychain secret.
    External,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify: Option<bool>,
    resources: Vec<ResourceReport>,
    /// Every warning as `field: message`.
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct AuditReport {
    dir: PathBuf,
    statements: bool,
    max_file_bytes: u64,
    fsync: bool,
}

#[derive(Debug, Serialize)]
struct ResourceReport {
    name: String,
    kind: &'static str,
    host: String,
    port: u16,
    database: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
    /// `http`: where the credential goes upstream and where the client puts the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    tls: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    permissions: Vec<PermissionReport>,
    #[serde(skip)]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PermissionReport {
    name: String,
    username: String,
    credential: String,
    #[serde(serialize_with = "secret_word")]
    secret: SecretStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_error: Option<String>,
    policy: PolicyDecision,
    default_ttl: String,
    default_ttl_seconds: u64,
    max_ttl: String,
    max_ttl_seconds: u64,
    over_max_ttl: &'static str,
    rules: usize,
    explain: Vec<String>,
    /// `http`: the allow list in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    allows: Option<String>,
    #[serde(skip)]
    warnings: Vec<String>,
}

/// Builds the report; `probe(config, resource, permission)` says whether the secret is
/// stored.
fn check(path: &Path, probe: &mut dyn FnMut(&Config, &str, &str) -> SecretStatus) -> Report {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return Report {
                ok: false,
                path: path.to_owned(),
                error: Some(e.to_string()),
                data_dir: None,
                audit: None,
                pending_timeout: None,
                pending_timeout_seconds: None,
                notify: None,
                resources: Vec::new(),
                warnings: Vec::new(),
            }
        }
    };
    let resources: Vec<ResourceReport> = config
        .resources
        .iter()
        .map(|(name, res)| resource_report(&config, name, res, probe))
        .collect();
    let mut warnings = Vec::new();
    if resources.is_empty() {
        warnings.push("resources: none configured; agents can request nothing".to_owned());
    }
    for r in &resources {
        warnings.extend(r.warnings.iter().cloned());
        for p in &r.permissions {
            warnings.extend(p.warnings.iter().cloned());
            // Shown on the permission's `secret:` line in text mode, so not in `p.warnings`.
            let field = format!("resources.{}.permissions.{}", r.name, p.name);
            match &p.secret {
                SecretStatus::Missing => warnings.push(format!(
                    "{field}: no secret stored; run `agentd secret set {} {}`",
                    r.name, p.name
                )),
                SecretStatus::Error(message) => {
                    warnings.push(format!("{field}: keychain error: {message}"));
                }
                SecretStatus::Present | SecretStatus::Unknown | SecretStatus::External => {}
            }
        }
    }
    Report {
        ok: true,
        path: path.to_owned(),
        error: None,
        data_dir: Some(config.daemon.data_dir()),
        audit: Some(AuditReport {
            dir: config.audit_dir(),
            statements: config.audit.statements,
            max_file_bytes: config.audit.max_file_bytes,
            fsync: config.audit.fsync,
        }),
        pending_timeout: Some(fmt(config.daemon.pending_timeout)),
        pending_timeout_seconds: Some(config.daemon.pending_timeout.as_secs()),
        notify: Some(config.daemon.notify),
        resources,
        warnings,
    }
}

fn resource_report(
    config: &Config,
    name: &str,
    res: &Resource,
    probe: &mut dyn FnMut(&Config, &str, &str) -> SecretStatus,
) -> ResourceReport {
    let mut warnings = Vec::new();
    match res.tls {
        TlsMode::Require => warnings.push(format!(
            "resources.{name}.tls: \"require\" encrypts but does not check the server's identity (an active attacker can impersonate it and collect the password); use \"verify-full\""
        )),
        TlsMode::Disable => warnings.push(format!(
            "resources.{name}.tls: \"disable\" sends the upstream login in the clear over the network"
        )),
        TlsMode::VerifyFull => {}
    }
    if res.allow_weak_auth {
        warnings.push(format!(
            "resources.{name}.allow_weak_auth: agentd answers a cleartext-password or md5 request from the server{}; an impersonating server gets the password or a password-equivalent hash. Use SCRAM (password_encryption = scram-sha-256) and remove it",
            if res.tls == TlsMode::VerifyFull { "" } else { " although tls is not \"verify-full\"" }
        ));
    }
    if res.ca_file.is_some() && res.tls != TlsMode::VerifyFull {
        warnings.push(format!(
            "resources.{name}.ca_file: only used with tls = \"verify-full\""
        ));
    }
    ResourceReport {
        name: name.to_owned(),
        kind: res.kind.as_str(),
        host: res.host.clone(),
        port: res.port,
        database: res.database.clone(),
        base_url: res.base_url.clone(),
        auth: res.auth.as_ref().map(|a| {
            format!(
                "{} (the client sends the grant token as {})",
                a.scheme(),
                a.token_placement()
            )
        }),
        tls: match res.tls {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        },
        ca_file: res.ca_file.clone(),
        permissions: res
            .permissions
            .iter()
            .map(|(pname, perm)| {
                permission_report(name, pname, perm, probe(config, name, pname), config)
            })
            .collect(),
        warnings,
    }
}

fn permission_report(
    resource: &str,
    name: &str,
    perm: &Permission,
    secret: SecretStatus,
    config: &Config,
) -> PermissionReport {
    let field = format!("resources.{resource}.permissions.{name}");
    let mut warnings = Vec::new();
    let long_auto = |max: Duration| max > policy::LONG_AUTO_TTL;
    if perm.policy == PolicyDecision::Auto && long_auto(perm.max_ttl) {
        warnings.push(format!(
            "{field}: policy = \"auto\" with max_ttl {} (over {}): agents get long access with no human in the loop",
            fmt(perm.max_ttl),
            fmt(policy::LONG_AUTO_TTL)
        ));
    }
    for (i, rule) in perm.rules.iter().enumerate() {
        let max = rule.max_ttl.unwrap_or(perm.max_ttl);
        if rule.policy == PolicyDecision::Auto && long_auto(max) {
            warnings.push(format!(
                "{field}.rules[{i}]: policy = \"auto\" with max_ttl {} (over {}): agents get long access with no human in the loop",
                fmt(max),
                fmt(policy::LONG_AUTO_TTL)
            ));
        }
    }
    for (i, rule) in perm.rules.iter().enumerate() {
        if policy::auto_on_claim_only(rule) {
            let fix = match config.daemon.mode {
                crate::principal::Mode::System => "add `users = [\"<OS user>\"]` (checked by the daemon from the peer's uid) or use policy = \"approval\"",
                crate::principal::Mode::User => "in user mode every requester runs as you, so `users` cannot tell an agent from you either: use policy = \"approval\", or system mode with `users`",
            };
            warnings.push(format!(
                "{field}.rules[{i}]: policy = \"auto\" trusts only the agent type ({}), which the client claims: any local process that says it is {} gets this access with no human in the loop; {fix}",
                rule.agents.join(", "),
                rule.agents.first().map(String::as_str).unwrap_or("that agent")
            ));
        }
        for user in &rule.users {
            if nix::unistd::User::from_name(user).ok().flatten().is_none() {
                warnings.push(format!(
                    "{field}.rules[{i}].users: no OS user {user:?} on this machine; the rule matches nobody until it exists"
                ));
            }
        }
    }
    for (shadowed, by) in policy::shadowed_rules(perm) {
        warnings.push(format!(
            "{field}.rules[{shadowed}]: can never match: rules[{by}] ({}) has no window and covers the same users and agents, so it always decides first",
            policy::describe_rule(&perm.rules[by])
        ));
    }
    if let Some(d) = perm.default_ttl {
        if d > perm.max_ttl {
            warnings.push(format!(
                "{field}.default_ttl: {} is above max_ttl {}; requests without a duration get {}",
                fmt(d),
                fmt(perm.max_ttl),
                fmt(perm.max_ttl)
            ));
        }
    }
    if !matches!(perm.credential, CredentialSource::Dynamic(_)) && !reads_only(name, perm) {
        warnings.push(format!(
            "{field}.credential: a fixed login; if this permission can write, prefer source = \"dynamic\": the role is created per grant and dies with it (its VALID UNTIL bounds even a killed daemon), so nothing done inside a grant outlives it. With a fixed login agentd refuses ALTER ROLE … PASSWORD on the wire, but dynamic SQL (DO blocks, EXECUTE) is only found after the grant, by a login check"
        ));
    }
    let auth = config.resources.get(resource).and_then(|r| r.auth.as_ref());
    warnings.extend(crate::config::http::allow_warnings(
        &field,
        auth,
        &perm.allow,
    ));
    let default_ttl = perm.effective_default_ttl();
    PermissionReport {
        name: name.to_owned(),
        username: match &perm.credential {
            CredentialSource::Dynamic(_) => "agentd_<grant id> (created per grant)".to_owned(),
            CredentialSource::Command { .. } if perm.username.is_empty() => {
                "(from the command's output)".to_owned()
            }
            _ => perm.username.clone(),
        },
        credential: describe_credential(
            &perm.credential,
            &keychain::service_name(&config.daemon),
            resource,
            name,
        ),
        secret_error: match &secret {
            SecretStatus::Error(message) => Some(message.clone()),
            _ => None,
        },
        secret,
        policy: perm.policy,
        default_ttl: fmt(default_ttl),
        default_ttl_seconds: default_ttl.as_secs(),
        max_ttl: fmt(perm.max_ttl),
        max_ttl_seconds: perm.max_ttl.as_secs(),
        over_max_ttl: match perm.over_max_ttl {
            OverMaxTtl::Clamp => "clamp",
            OverMaxTtl::Refuse => "refuse",
        },
        rules: perm.rules.len(),
        explain: policy::explain(perm),
        allows: (!perm.allow.is_empty()).then(|| crate::config::http::explain_allow(&perm.allow)),
        warnings,
    }
}

fn secret_word<S: serde::Serializer>(status: &SecretStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match status {
        SecretStatus::Present => "present",
        SecretStatus::Missing => "missing",
        SecretStatus::Error(_) => "error",
        SecretStatus::Unknown => "unknown",
        SecretStatus::External => "external",
    })
}

fn describe_credential(
    source: &CredentialSource,
    service: &str,
    resource: &str,
    permission: &str,
) -> String {
    let entry = source
        .keychain_entry(resource, permission)
        .unwrap_or_default();
    match source {
        CredentialSource::Keyring { .. } => {
            format!("keychain entry {entry:?} (service {service:?})")
        }
        CredentialSource::Command {
            argv,
            timeout_seconds,
        } => format!(
            "command {:?} printing {{username, password, expires_at?}} JSON (timeout {timeout_seconds}s; cached until expires_at)",
            argv.first().map(String::as_str).unwrap_or_default()
        ),
        CredentialSource::Dynamic(d) => {
            let roles = if d.grant_roles.is_empty() {
                "no grant_roles".to_owned()
            } else {
                format!("IN ROLE {}", d.grant_roles.join(", "))
            };
            format!(
                "dynamic role agentd_g_… per grant ({roles}, connection limit {}), created and dropped by admin {:?} whose password is keychain entry {entry:?} (service {service:?})",
                d.connection_limit, d.admin_username
            )
        }
    }
}

/// The real presence probe: `credentials::fetch_secret` on a thread, the secret dropped at
/// once. After one timeout, every later probe answers `Unknown` without asking.
fn probe_keychain() -> impl FnMut(&Config, &str, &str) -> SecretStatus {
    let mut gave_up = false;
    move |config, resource, permission| {
        if gave_up {
            return SecretStatus::Unknown;
        }
        let Some((_, perm)) = config.permission(resource, permission) else {
            return SecretStatus::Unknown;
        };
        let (settings, source) = (config.daemon.clone(), perm.credential.clone());
        let (resource, permission) = (resource.to_owned(), permission.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let status = match credentials::fetch_secret(&settings, &source, &resource, &permission)
            {
                Ok(Some(secret)) => {
                    drop(secret);
                    SecretStatus::Present
                }
                Ok(None) => SecretStatus::External,
                Err(CredentialError::Missing { .. }) => SecretStatus::Missing,
                Err(CredentialError::Keychain { message, .. }) => SecretStatus::Error(message),
                Err(other) => SecretStatus::Error(other.to_string()),
            };
            let _ = tx.send(status);
        });
        match rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(status) => status,
            Err(_) => {
                gave_up = true;
                SecretStatus::Unknown
            }
        }
    }
}

fn render_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "config {}: ok", report.path.display());
    if let Some(audit) = &report.audit {
        let _ = writeln!(
            out,
            "audit log: {} (statements {}, rotate at {} bytes, fsync {})",
            audit.dir.display(),
            on_off(audit.statements),
            audit.max_file_bytes,
            on_off(audit.fsync)
        );
    }
    if let (Some(t), Some(n)) = (&report.pending_timeout, report.notify) {
        let _ = writeln!(
            out,
            "pending requests expire after {t} (desktop notifications {})",
            on_off(n)
        );
    }
    for r in &report.resources {
        match &r.base_url {
            Some(url) => {
                let _ = writeln!(out, "\nresource {} ({}): {url}", r.name, r.kind);
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nresource {} ({}): {}:{}/{}",
                    r.name, r.kind, r.host, r.port, r.database
                );
            }
        }
        if let Some(auth) = &r.auth {
            let _ = writeln!(out, "  auth: {auth}");
        }
        let ca = r
            .ca_file
            .as_ref()
            .map(|p| format!(" (CA {})", p.display()))
            .unwrap_or_default();
        let _ = writeln!(out, "  tls: {}{ca}", r.tls);
        for w in &r.warnings {
            let _ = writeln!(out, "  warning: {}", strip_field(w));
        }
        for p in &r.permissions {
            let _ = writeln!(out, "  permission {}", p.name);
            let _ = writeln!(out, "    username:   {}", p.username);
            let _ = writeln!(out, "    credential: {}", p.credential);
            let secret = match &p.secret {
                SecretStatus::Present => "present".to_owned(),
                SecretStatus::Missing => {
                    format!("missing — run `agentd secret set {} {}`", r.name, p.name)
                }
                SecretStatus::Error(m) => format!("unknown (keychain error: {m})"),
                SecretStatus::Unknown => "unknown (keychain did not answer; skipped)".to_owned(),
                SecretStatus::External => {
                    "not in the keychain: the command runs at grant time (not run by this check)"
                        .to_owned()
                }
            };
            let _ = writeln!(out, "    secret:     {secret}");
            let _ = writeln!(
                out,
                "    ttl:        default {}, max {}",
                p.default_ttl, p.max_ttl
            );
            if let Some(allows) = &p.allows {
                let _ = writeln!(out, "    allows:     {allows}");
            }
            let _ = writeln!(out, "    policy:");
            for line in &p.explain {
                let _ = writeln!(out, "      {line}");
            }
            for w in &p.warnings {
                let _ = writeln!(out, "    warning: {}", strip_field(w));
            }
        }
    }
    let _ = match report.warnings.len() {
        0 => writeln!(out, "\nno warnings"),
        1 => writeln!(out, "\n1 warning"),
        n => writeln!(out, "\n{n} warnings"),
    };
    out
}

/// Drops the `resources.R` / `resources.R.permissions.P` prefix of a `field: message`
/// warning, which the text layout already shows: `resources.app.tls: …` → `tls: …`,
/// `resources.app.permissions.ro.rules[1]: …` → `rules[1]: …`,
/// `resources.app.permissions.ro: …` → `…`.
fn strip_field(warning: &str) -> String {
    let Some((field, message)) = warning.split_once(": ") else {
        return warning.to_owned();
    };
    let rest: Vec<&str> = field.split('.').collect();
    let tail = match rest.as_slice() {
        ["resources", _, "permissions", _, tail @ ..] | ["resources", _, tail @ ..] => {
            tail.join(".")
        }
        _ => field.to_owned(),
    };
    if tail.is_empty() {
        message.to_owned()
    } else {
        format!("{tail}: {message}")
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const CONFIG: &str = r#"
[daemon]
data_dir = "/srv/agentd"
[resources.app]
kind = "postgres"
host = "db.internal"
database = "app"
tls = "require"
[resources.app.permissions.ro]
username = "agent_ro"
policy = "auto"
max_ttl = "12h"
default_ttl = "13h"
[[resources.app.permissions.ro.rules]]
agents = ["cursor"]
policy = "deny"
[[resources.app.permissions.ro.rules]]
agents = ["Cursor"]
window = { days = ["mon"], start = "09:00", end = "10:00" }
policy = "auto"
[resources.app.permissions.rw]
username = "agent_rw"
credential = { source = "keyring", entry = "custom" }
"#;

    fn fake(_: &Config, _: &str, permission: &str) -> SecretStatus {
        match permission {
            "ro" => SecretStatus::Present,
            _ => SecretStatus::Missing,
        }
    }

    #[test]
    fn keychain_errors_are_words_plus_a_message() {
        let (_dir, path) = write(CONFIG);
        let report = check(&path, &mut |_, _, _| SecretStatus::Error("locked".into()));
        let json = serde_json::to_value(&report).unwrap();
        let ro = &json["resources"][0]["permissions"][0];
        assert_eq!(
            (&ro["secret"], &ro["secret_error"]),
            (&"error".into(), &"locked".into())
        );
        assert!(report
            .warnings
            .iter()
            .any(|w| w == "resources.app.permissions.ro: keychain error: locked"));
    }

    #[test]
    fn rules_for_verified_users_are_not_claim_only_and_unknown_users_are_named() {
        let config = CONFIG.replace(
            "agents = [\"Cursor\"]\n",
            "agents = [\"Cursor\"]\nusers = [\"root\", \"no-such-user-agentd\"]\n",
        );
        let (_dir, path) = write(&config);
        let report = check(&path, &mut fake);
        let w = report.warnings.join("\n");
        assert!(!w.contains("trusts only the agent type"), "{w}");
        assert!(
            w.contains(
                "resources.app.permissions.ro.rules[1].users: no OS user \"no-such-user-agentd\""
            ),
            "{w}"
        );
        assert!(!w.contains("no OS user \"root\""), "{w}");
        assert_eq!(
            report.resources[0].permissions[0].explain[1],
            "OS users root, no-such-user-agentd, Cursor (claimed) on Mon 09:00–10:00: auto, max 12h"
        );
    }

    #[test]
    fn reports_resources_permissions_and_warnings() {
        let (_dir, path) = write(CONFIG);
        let report = check(&path, &mut fake);
        assert!(report.ok);
        assert_eq!(
            report.audit.as_ref().unwrap().dir,
            Path::new("/srv/agentd/audit")
        );
        let r = &report.resources[0];
        assert_eq!((r.tls, r.port), ("require", 5432));
        let ro = &r.permissions[0];
        assert_eq!(ro.secret, SecretStatus::Present);
        assert_eq!(ro.explain.len(), 3);
        assert_eq!(ro.explain[0], "cursor (claimed) at any time: deny");
        let rw = &r.permissions[1];
        assert_eq!(
            rw.credential,
            "keychain entry \"custom\" (service \"agentd\")"
        );
        assert_eq!(
            rw.explain,
            vec!["always: approval, max 1h; longer requests are clamped"]
        );

        let w = report.warnings.join("\n");
        for want in [
            "resources.app.permissions.rw.credential: a fixed login; if this permission can write, prefer source = \"dynamic\"",
            "resources.app.tls: \"require\" encrypts but does not check",
            "resources.app.permissions.ro: policy = \"auto\" with max_ttl 12h (over 8h)",
            "resources.app.permissions.ro.rules[1]: can never match: rules[0] (cursor (claimed) at any time: deny)",
            "resources.app.permissions.ro.rules[1]: policy = \"auto\" trusts only the agent type (Cursor), which the client claims",
            "resources.app.permissions.ro.default_ttl: 13h is above max_ttl 12h",
            "resources.app.permissions.rw: no secret stored; run `agentd secret set app rw`",
        ] {
            assert!(w.contains(want), "missing {want:?} in\n{w}");
        }
        assert_eq!(report.warnings.len(), 8, "{w}");

        let text = render_text(&report);
        for want in [
            "resource app (postgres): db.internal:5432/app",
            "  tls: require\n  warning: tls: \"require\" encrypts",
            "    secret:     missing — run `agentd secret set app rw`",
            "    warning: rules[1]: can never match",
            "      otherwise: auto, max 12h; longer requests are clamped",
            "8 warnings",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(
            text.matches("agentd secret set app rw").count(),
            1,
            "{text}"
        );

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["resources"][0]["permissions"][0]["secret"], "present");
        assert_eq!(
            json["resources"][0]["permissions"][0]["max_ttl_seconds"],
            43200
        );
        assert_eq!(json["warnings"].as_array().unwrap().len(), 8);
        assert!(json.get("error").is_none());
    }

    #[test]
    fn allow_weak_auth_is_warned_about() {
        let (_dir, path) = write(&CONFIG.replacen(
            "tls = \"require\"",
            "tls = \"require\"\nallow_weak_auth = true",
            1,
        ));
        let report = check(&path, &mut fake);
        assert!(report.ok);
        let w = report.warnings.join("\n");
        assert!(
            w.contains("resources.app.allow_weak_auth: agentd answers a cleartext-password or md5 request from the server although tls is not \"verify-full\""),
            "{w}"
        );
    }

    #[test]
    fn reports_load_errors() {
        let (_dir, path) = write(&CONFIG.replace("start = \"09:00\"", "start = \"25:00\""));
        let report = check(&path, &mut fake);
        assert!(!report.ok);
        let error = report.error.as_deref().unwrap();
        assert!(
            error.contains(
                "resources.app.permissions.ro.rules[1].window.start: invalid time \"25:00\""
            ),
            "{error}"
        );
        assert!(error.contains("config.toml"), "{error}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], false);
        assert!(json["error"].as_str().unwrap().contains("25:00"));

        let (_dir, path) = write(&CONFIG.replace("host = ", "hots = "));
        let error = check(&path, &mut fake).error.unwrap();
        assert!(error.contains("line 6, column 1"), "{error}");
        assert!(error.contains("hots"), "{error}");

        let report = check(Path::new("/nonexistent/agentd.toml"), &mut fake);
        assert!(!report.ok);
        assert!(report.error.unwrap().contains("/nonexistent/agentd.toml"));
    }

    #[test]
    fn clean_config_has_no_warnings() {
        let (_dir, path) = write(
            r#"
[resources.app]
kind = "postgres"
host = "db"
database = "app"
[resources.app.permissions.ro]
username = "u"
"#,
        );
        let report = check(&path, &mut |_, _, _| SecretStatus::Present);
        assert!(report.ok);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(render_text(&report).contains("no warnings"));
    }
}
