//! `agentd token create|list|revoke`: bearer tokens for `agentd-mcp --http`. A token is
//! printed once; only its SHA-256 is stored (see [`agentd_proto::mcp_tokens`]).

use agentd_proto::mcp_tokens::{hash_token, StoredToken, TokenStore, TOKEN_PREFIX};
use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use rand::RngCore as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// `agentd token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token for `agentd-mcp --http`. It is printed once, on stdout; only
    /// its SHA-256 is stored. Give it to your MCP client as `Authorization: Bearer TOKEN`.
    ///
    /// Example: agentd token create --name cursor
    Create(CreateArgs),
    /// List stored tokens (names and creation times; the tokens themselves are not kept).
    List(TokenJson),
    /// Revoke a token by name: `agentd-mcp --http` refuses it from the next request on.
    Revoke(RevokeArgs),
}

/// `agentd token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A label for the token, unique in this profile (default `mcp-N`).
    #[arg(long)]
    pub name: Option<String>,
    /// The token store file (default: the profile's `mcp-tokens.json`).
    #[arg(long, env = "AGENTD_MCP_TOKENS", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Print `{"name", "token", "store"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd token list`.
#[derive(Debug, Args)]
pub struct TokenJson {
    /// The token store file (default: the profile's `mcp-tokens.json`).
    #[arg(long, env = "AGENTD_MCP_TOKENS", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd token revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's name (see `agentd token list`).
    pub name: String,
    /// The token store file (default: the profile's `mcp-tokens.json`).
    #[arg(long, env = "AGENTD_MCP_TOKENS", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn store_path(given: Option<&PathBuf>) -> PathBuf {
    given
        .cloned()
        .unwrap_or_else(|| agentd_proto::profile::active().mcp_tokens_path())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs one `agentd token` subcommand.
///
/// # Errors
/// The store cannot be read or written, a duplicate name, or an unknown name to revoke.
pub fn run(cmd: &TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List(args) => list(&store_path(args.store.as_ref()), args.json),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn load(path: &Path) -> anyhow::Result<TokenStore> {
    TokenStore::load(path).with_context(|| format!("reading {}", path.display()))
}

fn create(args: &CreateArgs) -> anyhow::Result<()> {
    let path = store_path(args.store.as_ref());
    let mut store = load(&path)?;
    let name = match &args.name {
        Some(n) => n.trim().to_owned(),
        None => (1..)
            .map(|i| format!("mcp-{i}"))
            .find(|n| store.tokens.iter().all(|t| &t.name != n))
            .unwrap_or_else(|| "mcp".to_owned()),
    };
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        bail!("a token name must be 1-64 printable characters");
    }
    if store.tokens.iter().any(|t| t.name == name) {
        bail!("a token named {name:?} exists; revoke it first (`agentd token revoke {name}`) or pick another --name");
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(bytes.as_mut());
    let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(*bytes)));
    store.tokens.push(StoredToken {
        name: name.clone(),
        sha256: hash_token(&token),
        created_at: now(),
    });
    store
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({"name": name, "token": token.as_str(), "store": path})
        );
    } else {
        outln!("{}", token.as_str());
        eprintln!(
            "created MCP token {name:?}; it is shown only this once (its SHA-256 is in {}).\n\
             Use it as the header `Authorization: Bearer <token>` for agentd-mcp --http.",
            path.display()
        );
    }
    Ok(())
}

fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let store = load(path)?;
    if json {
        let tokens: Vec<_> = store
            .tokens
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "created_at": t.created_at}))
            .collect();
        outln!("{}", serde_json::json!({"store": path, "tokens": tokens}));
        return Ok(());
    }
    if store.tokens.is_empty() {
        outln!("no MCP tokens (create one with `agentd token create`)");
        return Ok(());
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["name", "created (UTC)"]);
    for t in &store.tokens {
        let created = chrono::DateTime::from_timestamp(i64::try_from(t.created_at).unwrap_or(0), 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        table.add_row([t.name.clone(), created]);
    }
    outln!("{table}");
    Ok(())
}

fn revoke(args: &RevokeArgs) -> anyhow::Result<()> {
    let path = store_path(args.store.as_ref());
    let mut store = load(&path)?;
    let before = store.tokens.len();
    store.tokens.retain(|t| t.name != args.name);
    if store.tokens.len() == before {
        bail!(
            "no MCP token named {:?}; `agentd token list` shows them",
            args.name
        );
    }
    store
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        outln!("{}", serde_json::json!({"revoked": args.name}));
    } else {
        outln!("revoked MCP token {:?}", args.name);
    }
    Ok(())
}
