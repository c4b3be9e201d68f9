//! `agentd mcp install|uninstall` on sample config files of every client (other entries
//! and key order kept, backup (0600, newest three kept), symlinks followed, idempotent, uninstall removes only ours, invalid JSON
//! refused and untouched), the entries matching `packaging/mcp/`, the default file
//! locations under a fake home, and `--profile` paths for `agentd token`.

use agentd_tests::*;
use serde_json::{json, Value};
use std::path::Path;

fn backups(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{file}.bak-")))
                .collect()
        })
        .unwrap_or_default()
}

async fn mcp_cmd(verb: &str, client: &str, file: &Path, home: &Path) -> anyhow::Result<Value> {
    let file = file.display().to_string();
    let out = agentd_plain(
        &[
            "mcp",
            verb,
            "--client",
            client,
            "--config-file",
            &file,
            "--command",
            "agentd-mcp",
            "--json",
        ],
        &[("HOME", home)],
    )
    .await?;
    anyhow::ensure!(out.code == 0, "mcp {verb} failed: {}", out.stderr);
    out.json()
}

/// The server entry in a packaging snippet (`packaging/mcp/FILE`, table `table`).
fn snippet_entry(file: &str, table: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/mcp")
        .join(file);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(v[table]["agentd"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_and_uninstall_for_every_client() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    // (client, table, sample file, snippet)
    let cases = [
        (
            "claude-code",
            "mcpServers",
            r#"{"numStartups": 12, "mcpServers": {"github": {"type": "stdio", "command": "gh-mcp", "args": []}}, "projects": {"/src/app": {"allowedTools": ["Bash"]}}, "theme": "dark"}"#,
            None,
        ),
        (
            "claude-desktop",
            "mcpServers",
            r#"{"globalShortcut": "Ctrl+Space", "mcpServers": {"filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]}}}"#,
            Some("claude_desktop_config.json"),
        ),
        (
            "cursor",
            "mcpServers",
            r#"{"mcpServers": {"linear": {"url": "https://mcp.linear.app/sse"}}}"#,
            Some("cursor-mcp.json"),
        ),
        (
            "vscode",
            "servers",
            r#"{"inputs": [{"id": "key", "type": "promptString"}], "servers": {"fetch": {"type": "stdio", "command": "uvx", "args": ["mcp-server-fetch"]}}}"#,
            Some("vscode-mcp.json"),
        ),
    ];
    for (client, table, sample, snippet) in cases {
        let dir = home.path().join(client);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("config.json");
        std::fs::write(&file, sample)?;
        let before: Value = serde_json::from_str(sample)?;

        let first = mcp_cmd("install", client, &file, home.path()).await?;
        assert_eq!(first["outcome"], "installed", "{client}: {first}");
        assert_eq!(
            backups(&dir, "config.json").len(),
            1,
            "{client}: one backup"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(backups(&dir, "config.json")[0].as_str()))?,
            sample,
            "{client}: the backup is the original"
        );
        let text = std::fs::read_to_string(&file)?;
        let after: Value = serde_json::from_str(&text)?;
        // Every other key and entry is kept, in the same order.
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(&after), keys(&before), "{client}: top-level keys");
        for (k, v) in before.as_object().into_iter().flatten() {
            if k != table {
                assert_eq!(&after[k], v, "{client}: {k} changed");
            }
        }
        for (k, v) in before[table].as_object().into_iter().flatten() {
            assert_eq!(&after[table][k], v, "{client}: server {k} changed");
        }
        let entry = &after[table]["agentd"];
        assert_eq!(entry["args"], json!(["--agent-type", client]), "{client}");
        assert_eq!(entry["command"], "agentd-mcp");
        if let Some(snippet) = snippet {
            assert_eq!(
                entry,
                &snippet_entry(snippet, table)?,
                "{client}: packaging/mcp/{snippet}"
            );
        }

        let second = mcp_cmd("install", client, &file, home.path()).await?;
        assert_eq!(second["outcome"], "already_installed", "{client}");
        assert_eq!(
            backups(&dir, "config.json").len(),
            1,
            "{client}: no new backup"
        );
        assert_eq!(std::fs::read_to_string(&file)?, text, "{client}: rewritten");

        let removed = mcp_cmd("uninstall", client, &file, home.path()).await?;
        assert_eq!(removed["outcome"], "removed", "{client}");
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        assert_eq!(back, before, "{client}: uninstall left other changes");
        let again = mcp_cmd("uninstall", client, &file, home.path()).await?;
        assert_eq!(again["outcome"], "not_installed", "{client}");
    }

    // Not JSON: refused, nothing lost, no backup.
    let dir = home.path().join("broken");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("config.json");
    std::fs::write(&file, "{\"mcpServers\": {,}")?;
    let out = agentd_plain(
        &[
            "mcp",
            "install",
            "--client",
            "cursor",
            "--config-file",
            &file.display().to_string(),
        ],
        &[("HOME", home.path())],
    )
    .await?;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&file)?, "{\"mcpServers\": {,}");
    assert!(backups(&dir, "config.json").is_empty());

    // Default location (Claude Code: ~/.claude.json), created when missing; --dry-run
    // writes nothing; --profile names the entry and passes --profile.
    let fake_home = tempfile::tempdir()?;
    let dry = agentd_plain(
        &[
            "mcp",
            "install",
            "--client",
            "claude-code",
            "--dry-run",
            "--json",
        ],
        &[("HOME", fake_home.path())],
    )
    .await?;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(!fake_home.path().join(".claude.json").exists());
    let out = agentd_plain(
        &[
            "--profile",
            "work",
            "mcp",
            "install",
            "--client",
            "claude-code",
        ],
        &[("HOME", fake_home.path())],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Restart Claude Code"), "{}", out.stdout);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(
        fake_home.path().join(".claude.json"),
    )?)?;
    let args = &written["mcpServers"]["agentd-work"]["args"];
    assert_eq!(
        args,
        &json!(["--agent-type", "claude-code", "--profile", "work"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_keep_tokens_apart() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let config_home = home.path().join("config");
    let env = [
        ("HOME", home.path()),
        ("XDG_CONFIG_HOME", config_home.as_path()),
    ];
    let work = agentd_plain(&["--profile", "work", "token", "create", "--json"], &env).await?;
    assert_eq!(work.code, 0, "{}", work.stderr);
    let path = config_home.join("agentd/profiles/work/mcp-tokens.json");
    assert_eq!(work.json()?["store"], path.display().to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let default = agentd_plain(&["token", "list", "--json"], &env).await?;
    assert_eq!(
        default.json()?["tokens"],
        json!([]),
        "profiles share tokens"
    );
    let listed = agentd_plain(&["--profile", "work", "token", "list", "--json"], &env).await?;
    assert_eq!(listed.json()?["tokens"][0]["name"], "mcp-1");
    let bad = agentd_plain(&["--profile", "../x", "token", "list"], &env).await?;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("profile name"), "{}", bad.stderr);
    Ok(())
}

/// Backups are 0600 and pruned to the newest three; a symlinked config is updated through
/// the link, which stays a link.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_private_and_pruned_and_symlinks_stay_links() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let home = tempfile::tempdir()?;
    let real_dir = home.path().join("dotfiles");
    std::fs::create_dir(&real_dir)?;
    let real = real_dir.join("cursor-mcp.json");
    std::fs::write(
        &real,
        r#"{"mcpServers": {"other": {"command": "x", "env": {"API_KEY": "sk-other-server"}}}}"#,
    )?;
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644))?;
    // Four old backups already lie beside the real file.
    for day in 1..=4 {
        let old = real_dir.join(format!("cursor-mcp.json.bak-2020010{day}T000000Z"));
        std::fs::write(&old, "{}")?;
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644))?;
    }
    let link_dir = home.path().join(".cursor");
    std::fs::create_dir(&link_dir)?;
    let link = link_dir.join("mcp.json");
    std::os::unix::fs::symlink(&real, &link)?;

    let out = mcp_cmd("install", "cursor", &link, home.path()).await?;
    assert_eq!(out["outcome"], "installed", "{out}");
    // The link is still a link, and the file it points to has our entry and the other one.
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&real)?)?;
    assert_eq!(v["mcpServers"]["agentd"]["command"], "agentd-mcp", "{v}");
    assert_eq!(
        v["mcpServers"]["other"]["env"]["API_KEY"],
        "sk-other-server"
    );
    // Newest three backups kept: the one just made and the two newest old ones.
    let mut kept = backups(&real_dir, "cursor-mcp.json");
    kept.sort();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(kept[0], "cursor-mcp.json.bak-20200103T000000Z");
    assert_eq!(kept[1], "cursor-mcp.json.bak-20200104T000000Z");
    let newest = real_dir.join(&kept[2]);
    assert!(std::fs::read_to_string(&newest)?.contains("sk-other-server"));
    assert_eq!(
        std::fs::metadata(&newest)?.permissions().mode() & 0o777,
        0o600,
        "a backup holding other servers' keys must be private"
    );
    assert!(backups(&link_dir, "mcp.json").is_empty());
    Ok(())
}
