//! `credential = { source = "command", argv = [...] }`: an external program prints the
//! login as JSON (the pattern of AWS `credential_process` and git credential helpers), e.g.
//! `op read …`, `vault read -format=json …` wrapped in a script, `aws rds
//! generate-db-auth-token` wrapped in a script.
//!
//! The program runs without a shell, stdin from `/dev/null`, stderr discarded, and is killed
//! at the timeout (or when the grant request goes away). Its stdout must be one JSON object
//! `{"username": "...", "password": "...", "expires_at": "2026-11-23T12:00:00Z"}`
//! (`username` and `expires_at` optional), at most [`MAX_OUTPUT_BYTES`]. Errors name
//! `argv[0]` and what happened — exit status, timeout, bad JSON — never the output.

use super::{CredentialError, Login};
use crate::listener::postgres::scram_client::ScramKeyCache;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt as _;
use zeroize::Zeroizing;

/// Largest stdout accepted from a credential command, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A cached login is re-fetched this long before its `expires_at`.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(60);

/// What the program prints.
#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    username: Option<String>,
    #[serde(deserialize_with = "secret_string")]
    password: SecretString,
    #[serde(default)]
    expires_at: Option<String>,
}

fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// A login from a command and when it stops being usable.
#[derive(Debug, Clone)]
pub struct CommandLogin {
    /// The login.
    pub login: Login,
    /// From `expires_at`; `None` when the program gave none.
    pub expires_at: Option<SystemTime>,
}

/// Runs `argv` (no shell) with a `timeout`, and parses its stdout. `default_username` is
/// used when the JSON has no `username`.
///
/// # Errors
/// [`CredentialError::Command`] naming `argv[0]`: cannot start, timed out, non-zero exit,
/// output too large or not the expected JSON, no username, expired `expires_at`.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    default_username: &str,
) -> Result<CommandLogin, CredentialError> {
    let program = argv.first().cloned().unwrap_or_default();
    let fail = |problem: String| CredentialError::Command {
        program: program.clone(),
        problem,
    };
    let mut child = tokio::process::Command::new(&program)
        .args(argv.iter().skip(1))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("has no stdout".to_owned()))?;
    let mut out = Zeroizing::new(Vec::new());
    let finished = tokio::time::timeout(timeout, async {
        // Read one byte past the cap to tell "too large" from "exactly the cap".
        let read = (&mut stdout)
            .take(MAX_OUTPUT_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .await;
        drop(stdout);
        let status = child.wait().await;
        (read, status)
    })
    .await;
    let (read, status) = match finished {
        Ok(pair) => pair,
        Err(_) => {
            // kill_on_drop would do it too; kill now so the process is gone before we answer.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(fail(format!("timed out after {}s", timeout.as_secs())));
        }
    };
    let status = status.map_err(|e| fail(format!("could not be waited for: {e}")))?;
    if !status.success() {
        return Err(fail(match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        }));
    }
    read.map_err(|e| fail(format!("stdout could not be read: {e}")))?;
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(fail(format!(
            "printed more than {MAX_OUTPUT_BYTES} bytes on stdout"
        )));
    }
    parse(&out, default_username).map_err(fail)
}

/// Parses the program's stdout; the error is a problem description without the output.
fn parse(stdout: &[u8], default_username: &str) -> Result<CommandLogin, String> {
    const SHAPE: &str = "stdout was not the expected JSON {\"username\", \"password\", \"expires_at\"?} (the output is not shown: it may hold a secret)";
    // serde_json's error text can quote input: never show it.
    let output: Output = serde_json::from_slice(stdout).map_err(|_| SHAPE.to_owned())?;
    let username = output
        .username
        .filter(|u| !u.is_empty())
        .or_else(|| (!default_username.is_empty()).then(|| default_username.to_owned()))
        .ok_or_else(|| "printed no \"username\" and the permission has no username".to_owned())?;
    if secrecy::ExposeSecret::expose_secret(&output.password).is_empty() {
        return Err("printed an empty \"password\"".to_owned());
    }
    let expires_at = match output.expires_at {
        None => None,
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text).map_err(|_| {
                "printed an \"expires_at\" that is not an RFC 3339 time (e.g. 2026-11-23T12:00:00Z)".to_owned()
            })?;
            let at = SystemTime::from(at.with_timezone(&chrono::Utc));
            if at <= SystemTime::now() {
                return Err(
                    "printed a credential whose \"expires_at\" has already passed".to_owned(),
                );
            }
            Some(at)
        }
    };
    Ok(CommandLogin {
        login: Login {
            username,
            password: output.password,
        },
        expires_at,
    })
}

/// Logins from command sources, per `RESOURCE/PERMISSION`, kept until `expires_at` minus
/// [`EXPIRY_SKEW`]. A login without `expires_at` is not cached (the program runs per grant).
#[derive(Debug, Default)]
pub struct CommandCache {
    entries: Mutex<HashMap<String, CommandLogin>>,
}

impl CommandCache {
    /// The cached login for `key` if it is still good, else runs the program and caches
    /// the result when it has an expiry.
    ///
    /// # Errors
    /// As [`run`].
    pub async fn get(
        &self,
        key: &str,
        argv: &[String],
        timeout: Duration,
        default_username: &str,
    ) -> Result<CommandLogin, CredentialError> {
        let now = SystemTime::now();
        if let Some(hit) = self.lock().get(key) {
            if hit.expires_at.is_some_and(|at| now + EXPIRY_SKEW < at) {
                return Ok(hit.clone());
            }
        }
        let fresh = run(argv, timeout, default_username).await?;
        let login = fresh.clone();
        let mut entries = self.lock();
        match fresh.expires_at {
            Some(at) if now + EXPIRY_SKEW < at => {
                entries.insert(key.to_owned(), fresh);
            }
            _ => {
                entries.remove(key);
            }
        }
        Ok(login)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CommandLogin>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One login as a listener session uses it: user, secret, the SCRAM key cache for that
/// secret (PBKDF2 once per login, not per session) and when it was fetched and expires.
pub struct SessionLogin {
    /// Upstream user name.
    pub username: String,
    /// Its secret; never logged.
    pub secret: Arc<SecretString>,
    /// SCRAM keys derived from `secret`.
    pub scram_keys: ScramKeyCache,
    fetched_at: SystemTime,
    expires_at: Option<SystemTime>,
}

impl SessionLogin {
    /// True once `now` is within the renewal margin of `expires_at`: [`EXPIRY_SKEW`], or
    /// half the login's lifetime when that is shorter (a 2-second token is used for 1 s).
    fn needs_renewal(&self, now: SystemTime) -> bool {
        let Some(at) = self.expires_at else {
            return false;
        };
        let lifetime = at.duration_since(self.fetched_at).unwrap_or_default();
        now + EXPIRY_SKEW.min(lifetime / 2) >= at
    }
}

/// A grant's login from a command source whose logins expire (`expires_at`, e.g. RDS or
/// Cloud SQL IAM tokens): each session asks [`RenewableLogin::current`], which asks the
/// program again (through the shared [`CommandCache`]) once the login is within its
/// renewal margin, so a grant can outlive the logins it uses. One renewal at a time; the
/// sessions waiting for it get its result. Sessions already open are not affected
/// (PostgreSQL checks a password only at login).
pub struct RenewableLogin {
    cache: Arc<CommandCache>,
    key: String,
    argv: Vec<String>,
    timeout: Duration,
    default_username: String,
    current: tokio::sync::Mutex<Arc<SessionLogin>>,
}

impl std::fmt::Debug for RenewableLogin {
    /// The cache key only; never the login.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewableLogin")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RenewableLogin {
    /// A renewable login for `RESOURCE/PERMISSION` `key` starting with `first` (fetched at
    /// `fetched_at`); `None` when `first` has no `expires_at` (nothing to renew: the program
    /// runs per grant).
    pub fn new(
        cache: Arc<CommandCache>,
        key: String,
        argv: Vec<String>,
        timeout: Duration,
        default_username: String,
        first: CommandLogin,
        fetched_at: SystemTime,
    ) -> Option<Self> {
        first.expires_at?;
        let current = session_login(first, fetched_at);
        Some(Self {
            cache,
            key,
            argv,
            timeout,
            default_username,
            current: tokio::sync::Mutex::new(Arc::new(current)),
        })
    }

    /// The login a new session should use: the current one, or a fresh one from the program
    /// once the current one is within its renewal margin.
    ///
    /// # Errors
    /// As [`run`], when the program has to run and fails.
    pub async fn current(&self) -> Result<Arc<SessionLogin>, CredentialError> {
        let mut current = self.current.lock().await;
        let now = SystemTime::now();
        if current.needs_renewal(now) {
            let fresh = self
                .cache
                .get(&self.key, &self.argv, self.timeout, &self.default_username)
                .await?;
            *current = Arc::new(session_login(fresh, now));
            tracing::info!(login = %self.key, "command login renewed for new sessions");
        }
        Ok(Arc::clone(&current))
    }
}

fn session_login(login: CommandLogin, fetched_at: SystemTime) -> SessionLogin {
    SessionLogin {
        username: login.login.username,
        secret: Arc::new(login.login.password),
        scram_keys: ScramKeyCache::default(),
        fetched_at,
        expires_at: login.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn parses_the_documented_shape() {
        let l = parse(
            br#"{"username":"u","password":"p","expires_at":"2999-01-01T00:00:00Z"}"#,
            "",
        )
        .unwrap();
        assert_eq!(l.login.username, "u");
        assert_eq!(l.login.password.expose_secret(), "p");
        assert!(l.expires_at.is_some());
        let l = parse(br#"{"password":"p"}"#, "fallback").unwrap();
        assert_eq!(l.login.username, "fallback");
        assert!(l.expires_at.is_none());
    }

    #[test]
    fn errors_never_quote_the_output() {
        let canary = "canary-0123456789";
        for bad in [
            canary.to_owned(),
            format!(r#"{{"password": {canary}}}"#),
            format!(r#"{{"username":"u","pass":"{canary}"}}"#),
            format!(r#"{{"username":"u","password":"{canary}","expires_at":"{canary}"}}"#),
            format!(
                r#"{{"username":"u","password":"{canary}","expires_at":"2000-01-01T00:00:00Z"}}"#
            ),
            format!(r#"{{"password":"{canary}"}}"#),
        ] {
            let err = parse(bad.as_bytes(), "").err().unwrap_or_default();
            assert!(!err.is_empty(), "accepted {bad}");
            assert!(!err.contains("canary"), "error quotes the output");
        }
    }

    #[test]
    fn renewal_margin_is_the_skew_or_half_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let login = |life: u64| SessionLogin {
            username: "u".into(),
            secret: Arc::new(SecretString::from("p".to_owned())),
            scram_keys: ScramKeyCache::default(),
            fetched_at: t0,
            expires_at: Some(t0 + Duration::from_secs(life)),
        };
        // 2-second token: renewed after 1 s.
        assert!(!login(2).needs_renewal(t0 + Duration::from_millis(900)));
        assert!(login(2).needs_renewal(t0 + Duration::from_secs(1)));
        // 15-minute token: renewed 60 s before expiry.
        assert!(!login(900).needs_renewal(t0 + Duration::from_secs(839)));
        assert!(login(900).needs_renewal(t0 + Duration::from_secs(840)));
        let never = SessionLogin {
            expires_at: None,
            ..login(1)
        };
        assert!(!never.needs_renewal(t0 + Duration::from_secs(1 << 30)));
    }

    #[test]
    fn debug_redacts() {
        let l = parse(br#"{"username":"u","password":"hunter2"}"#, "").unwrap();
        assert!(!format!("{l:?}").contains("hunter2"));
    }
}
