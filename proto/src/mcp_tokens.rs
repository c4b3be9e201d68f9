//! The store of bearer tokens for `agentd-mcp --http`: `agentd token create` adds one (the
//! token is printed once and only its SHA-256 is kept), the shim checks every HTTP request
//! against it, `agentd token revoke` removes one.
//!
//! File: [`crate::profile::Profile::mcp_tokens_path`], JSON
//! `{"tokens": [{"name", "sha256", "created_at"}]}`, mode 0600, written atomically (temp
//! file + rename). Comparison hashes the presented token and compares digests in constant
//! time.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq as _;

/// Prefix of every token, so a leaked one is recognisable (e.g. by secret scanners).
pub const TOKEN_PREFIX: &str = "agentd_mcp_";

/// One stored token: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    /// A label chosen by the human (unique in the store).
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

/// The whole token file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenStore {
    /// Stored tokens, oldest first.
    #[serde(default)]
    pub tokens: Vec<StoredToken>,
}

/// Lower-case hex SHA-256 of `token`.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenStore {
    /// Reads the store at `path`; a missing file is an empty store.
    ///
    /// # Errors
    /// The file cannot be read or is not a token store.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a token store: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the store to `path` atomically with mode 0600, creating its directory (0700).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir)?;
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// True when `presented` is one of the stored tokens. Every stored digest is compared
    /// (constant time per digest), so timing does not reveal which one matched.
    pub fn verify(&self, presented: &str) -> bool {
        let digest = hash_token(presented);
        self.tokens.iter().fold(false, |found, t| {
            found | bool::from(t.sha256.as_bytes().ct_eq(digest.as_bytes()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_stored_tokens_and_survives_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("agentd-tokens-{}", std::process::id()));
        let path = dir.join("mcp-tokens.json");
        let mut store = TokenStore::default();
        store.tokens.push(StoredToken {
            name: "a".into(),
            sha256: hash_token("agentd_mcp_right"),
            created_at: 1,
        });
        store.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = TokenStore::load(&path).unwrap();
        assert!(back.verify("agentd_mcp_right"));
        assert!(!back.verify("agentd_mcp_wrong"));
        assert!(!back.verify(""));
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains("agentd_mcp_right"));
        assert_eq!(
            TokenStore::load(&dir.join("missing.json")).unwrap(),
            TokenStore::default()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
