//! `agentd secret set|delete RESOURCE PERMISSION` and `agentd secret list [--json]`.
//!
//! `set` reads the secret from a no-echo prompt (or stdin when it is not a terminal), never
//! from the command line, and stores it in the OS keychain under the keychain service name
//! ([`keychain::service_name`]). For a `dynamic` permission the secret is the admin
//! login's password. `list` shows entry names and whether each is stored, never a value.

use super::SecretCommand;
use crate::config::{Config, CredentialSource, DaemonSettings};
use crate::credentials::keychain;
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::time::Duration;

/// How long `secret list` waits for one keychain lookup before reporting it unknown.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `agentd secret …`.
///
/// # Errors
/// Unknown resource/permission (when a config exists), a `command` permission (nothing to
/// store), an empty secret, or keychain errors.
pub async fn run(config_path: &Path, cmd: &SecretCommand) -> anyhow::Result<()> {
    let config = if config_path.exists() {
        Some(Config::load(config_path)?)
    } else {
        None
    };
    let settings = config
        .as_ref()
        .map(|c| c.daemon.clone())
        .unwrap_or_default();
    let service = keychain::service_name(&settings);
    match cmd {
        SecretCommand::Set {
            resource,
            permission,
        } => {
            let (entry, what) = entry_for(config.as_ref(), resource, permission)?;
            let secret = read_secret(resource, permission, what)?;
            store(&settings, entry.clone(), secret).await?;
            eprintln!("stored the {what} for {resource}/{permission} in the keychain (service {service:?}, entry {entry:?})");
        }
        SecretCommand::Delete {
            resource,
            permission,
        } => {
            let (entry, what) = entry_for(config.as_ref(), resource, permission)?;
            let e2 = entry.clone();
            tokio::task::spawn_blocking(move || keychain::delete(&service, &e2))
                .await?
                .with_context(|| format!("deleting keychain entry {entry:?}"))?;
            eprintln!("deleted the {what} for {resource}/{permission}");
        }
        SecretCommand::List { json } => {
            let Some(config) = config else {
                bail!(
                    "no config at {}; `secret list` shows the entries a config uses",
                    config_path.display()
                );
            };
            let listing = list(&config).await;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                out!("{}", render(&listing));
            }
        }
    }
    Ok(())
}

/// `agentd secret …` against the system daemon (admins only): the value goes over the
/// control socket in a zeroizing [`agentd_proto::SecretValue`], read from a no-echo prompt or
/// stdin, never argv; the daemon picks the entry from its own config.
///
/// # Errors
/// The daemon's refusal (not an admin, unknown permission), an empty secret, socket errors.
pub async fn run_remote(socket: &Path, cmd: &SecretCommand) -> anyhow::Result<()> {
    use agentd_proto::{Request, Response};
    match cmd {
        SecretCommand::Set {
            resource,
            permission,
        } => {
            let secret = read_secret(resource, permission, "secret")?;
            let value = agentd_proto::SecretValue::new(secret.expose_secret().to_owned());
            drop(secret);
            let request = Request::SetSecret {
                resource: resource.clone(),
                permission: permission.clone(),
                value,
            };
            if let Response::Done { message } = super::call(socket, request).await? {
                eprintln!("{message}");
            }
        }
        SecretCommand::Delete {
            resource,
            permission,
        } => {
            let request = Request::DeleteSecret {
                resource: resource.clone(),
                permission: permission.clone(),
            };
            if let Response::Done { message } = super::call(socket, request).await? {
                eprintln!("{message}");
            }
        }
        SecretCommand::List { json } => {
            let Response::Secrets { store, entries } =
                super::call(socket, Request::ListSecrets).await?
            else {
                bail!("unexpected answer from the daemon");
            };
            if *json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"store": store, "entries": entries})
                    )?
                );
            } else {
                outln!("{store}");
                for e in &entries {
                    outln!(
                        "  {:<32} {:<6} {:<8} used by {}{}",
                        e.entry,
                        e.kind,
                        e.state,
                        e.used_by.join(", "),
                        e.error
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// The keychain entry `set`/`delete` act on, and what it holds (for messages).
fn entry_for(
    config: Option<&Config>,
    resource: &str,
    permission: &str,
) -> anyhow::Result<(String, &'static str)> {
    let Some(config) = config else {
        return Ok((keychain::entry_name(resource, permission), "secret"));
    };
    let Some((_, perm)) = config.permission(resource, permission) else {
        bail!("the config has no permission {permission:?} on resource {resource:?}");
    };
    let what = match &perm.credential {
        CredentialSource::Keyring { .. } => "secret",
        CredentialSource::Dynamic(_) => "admin password",
        CredentialSource::Command { argv, .. } => bail!(
            "{resource}/{permission} gets its credential from the command {:?}; nothing is stored in the keychain for it",
            argv.first().map(String::as_str).unwrap_or_default()
        ),
    };
    let entry = perm
        .credential
        .keychain_entry(resource, permission)
        .unwrap_or_else(|| keychain::entry_name(resource, permission));
    Ok((entry, what))
}

/// `secret list` output.
#[derive(Debug, Serialize)]
struct Listing {
    service: String,
    entries: Vec<EntryStatus>,
    commands: Vec<CommandUse>,
}

#[derive(Debug, Serialize)]
struct EntryStatus {
    entry: String,
    /// `login` (a keyring permission's password) or `admin` (a dynamic permission's).
    kind: &'static str,
    used_by: Vec<String>,
    /// `present`, `missing`, `error` or `unknown` (the keychain did not answer in time).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct CommandUse {
    permission: String,
    program: String,
}

async fn list(config: &Config) -> Listing {
    let mut entries: Vec<EntryStatus> = Vec::new();
    let mut commands = Vec::new();
    for (rname, res) in &config.resources {
        for (pname, perm) in &res.permissions {
            let used_by = format!("{rname}/{pname}");
            let kind = match &perm.credential {
                CredentialSource::Command { argv, .. } => {
                    commands.push(CommandUse {
                        permission: used_by,
                        program: argv.first().cloned().unwrap_or_default(),
                    });
                    continue;
                }
                CredentialSource::Keyring { .. } => "login",
                CredentialSource::Dynamic(_) => "admin",
            };
            let entry = perm
                .credential
                .keychain_entry(rname, pname)
                .unwrap_or_default();
            match entries.iter_mut().find(|e| e.entry == entry) {
                Some(e) => e.used_by.push(used_by),
                None => entries.push(EntryStatus {
                    entry,
                    kind,
                    used_by: vec![used_by],
                    state: "unknown",
                    error: None,
                }),
            }
        }
    }
    let service = keychain::service_name(&config.daemon);
    for e in &mut entries {
        let (service, name) = (service.clone(), e.entry.clone());
        let probe = tokio::task::spawn_blocking(move || keychain::get(&service, &name).map(drop));
        (e.state, e.error) = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(Ok(()))) => ("present", None),
            Ok(Ok(Err(keychain::KeychainError::NotFound))) => ("missing", None),
            Ok(Ok(Err(keychain::KeychainError::Store(m)))) => ("error", Some(m)),
            Ok(Err(join)) => ("error", Some(join.to_string())),
            Err(_) => break, // a hung keychain: leave the rest "unknown"
        };
    }
    Listing {
        service,
        entries,
        commands,
    }
}

fn render(listing: &Listing) -> String {
    use std::fmt::Write as _;
    let mut out = format!("keychain service {:?}\n", listing.service);
    if listing.entries.is_empty() {
        out.push_str("  no keychain entries in this config\n");
    }
    for e in &listing.entries {
        let hint = match e.state {
            "missing" => {
                let first = e.used_by.first().map(String::as_str).unwrap_or_default();
                format!(" — run `agentd secret set {}`", first.replacen('/', " ", 1))
            }
            "error" => format!(" ({})", e.error.as_deref().unwrap_or_default()),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<32} {:<6} {:<8} used by {}{hint}",
            e.entry,
            e.kind,
            e.state,
            e.used_by.join(", ")
        );
    }
    for c in &listing.commands {
        let _ = writeln!(
            out,
            "  {:<32} from command {:?} (nothing stored)",
            c.permission, c.program
        );
    }
    out
}

/// Reads the secret from a no-echo prompt on a terminal, else one line of stdin.
fn read_secret(resource: &str, permission: &str, what: &str) -> anyhow::Result<SecretString> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what} for {resource}/{permission}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']).to_owned();
        zeroize::Zeroize::zeroize(&mut line);
        trimmed
    };
    let secret = SecretString::from(secret);
    if secret.expose_secret().is_empty() {
        bail!("empty secret; nothing stored");
    }
    Ok(secret)
}

/// Stores a secret off the async threads.
///
/// # Errors
/// The keychain's error.
pub async fn store(
    settings: &DaemonSettings,
    entry: String,
    secret: SecretString,
) -> anyhow::Result<()> {
    let service = keychain::service_name(settings);
    tokio::task::spawn_blocking(move || keychain::set(&service, &entry, &secret))
        .await?
        .context("storing the secret in the OS keychain")
}
