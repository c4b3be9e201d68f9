//! `agentd mcp install|uninstall --client C`: merges (or removes) the `agentd` MCP server
//! entry in an AI client's JSON config file.
//!
//! | client | file | table | entry |
//! | --- | --- | --- | --- |
//! | `claude-code` | `~/.claude.json` (user scope) | `mcpServers` | `{"type": "stdio", "command", "args"}` |
//! | `claude-desktop` | `claude_desktop_config.json` in Claude's config dir | `mcpServers` | `{"command", "args"}` |
//! | `cursor` | `~/.cursor/mcp.json` | `mcpServers` | `{"command", "args"}` |
//! | `vscode` | the user `mcp.json` in VS Code's `User` dir | `servers` | `{"type": "stdio", "command", "args"}` |
//!
//! Every other key keeps its value and its order. Before a file is changed it is copied to
//! `FILE.bak-YYYYMMDDTHHMMSSZ`, mode 0600 (client configs often hold other servers' API
//! keys), and only the newest [`KEEP_BACKUPS`] backups are kept. A symlinked config is
//! updated through the link (the link stays a link; the file it points to is rewritten and
//! backed up beside it). The new content is written to a temporary file in the same
//! directory (same permissions) and renamed over it. Nothing is written when the entry is
//! already as wanted (install) or absent (uninstall). A file that is not valid JSON is
//! refused and left untouched.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// `agentd mcp`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Add agentd-mcp to an AI client's MCP config (keeps everything else, backs the file up,
    /// does nothing when already installed).
    ///
    /// Example: agentd mcp install --client claude-code
    Install(InstallArgs),
    /// Remove agentd-mcp from an AI client's MCP config (only our entry).
    Uninstall(InstallArgs),
}

/// The AI clients `agentd mcp install` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum McpClient {
    /// Claude Code (user scope, `~/.claude.json`).
    ClaudeCode,
    /// Claude Desktop (`claude_desktop_config.json`).
    ClaudeDesktop,
    /// Cursor (`~/.cursor/mcp.json`).
    Cursor,
    /// VS Code (user `mcp.json`).
    Vscode,
}

impl McpClient {
    /// The `--agent-type` the shim is started with.
    pub fn agent_type(self) -> &'static str {
        match self {
            McpClient::ClaudeCode => "claude-code",
            McpClient::ClaudeDesktop => "claude-desktop",
            McpClient::Cursor => "cursor",
            McpClient::Vscode => "vscode",
        }
    }

    /// The key of the servers table in the client's config.
    fn table(self) -> &'static str {
        match self {
            McpClient::Vscode => "servers",
            _ => "mcpServers",
        }
    }

    /// The client's user-level config file, when a home directory is known.
    pub fn default_config_file(self) -> Option<PathBuf> {
        let base = directories::BaseDirs::new()?;
        let home = base.home_dir();
        // Claude Desktop and VS Code keep their config in the roaming config dir
        // (~/.config on Linux, ~/Library/Application Support on macOS, %APPDATA% on Windows).
        let config = base.config_dir();
        Some(match self {
            McpClient::ClaudeCode => home.join(".claude.json"),
            McpClient::ClaudeDesktop => config.join("Claude").join("claude_desktop_config.json"),
            McpClient::Cursor => home.join(".cursor").join("mcp.json"),
            McpClient::Vscode => config.join("Code").join("User").join("mcp.json"),
        })
    }
}

/// `agentd mcp install` / `uninstall`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Which AI client.
    #[arg(long, value_enum)]
    pub client: McpClient,
    /// The client's config file. Default: claude-code `~/.claude.json`; claude-desktop
    /// `CONFIG/Claude/claude_desktop_config.json`; cursor `~/.cursor/mcp.json`; vscode
    /// `CONFIG/Code/User/mcp.json` (CONFIG: ~/.config, ~/Library/Application Support or
    /// %APPDATA%).
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// The agentd-mcp command the client runs (default: the agentd-mcp next to this agentd
    /// binary, else `agentd-mcp` from PATH).
    #[arg(long, value_name = "PATH")]
    pub command: Option<String>,
    /// Show what would change without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What install or uninstall did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The entry was added.
    Installed,
    /// An entry of that name existed with other settings and was replaced.
    Updated,
    /// The entry was already as wanted; nothing written.
    AlreadyInstalled,
    /// The entry was removed.
    Removed,
    /// There was no entry; nothing written.
    NotInstalled,
}

/// The server entry's name: `agentd`, or `agentd-NAME` under `--profile NAME`.
pub fn server_name(profile: &agentd_proto::profile::Profile) -> String {
    match profile.name() {
        None => "agentd".to_owned(),
        Some(n) => format!("agentd-{n}"),
    }
}

/// The server entry for `client`.
pub fn server_entry(
    client: McpClient,
    command: &str,
    profile: &agentd_proto::profile::Profile,
) -> Value {
    let mut args = vec![
        Value::from("--agent-type"),
        Value::from(client.agent_type()),
    ];
    if let Some(name) = profile.name() {
        args.push("--profile".into());
        args.push(name.into());
    }
    let mut entry = Map::new();
    if matches!(client, McpClient::ClaudeCode | McpClient::Vscode) {
        entry.insert("type".into(), "stdio".into());
    }
    entry.insert("command".into(), command.into());
    entry.insert("args".into(), Value::Array(args));
    Value::Object(entry)
}

fn default_command() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .map(|d| d.join(format!("agentd-mcp{}", std::env::consts::EXE_SUFFIX)))
        })
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "agentd-mcp".to_owned())
}

/// Runs `agentd mcp install|uninstall`.
///
/// # Errors
/// No config file location known, a file that is not valid JSON (or not an object), or I/O.
pub fn run(cmd: &McpCommand) -> anyhow::Result<()> {
    let (args, install) = match cmd {
        McpCommand::Install(a) => (a, true),
        McpCommand::Uninstall(a) => (a, false),
    };
    let profile = agentd_proto::profile::active();
    let path = match &args.config_file {
        Some(p) => p.clone(),
        None => args
            .client
            .default_config_file()
            .context("no home directory known; pass --config-file")?,
    };
    let name = server_name(profile);
    let entry = server_entry(
        args.client,
        &args.command.clone().unwrap_or_else(default_command),
        profile,
    );
    let change = if install {
        plan_install(&path, args.client, &name, &entry)?
    } else {
        plan_uninstall(&path, args.client, &name)?
    };
    let backup = match (&change.new_text, args.dry_run) {
        (Some(text), false) => write_with_backup(&path, text)?,
        _ => None,
    };
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "client": args.client.agent_type(),
                "config_file": path,
                "server": name,
                "outcome": change.outcome,
                "dry_run": args.dry_run,
                "backup": backup,
                "entry": install.then_some(&entry),
            })
        );
        return Ok(());
    }
    let file = path.display();
    let would = if args.dry_run { "would be " } else { "" };
    match change.outcome {
        Outcome::Installed | Outcome::Updated => {
            let verb = if change.outcome == Outcome::Installed {
                "added to"
            } else {
                "updated in"
            };
            outln!(
                "MCP server {name:?} {would}{verb} {file}:\n{}",
                serde_json::to_string_pretty(&entry)?
            );
            if let Some(b) = &backup {
                outln!("backup of the previous file: {}", b.display());
            }
            if !args.dry_run {
                outln!("Restart {} to pick it up.", client_label(args.client));
            }
        }
        Outcome::AlreadyInstalled => {
            outln!("MCP server {name:?} is already installed in {file}; nothing changed")
        }
        Outcome::Removed => {
            outln!("MCP server {name:?} {would}removed from {file}");
            if let Some(b) = &backup {
                outln!("backup of the previous file: {}", b.display());
            }
        }
        Outcome::NotInstalled => {
            outln!("MCP server {name:?} is not installed in {file}; nothing changed")
        }
    }
    Ok(())
}

fn client_label(client: McpClient) -> &'static str {
    match client {
        McpClient::ClaudeCode => "Claude Code",
        McpClient::ClaudeDesktop => "Claude Desktop",
        McpClient::Cursor => "Cursor",
        McpClient::Vscode => "VS Code",
    }
}

/// A planned change: the outcome and, when the file must change, its new text.
#[derive(Debug)]
pub struct Change {
    /// What happens.
    pub outcome: Outcome,
    /// The new file content; `None` when nothing is written.
    pub new_text: Option<String>,
}

/// Reads `path` as a JSON object; a missing or blank file is an empty object.
fn read_object(path: &Path) -> anyhow::Result<(Map<String, Value>, bool)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Map::new(), false)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok((Map::new(), true));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok((map, true)),
        Ok(_) => bail!(
            "{} is not a JSON object; fix it by hand (nothing was changed)",
            path.display()
        ),
        Err(e) => bail!(
            "{} is not valid JSON ({e}); fix it by hand or pass another --config-file (nothing was changed)",
            path.display()
        ),
    }
}

fn render(map: Map<String, Value>) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(&Value::Object(map))?;
    text.push('\n');
    Ok(text)
}

/// Plans adding `entry` as `name` to the client's servers table in `path`.
///
/// # Errors
/// The file is not valid JSON, or its servers table is not an object.
pub fn plan_install(
    path: &Path,
    client: McpClient,
    name: &str,
    entry: &Value,
) -> anyhow::Result<Change> {
    let (mut root, _) = read_object(path)?;
    let table = root
        .entry(client.table())
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(servers) = table.as_object_mut() else {
        bail!(
            "{}: \"{}\" is not an object; fix it by hand (nothing was changed)",
            path.display(),
            client.table()
        );
    };
    let outcome = match servers.get(name) {
        Some(existing) if existing == entry => {
            return Ok(Change {
                outcome: Outcome::AlreadyInstalled,
                new_text: None,
            })
        }
        Some(_) => Outcome::Updated,
        None => Outcome::Installed,
    };
    servers.insert(name.to_owned(), entry.clone());
    Ok(Change {
        outcome,
        new_text: Some(render(root)?),
    })
}

/// Plans removing the entry `name` from the client's servers table in `path`.
///
/// # Errors
/// The file is not valid JSON.
pub fn plan_uninstall(path: &Path, client: McpClient, name: &str) -> anyhow::Result<Change> {
    let (mut root, _) = read_object(path)?;
    let removed = root
        .get_mut(client.table())
        .and_then(Value::as_object_mut)
        .and_then(|servers| servers.shift_remove(name))
        .is_some();
    if !removed {
        return Ok(Change {
            outcome: Outcome::NotInstalled,
            new_text: None,
        });
    }
    Ok(Change {
        outcome: Outcome::Removed,
        new_text: Some(render(root)?),
    })
}

/// How many `FILE.bak-*` backups are kept (the newest).
pub const KEEP_BACKUPS: usize = 3;

/// Copies an existing `path` to `path.bak-TIMESTAMP` (mode 0600), prunes older backups to
/// [`KEEP_BACKUPS`], then writes `text` atomically (temp file in the same directory with
/// the original's permissions, then rename). A symlink is followed: the file it points to
/// is the one backed up and replaced, so the link stays. Returns the backup's path.
fn write_with_backup(path: &Path, text: &str) -> anyhow::Result<Option<PathBuf>> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let path = if is_link {
        std::fs::canonicalize(path)
            .with_context(|| format!("following the symlink {}", path.display()))?
    } else {
        path.to_path_buf()
    };
    let path = path.as_path();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let original = std::fs::metadata(path).ok();
    let backup = if original.is_some() {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".bak-{stamp}"));
        let backup = PathBuf::from(name);
        let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        write_private(&backup, &content)
            .with_context(|| format!("backing up {} to {}", path.display(), backup.display()))?;
        prune_backups(path);
        Some(backup)
    } else {
        None
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        use std::io::Write as _;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
    }
    if let Some(meta) = &original {
        std::fs::set_permissions(tmp.path(), meta.permissions())?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(backup)
}

/// Writes `content` to `path` (replacing it) readable and writable by the owner only.
fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(content)
}

/// Deletes all but the newest [`KEEP_BACKUPS`] `FILE.bak-*` files beside `path` (names
/// sort by their UTC timestamp). Failures are ignored: pruning is housekeeping.
fn prune_backups(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.bak-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut backups: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(KEEP_BACKUPS);
    for old in &backups[..excess] {
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_proto::profile::Profile;

    #[test]
    fn entries_match_each_clients_format() {
        let p = Profile::default();
        let cc = server_entry(McpClient::ClaudeCode, "agentd-mcp", &p);
        assert_eq!(
            cc,
            serde_json::json!({"type": "stdio", "command": "agentd-mcp", "args": ["--agent-type", "claude-code"]})
        );
        let cursor = server_entry(McpClient::Cursor, "agentd-mcp", &p);
        assert!(cursor.get("type").is_none());
        let work = Profile::new(Some("work")).unwrap();
        assert_eq!(server_name(&work), "agentd-work");
        assert_eq!(
            server_entry(McpClient::Vscode, "x", &work)["args"],
            serde_json::json!(["--agent-type", "vscode", "--profile", "work"])
        );
    }

    #[test]
    fn plans_keep_other_keys_in_order_and_refuse_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"zeta": 1, "mcpServers": {"other": {"command": "x"}}, "alpha": [1, 2]}"#,
        )
        .unwrap();
        let entry = server_entry(McpClient::Cursor, "agentd-mcp", &Profile::default());
        let change = plan_install(&path, McpClient::Cursor, "agentd", &entry).unwrap();
        assert_eq!(change.outcome, Outcome::Installed);
        let text = change.new_text.unwrap();
        let keys: Vec<_> = [
            "\"zeta\"",
            "\"mcpServers\"",
            "\"other\"",
            "\"agentd\"",
            "\"alpha\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{text}");
        std::fs::write(&path, &text).unwrap();
        let again = plan_install(&path, McpClient::Cursor, "agentd", &entry).unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyInstalled);
        assert!(again.new_text.is_none());
        let removed = plan_uninstall(&path, McpClient::Cursor, "agentd").unwrap();
        assert_eq!(removed.outcome, Outcome::Removed);
        assert!(removed.new_text.unwrap().contains("\"other\""));

        std::fs::write(&path, "{ not json").unwrap();
        let err = plan_install(&path, McpClient::Cursor, "agentd", &entry).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    }
}
