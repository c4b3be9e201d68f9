//! `run_query`: one SQL statement through one of the caller's grants, for clients without a
//! shell (Claude Desktop). The shim connects to the grant's loopback listener with the
//! grant's handle like any other client, so the statement is audited by the daemon and
//! limited by the grant's upstream role; the shim never sees an upstream secret.
//!
//! One statement only: it is first prepared (PostgreSQL refuses several commands in one
//! Parse), then run with the simple query protocol so every value comes back as text. Rows
//! are read until [`QueryLimits::max_rows`] rows or [`QueryLimits::max_bytes`] bytes of
//! values, then the connection is closed and the result says `truncated: true`.

use agentd_proto::Handle;
use futures_util::{pin_mut, StreamExt as _};
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// Default row limit.
pub const DEFAULT_MAX_ROWS: usize = 100;
/// Hard row cap.
pub const MAX_ROWS_CAP: usize = 1000;
/// Default byte limit (sum of value lengths), 64 KiB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// Hard byte cap, 1 MiB.
pub const MAX_BYTES_CAP: usize = 1024 * 1024;
/// Longest a statement may run before the shim gives up and closes the connection.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a result to return.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Rows at most.
    pub max_rows: usize,
    /// Bytes of values (UTF-8) at most.
    pub max_bytes: usize,
}

impl QueryLimits {
    /// The limits asked for, defaulted and capped.
    pub fn new(max_rows: Option<usize>, max_bytes: Option<usize>) -> Self {
        Self {
            max_rows: max_rows.unwrap_or(DEFAULT_MAX_ROWS).clamp(1, MAX_ROWS_CAP),
            max_bytes: max_bytes
                .unwrap_or(DEFAULT_MAX_BYTES)
                .clamp(1, MAX_BYTES_CAP),
        }
    }
}

/// A statement's result.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// Column names (empty for statements that return no rows).
    pub columns: Vec<String>,
    /// Rows of text values (`null` for SQL NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows returned here.
    pub row_count: usize,
    /// Rows affected or returned, from the server's CommandComplete (absent when truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_affected: Option<u64>,
    /// True when more rows (or longer values) existed than the limits allowed.
    pub truncated: bool,
}

/// Why a statement failed, for the agent.
#[derive(Debug, Clone, Serialize)]
pub struct QueryError {
    /// `sql_error` (the server refused it), `connection` (the listener could not be
    /// reached or login failed), `timeout`, `not_one_statement`.
    pub error: &'static str,
    /// SQLSTATE from the server's ErrorResponse, e.g. `42501`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The server's message (or ours).
    pub message: String,
    /// The server's DETAIL / HINT, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do next.
    pub next: String,
}

fn advice(sqlstate: &str) -> &'static str {
    match sqlstate {
        "42501" => "your grant's permission does not allow this statement; do not retry or work around it. If the task really needs it, use describe_resource to find a permission that allows it and request_access with a justification",
        "25006" => "the grant is read-only; request a permission that allows writes if the task needs them",
        s if s.starts_with("42P01") => "no such table: list tables with SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        s if s.starts_with("42") => "fix the statement (syntax, names or types) and run it again",
        s if s.starts_with("57") || s.starts_with("08") => "the grant ended or the connection was cut; call list_grants, and request access again if needed",
        s if s.starts_with("28") => "the grant's token was refused: the grant has ended; request access again",
        s if s.starts_with("22") || s.starts_with("23") => "the data does not fit the statement (value or constraint); change the statement",
        _ => "read the message, change the statement if it is at fault, and do not retry the same statement blindly",
    }
}

fn to_error(e: &tokio_postgres::Error) -> QueryError {
    match e.as_db_error() {
        Some(db) => QueryError {
            error: "sql_error",
            sqlstate: Some(db.code().code().to_owned()),
            message: db.message().to_owned(),
            detail: match (db.detail(), db.hint()) {
                (Some(d), Some(h)) => Some(format!("{d} HINT: {h}")),
                (Some(d), None) => Some(d.to_owned()),
                (None, Some(h)) => Some(format!("HINT: {h}")),
                (None, None) => None,
            },
            next: advice(db.code().code()).to_owned(),
        },
        None => QueryError {
            error: "connection",
            sqlstate: None,
            message: format!("cannot run the statement through the grant's listener: {e}"),
            detail: None,
            next: "the grant may have ended; call list_grants, and request access again if needed"
                .to_owned(),
        },
    }
}

/// Runs `sql` (one statement) through the listener `handle` points at.
///
/// # Errors
/// [`QueryError`]: the server's ErrorResponse (SQLSTATE, message, detail/hint), several
/// statements, a connection failure, or [`QUERY_TIMEOUT`].
pub async fn run(
    handle: &Handle,
    sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, QueryError> {
    match tokio::time::timeout(QUERY_TIMEOUT, run_inner(handle, sql, limits)).await {
        Ok(r) => r,
        Err(_) => Err(QueryError {
            error: "timeout",
            sqlstate: None,
            message: format!(
                "the statement did not finish within {}s; the connection was closed",
                QUERY_TIMEOUT.as_secs()
            ),
            detail: None,
            next: "narrow the statement (WHERE, LIMIT) or use the handle with psql for long work"
                .to_owned(),
        }),
    }
}

async fn run_inner(
    handle: &Handle,
    sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, QueryError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&handle.host)
        .port(handle.port)
        .user(&handle.user)
        .dbname(&handle.database)
        .application_name("agentd-mcp run_query")
        .connect_timeout(Duration::from_secs(10));
    if let Some(token) = handle.env.get("PGPASSWORD") {
        config.password(token.as_bytes());
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| to_error(&e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let outcome = execute(&client, sql, limits).await;
    drop(client);
    driver.abort();
    outcome
}

async fn execute(
    client: &tokio_postgres::Client,
    sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, QueryError> {
    // Refuses several statements ("cannot insert multiple commands into a prepared
    // statement") and reports syntax errors before anything runs.
    if let Err(e) = client.prepare(sql).await {
        let mut err = to_error(&e);
        if err.sqlstate.as_deref() == Some("42601") && err.message.contains("multiple commands") {
            err.error = "not_one_statement";
            err.next = "send exactly one SQL statement per run_query call".to_owned();
        }
        return Err(err);
    }
    let stream = client
        .simple_query_raw(sql)
        .await
        .map_err(|e| to_error(&e))?;
    pin_mut!(stream);
    let mut result = QueryResult {
        columns: Vec::new(),
        rows: Vec::new(),
        row_count: 0,
        rows_affected: None,
        truncated: false,
    };
    let mut bytes = 0usize;
    while let Some(message) = stream.next().await {
        match message.map_err(|e| to_error(&e))? {
            SimpleQueryMessage::RowDescription(columns) => {
                result.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if result.rows.len() >= limits.max_rows {
                    result.truncated = true;
                    break;
                }
                let mut values: Vec<Option<String>> = (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect();
                let size: usize = values.iter().flatten().map(String::len).sum();
                if bytes + size > limits.max_bytes {
                    result.truncated = true;
                    if result.rows.is_empty() {
                        // Keep the first row, its values cut to fit.
                        let mut left = limits.max_bytes;
                        for v in values.iter_mut().flatten() {
                            let keep = floor_char_boundary(v, left);
                            v.truncate(keep);
                            left -= keep;
                        }
                        result.rows.push(values);
                    }
                    break;
                }
                bytes += size;
                result.rows.push(values);
            }
            SimpleQueryMessage::CommandComplete(n) => result.rows_affected = Some(n),
            _ => {}
        }
    }
    result.row_count = result.rows.len();
    Ok(result)
}

/// The largest index `<= max` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_defaulted_and_capped() {
        let l = QueryLimits::new(None, None);
        assert_eq!((l.max_rows, l.max_bytes), (100, 65536));
        let l = QueryLimits::new(Some(10_000_000), Some(0));
        assert_eq!((l.max_rows, l.max_bytes), (MAX_ROWS_CAP, 1));
    }

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(floor_char_boundary("héllo", 2), 1);
        assert_eq!(floor_char_boundary("abc", 10), 3);
    }
}
