//! A minimal PostgreSQL client for the daemon's own administrative statements (dynamic
//! roles): logs in with [`upstream::connect`] (same TLS and SCRAM code as the listeners, the
//! password stays a `SecretString`), then runs simple-protocol queries and returns text rows.
//!
//! These statements never pass through a grant's listener, so they never reach the audit
//! log's statement capture; and this module never logs SQL text.

use crate::listener::postgres::startup::StartupParams;
use crate::listener::postgres::upstream::{self, UpstreamStream, UpstreamTarget};
use crate::listener::postgres::wire::{self, put_message};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// Largest backend message accepted on an admin session, in bytes.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why an admin statement failed. Carries the server's SQLSTATE and message with
/// caller-named sensitive strings replaced by `[REDACTED]`; never SQL text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{sqlstate} {message}")]
pub struct AdminError {
    /// SQLSTATE (`08006` for connection-level failures, `57014` for a timeout).
    pub sqlstate: String,
    /// The server's (or the connection's) message.
    pub message: String,
}

impl AdminError {
    fn connection(message: String) -> Self {
        Self {
            sqlstate: "08006".to_owned(),
            message,
        }
    }
}

/// One logged-in admin connection.
pub struct AdminSession {
    stream: UpstreamStream,
    timeout: Duration,
}

impl AdminSession {
    /// Connects and logs in as `target.username` (`application_name = agentd-admin`), then
    /// waits for ReadyForQuery. `target.connect_timeout` bounds the login and each query.
    ///
    /// # Errors
    /// [`AdminError`] with SQLSTATE `08006` (or the server's, e.g. `28P01`).
    pub async fn connect(target: &UpstreamTarget) -> Result<Self, AdminError> {
        let params = StartupParams {
            user: target.username.clone(),
            database: Some(target.database.clone()),
            options: vec![("application_name".to_owned(), "agentd-admin".to_owned())],
            ..StartupParams::default()
        };
        let stream = upstream::connect(target, &params)
            .await
            .map_err(|e| match e {
                upstream::UpstreamError::Refused { sqlstate, message } => {
                    AdminError { sqlstate, message }
                }
                other => AdminError::connection(other.to_string()),
            })?;
        let mut session = Self {
            stream,
            timeout: target.connect_timeout,
        };
        session.until_ready(&[]).await?;
        Ok(session)
    }

    /// Runs `sql` (one or more statements: the simple protocol runs them in one implicit
    /// transaction) and returns every DataRow's columns as text. Error messages have each of
    /// `redact` replaced by `[REDACTED]`.
    ///
    /// # Errors
    /// The first ErrorResponse, a timeout (`57014`) or a connection failure (`08006`).
    pub async fn query(
        &mut self,
        sql: &str,
        redact: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, AdminError> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        let mut out = BytesMut::new();
        put_message(&mut out, b'Q', &body);
        zeroize::Zeroize::zeroize(&mut body);
        let sent = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        let sent = tokio::time::timeout(self.timeout, sent).await;
        zeroize::Zeroize::zeroize(&mut out[..]);
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AdminError::connection(e.to_string())),
            Err(_) => return Err(AdminError::connection("timed out sending".to_owned())),
        }
        self.until_ready(redact).await
    }

    /// Reads until ReadyForQuery; collects DataRows, keeps the first ErrorResponse.
    async fn until_ready(
        &mut self,
        redact: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, AdminError> {
        let read = async {
            let mut rows = Vec::new();
            let mut failed = None;
            loop {
                let msg = wire::read_message(&mut self.stream, MAX_MESSAGE_BYTES)
                    .await
                    .map_err(|e| AdminError::connection(e.to_string()))?;
                match msg.kind {
                    b'Z' => return failed.map_or(Ok(rows), Err),
                    b'D' => rows.push(data_row(&msg.body)),
                    b'E' if failed.is_none() => failed = Some(server_error(&msg.body, redact)),
                    _ => {} // RowDescription, CommandComplete, Notice, ParameterStatus, …
                }
            }
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| AdminError {
                sqlstate: "57014".to_owned(),
                message: format!("no answer within {}s", self.timeout.as_secs()),
            })?
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        put_message(&mut out, b'X', &[]);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

fn server_error(body: &[u8], redact: &[&str]) -> AdminError {
    let (sqlstate, mut message) = match upstream::refused(body) {
        upstream::UpstreamError::Refused { sqlstate, message } => (sqlstate, message),
        other => (String::new(), other.to_string()),
    };
    for secret in redact.iter().filter(|s| !s.is_empty()) {
        message = message.replace(secret, "[REDACTED]");
    }
    AdminError { sqlstate, message }
}

/// A DataRow body: Int16 column count, then per column Int32 length (-1 = NULL) and bytes.
fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut cols = Vec::new();
    let Some(count) = body.get(..2) else {
        return cols;
    };
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut rest = &body[2..];
    for _ in 0..count {
        let Some(len) = rest.get(..4) else { break };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        rest = &rest[4..];
        if len < 0 {
            cols.push(None);
            continue;
        }
        let len = (len as usize).min(rest.len());
        cols.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
        rest = &rest[len..];
    }
    cols
}

/// `"ident"` with inner quotes doubled (PostgreSQL's `quote_ident`, always quoting).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled; backslashes make it an `E'…'` literal with them
/// doubled too, so the result is right whatever `standard_conforming_strings` is.
pub fn quote_literal(text: &str) -> String {
    let inner = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", inner.replace('\\', "\\\\"))
    } else {
        format!("'{inner}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn data_rows_and_errors() {
        let mut body = vec![0, 2, 0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row(&body), vec![Some("hi".to_owned()), None]);
        body.truncate(5);
        assert_eq!(data_row(&body), Vec::<Option<String>>::new());
        let e = server_error(b"C42501\0Mpermission denied near 's3cret'\0\0", &["s3cret"]);
        assert_eq!(e.sqlstate, "42501");
        assert_eq!(e.message, "permission denied near '[REDACTED]'");
    }
}
