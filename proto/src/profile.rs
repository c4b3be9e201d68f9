//! Profiles: independent agentd setups for one user (e.g. `work` and `personal`), each with
//! its own config file, control socket, data directory, keychain service and MCP token
//! store. Chosen with `--profile NAME` on `agentd` and `agentd-mcp`, or `AGENTD_PROFILE`.
//!
//! The default profile (no name) keeps the original paths exactly:
//!
//! | what | default profile | profile `NAME` |
//! | --- | --- | --- |
//! | config | `CONFIG_DIR/config.toml` | `CONFIG_DIR/profiles/NAME/config.toml` |
//! | socket | `RUNTIME_DIR/agentd.sock` | `RUNTIME_DIR/agentd-NAME.sock` |
//! | data | `DATA_DIR` | `DATA_DIR/profiles/NAME` |
//! | keychain service | `agentd` | `agentd-NAME` |
//! | MCP bearer tokens | `CONFIG_DIR/mcp-tokens.json` | `CONFIG_DIR/profiles/NAME/mcp-tokens.json` |
//! | `agentd-mcp --debug` log | `LOG_DIR/mcp.log` | `LOG_DIR/mcp-NAME.log` |
//!
//! `CONFIG_DIR` is `$XDG_CONFIG_HOME/agentd` (Linux), `~/Library/Application Support/agentd`
//! (macOS), `%APPDATA%\agentd\config` (Windows); `DATA_DIR` is the platform's local data dir
//! for agentd; `RUNTIME_DIR` is [`crate::socket::runtime_dir`]; `LOG_DIR` is
//! `$XDG_STATE_HOME/agentd` (else `~/.local/state/agentd`), `~/Library/Logs/agentd` on macOS,
//! `%LOCALAPPDATA%\agentd` on Windows.
//!
//! The binaries call [`set_active`] once at start; config defaults (data dir, keychain
//! service) read [`active`].

use std::path::PathBuf;
use std::sync::OnceLock;

/// Longest profile name, in characters.
pub const MAX_PROFILE_NAME: usize = 64;

/// A profile: `None` is the default one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    name: Option<String>,
}

/// A profile name is not 1–64 letters, digits, `-` or `_`.
#[derive(Debug, thiserror::Error)]
#[error("profile name {0:?} must be 1-{MAX_PROFILE_NAME} letters, digits, '-' or '_'")]
pub struct BadProfileName(pub String);

static ACTIVE: OnceLock<Profile> = OnceLock::new();

/// Makes `profile` the process's profile (first call wins; later calls are ignored).
pub fn set_active(profile: Profile) {
    let _ = ACTIVE.set(profile);
}

/// The process's profile: what [`set_active`] set, else the default profile.
pub fn active() -> &'static Profile {
    ACTIVE.get_or_init(Profile::default)
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "agentd")
}

impl Profile {
    /// The profile `name`; an empty or absent name is the default profile.
    ///
    /// # Errors
    /// [`BadProfileName`] when `name` has characters other than letters, digits, `-`, `_`
    /// or is longer than [`MAX_PROFILE_NAME`] (it becomes part of paths).
    pub fn new(name: Option<&str>) -> Result<Self, BadProfileName> {
        match name.map(str::trim).filter(|n| !n.is_empty()) {
            None => Ok(Self::default()),
            Some("default") => Ok(Self::default()),
            Some(n)
                if n.len() <= MAX_PROFILE_NAME
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Ok(Self {
                    name: Some(n.to_owned()),
                })
            }
            Some(n) => Err(BadProfileName(n.to_owned())),
        }
    }

    /// The profile's name; `None` for the default profile.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `-NAME` for a named profile, empty for the default one.
    fn suffix(&self) -> String {
        self.name
            .as_ref()
            .map(|n| format!("-{n}"))
            .unwrap_or_default()
    }

    /// The directory holding the config file and the MCP token store.
    pub fn config_dir(&self) -> PathBuf {
        let base = project_dirs()
            .map(|d| d.config_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."));
        match &self.name {
            None => base,
            Some(n) => base.join("profiles").join(n),
        }
    }

    /// The default config file (see the module table).
    pub fn config_path(&self) -> PathBuf {
        if self.name.is_none() && project_dirs().is_none() {
            return PathBuf::from("agentd.toml");
        }
        self.config_dir().join("config.toml")
    }

    /// The default data directory (audit log, state file); not created here.
    pub fn data_dir(&self) -> PathBuf {
        let base = project_dirs()
            .map(|d| d.data_local_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from("./agentd-data"));
        match &self.name {
            None => base,
            Some(n) => base.join("profiles").join(n),
        }
    }

    /// The default keychain service: `agentd` or `agentd-NAME`.
    pub fn keyring_service(&self) -> String {
        format!("agentd{}", self.suffix())
    }

    /// The default control socket path (see [`crate::socket`]).
    #[cfg(unix)]
    pub fn socket_path(&self) -> PathBuf {
        crate::socket::runtime_dir().join(format!("agentd{}.sock", self.suffix()))
    }

    /// The default control socket path: the named pipe `\\.\pipe\agentd-USER[-NAME]`.
    #[cfg(windows)]
    pub fn socket_path(&self) -> PathBuf {
        let user = std::env::var("USERNAME").unwrap_or_else(|_| "default".to_owned());
        PathBuf::from(format!(r"\\.\pipe\agentd-{user}{}", self.suffix()))
    }

    /// Where `agentd token create` stores SHA-256 hashes of the MCP HTTP bearer tokens.
    pub fn mcp_tokens_path(&self) -> PathBuf {
        self.config_dir().join("mcp-tokens.json")
    }

    /// The directory for `agentd-mcp --debug` logs (see the module docs).
    pub fn log_dir() -> PathBuf {
        if cfg!(target_os = "macos") {
            if let Some(home) = directories::BaseDirs::new() {
                return home.home_dir().join("Library/Logs/agentd");
            }
        }
        if cfg!(windows) {
            if let Some(base) = directories::BaseDirs::new() {
                return base.data_local_dir().join("agentd");
            }
        }
        match std::env::var_os("XDG_STATE_HOME") {
            Some(dir) if !dir.is_empty() && PathBuf::from(&dir).is_absolute() => {
                PathBuf::from(dir).join("agentd")
            }
            _ => directories::BaseDirs::new()
                .map(|b| b.home_dir().join(".local/state/agentd"))
                .unwrap_or_else(|| std::env::temp_dir().join("agentd")),
        }
    }

    /// The `agentd-mcp --debug` log file: `LOG_DIR/mcp.log` or `LOG_DIR/mcp-NAME.log`.
    pub fn mcp_log_path(&self) -> PathBuf {
        Self::log_dir().join(format!("mcp{}.log", self.suffix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_keeps_the_original_paths() {
        let p = Profile::new(None).unwrap();
        assert_eq!(p, Profile::new(Some("")).unwrap());
        assert_eq!(p, Profile::new(Some("default")).unwrap());
        assert_eq!(p.keyring_service(), "agentd");
        #[cfg(unix)]
        assert_eq!(p.socket_path(), crate::socket::default_socket_path());
        assert!(p.config_path().ends_with("agentd/config.toml"));
    }

    #[test]
    fn named_profiles_are_separate() {
        let p = Profile::new(Some("work")).unwrap();
        let d = Profile::default();
        assert_eq!(p.keyring_service(), "agentd-work");
        assert_ne!(p.socket_path(), d.socket_path());
        assert_ne!(p.config_path(), d.config_path());
        assert_ne!(p.data_dir(), d.data_dir());
        assert_ne!(p.mcp_tokens_path(), d.mcp_tokens_path());
        assert!(p.mcp_log_path().ends_with("mcp-work.log"));
        assert!(p.config_path().ends_with("profiles/work/config.toml"));
    }

    #[test]
    fn profile_names_cannot_escape_their_directory() {
        for bad in ["../x", "a/b", "a b", "x".repeat(65).as_str(), "é"] {
            assert!(Profile::new(Some(bad)).is_err(), "{bad}");
        }
    }
}
