//! `agentd secret set|delete RESOURCE PERMISSION`: the secret is read from a no-echo prompt
//! (or stdin when it is not a terminal), never from the command line, and stored in the OS
//! keychain under the config's `keyring_service`.

use super::SecretCommand;
use crate::config::{Config, CredentialSource, DaemonSettings};
use crate::credentials::keychain;
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret, SecretString};
use std::io::{BufRead, IsTerminal};
use std::path::Path;

/// Runs `agentd secret …`.
///
/// # Errors
/// Unknown resource/permission (when a config exists), an empty secret, or keychain errors.
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
    match cmd {
        SecretCommand::Set {
            resource,
            permission,
        } => {
            let entry = entry_for(config.as_ref(), resource, permission)?;
            let secret = read_secret(resource, permission)?;
            store(&settings, entry.clone(), secret).await?;
            eprintln!("stored the secret for {resource}/{permission} in the keychain (service {:?}, entry {entry:?})", settings.keyring_service);
        }
        SecretCommand::Delete {
            resource,
            permission,
        } => {
            let entry = entry_for(config.as_ref(), resource, permission)?;
            let service = settings.keyring_service.clone();
            let e2 = entry.clone();
            tokio::task::spawn_blocking(move || keychain::delete(&service, &e2))
                .await?
                .with_context(|| format!("deleting keychain entry {entry:?}"))?;
            eprintln!("deleted the secret for {resource}/{permission}");
        }
    }
    Ok(())
}

fn entry_for(config: Option<&Config>, resource: &str, permission: &str) -> anyhow::Result<String> {
    let Some(config) = config else {
        return Ok(keychain::entry_name(resource, permission));
    };
    let Some((_, perm)) = config.permission(resource, permission) else {
        bail!("the config has no permission {permission:?} on resource {resource:?}");
    };
    Ok(match &perm.credential {
        CredentialSource::Keyring { entry: Some(e) } => e.clone(),
        CredentialSource::Keyring { entry: None } => keychain::entry_name(resource, permission),
    })
}

/// Reads the secret from a no-echo prompt on a terminal, else one line of stdin.
fn read_secret(resource: &str, permission: &str) -> anyhow::Result<SecretString> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("secret for {resource}/{permission}: "))?
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
    let service = settings.keyring_service.clone();
    tokio::task::spawn_blocking(move || keychain::set(&service, &entry, &secret))
        .await?
        .context("storing the secret in the OS keychain")
}
