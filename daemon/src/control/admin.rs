//! The admin verbs on the control socket (the caller is an admin: checked by
//! [`super::authorize`] first): secrets in the daemon's store, the audit log read and
//! verified through the daemon (clients and admins alike cannot read `DATA_DIR` in system
//! mode; only the daemon's user can), and config reload.

use crate::audit::AuditEvent;
use crate::broker::Broker;
use crate::config::CredentialSource;
use crate::credentials::{self, keychain::KeychainError};
use crate::principal::Principal;
use agentd_proto::{
    AuditVerifyView, ErrorCode, Request, Response, SecretEntry, MAX_AUDIT_PAGE,
    MAX_AUDIT_PAGE_BYTES,
};
use secrecy::SecretString;
use std::sync::Arc;
use tracing::info;

fn err(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

/// Handles an admin verb other than approve/deny/revoke; gives any other request back.
///
/// # Errors
/// The request, when it is not one of these verbs.
pub(super) async fn dispatch(
    broker: &Arc<Broker>,
    request: Request,
    principal: &Principal,
) -> Result<Response, Request> {
    Ok(match request {
        Request::SetSecret {
            resource,
            permission,
            value,
        } => {
            let entry = match entry_for(broker, &resource, &permission) {
                Ok(e) => e,
                Err(r) => return Ok(r),
            };
            if value.expose().is_empty() {
                return Ok(err(ErrorCode::BadRequest, "empty secret; nothing stored"));
            }
            let secret = SecretString::from(value.expose().to_owned());
            drop(value);
            let settings = broker.config().daemon.clone();
            let e2 = entry.clone();
            let stored = tokio::task::spawn_blocking(move || {
                credentials::write_entry(&settings, &e2, &secret)
            })
            .await;
            match stored {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Ok(err(
                        ErrorCode::Internal,
                        format!("cannot store {entry}: {e}"),
                    ))
                }
                Err(e) => return Ok(err(ErrorCode::Internal, e.to_string())),
            }
            info!(entry, who = %principal.describe(), "secret set");
            record(broker, "secret_set", &entry, principal).unwrap_or_else(|| Response::Done {
                message: format!(
                    "stored the secret for {resource}/{permission} (entry {entry}) in the {}",
                    credentials::store_description(&broker.config().daemon)
                ),
            })
        }
        Request::DeleteSecret {
            resource,
            permission,
        } => {
            let entry = match entry_for(broker, &resource, &permission) {
                Ok(e) => e,
                Err(r) => return Ok(r),
            };
            let settings = broker.config().daemon.clone();
            let e2 = entry.clone();
            let deleted =
                tokio::task::spawn_blocking(move || credentials::delete_entry(&settings, &e2))
                    .await;
            match deleted {
                Ok(Ok(())) => {}
                Ok(Err(KeychainError::NotFound)) => {
                    return Ok(err(
                        ErrorCode::NotFound,
                        format!("no secret stored for {entry}"),
                    ))
                }
                Ok(Err(e)) => {
                    return Ok(err(
                        ErrorCode::Internal,
                        format!("cannot delete {entry}: {e}"),
                    ))
                }
                Err(e) => return Ok(err(ErrorCode::Internal, e.to_string())),
            }
            info!(entry, who = %principal.describe(), "secret deleted");
            record(broker, "secret_deleted", &entry, principal).unwrap_or_else(|| Response::Done {
                message: format!("deleted the secret for {resource}/{permission} (entry {entry})"),
            })
        }
        Request::ListSecrets => list_secrets(broker).await,
        Request::ReadAudit { after_seq, limit } => read_audit(broker, after_seq, limit).await,
        Request::VerifyAudit => {
            let audit = broker.audit_log().clone();
            match tokio::task::spawn_blocking(move || audit.verify()).await {
                Ok(Ok(report)) => Response::AuditVerified(AuditVerifyView {
                    ok: report.ok(),
                    records: report.records,
                    files: report.files.len() as u64,
                    keyed_from: report.keyed_from,
                    problems: report
                        .problems
                        .iter()
                        .map(|p| format!("{} line {}: {:?}: {}", p.file, p.line, p.kind, p.detail))
                        .collect(),
                }),
                Ok(Err(e)) => err(
                    ErrorCode::Internal,
                    format!("cannot verify the audit log: {e}"),
                ),
                Err(e) => err(ErrorCode::Internal, e.to_string()),
            }
        }
        other => return Err(other),
    })
}

/// Records an admin action (synced); `Some(error)` when the log cannot be written.
fn record(broker: &Broker, action: &str, target: &str, principal: &Principal) -> Option<Response> {
    broker
        .audit_sync(&AuditEvent::AdminAction {
            action: action.to_owned(),
            target: target.to_owned(),
            by: principal.describe(),
        })
        .err()
}

/// The store entry of `resource`/`permission` from the config (never from the client).
fn entry_for(broker: &Broker, resource: &str, permission: &str) -> Result<String, Response> {
    let config = broker.config();
    let Some((_, perm)) = config.permission(resource, permission) else {
        return Err(err(
            ErrorCode::NotFound,
            format!("the config has no permission {permission:?} on resource {resource:?}"),
        ));
    };
    perm.credential
        .keychain_entry(resource, permission)
        .ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("{resource}/{permission} gets its credential from a command; nothing is stored for it"),
            )
        })
}

async fn list_secrets(broker: &Broker) -> Response {
    let config = broker.config().clone();
    let settings = config.daemon.clone();
    let mut entries: Vec<SecretEntry> = Vec::new();
    for (rname, res) in &config.resources {
        for (pname, perm) in &res.permissions {
            let kind = match &perm.credential {
                CredentialSource::Command { .. } => continue,
                CredentialSource::Keyring { .. } => "secret",
                CredentialSource::Dynamic(_) => "admin",
            };
            let Some(entry) = perm.credential.keychain_entry(rname, pname) else {
                continue;
            };
            let used_by = format!("{rname}/{pname}");
            match entries.iter_mut().find(|e| e.entry == entry) {
                Some(e) => e.used_by.push(used_by),
                None => entries.push(SecretEntry {
                    entry,
                    kind: kind.to_owned(),
                    used_by: vec![used_by],
                    state: String::new(),
                    error: None,
                }),
            }
        }
    }
    let store = credentials::store_description(&settings);
    let probed = tokio::task::spawn_blocking(move || {
        for e in &mut entries {
            (e.state, e.error) = match credentials::read_entry(&settings, &e.entry) {
                Ok(_) => ("present".to_owned(), None),
                Err(KeychainError::NotFound) => ("missing".to_owned(), None),
                Err(KeychainError::Store(m)) => ("error".to_owned(), Some(m)),
            };
        }
        entries
    })
    .await;
    match probed {
        Ok(entries) => Response::Secrets { store, entries },
        Err(e) => err(ErrorCode::Internal, e.to_string()),
    }
}

async fn read_audit(broker: &Broker, after_seq: u64, limit: u32) -> Response {
    let dir = broker.audit_log().dir().to_path_buf();
    let limit = limit.clamp(1, MAX_AUDIT_PAGE) as usize;
    let read = tokio::task::spawn_blocking(move || crate::audit::read_records(&dir)).await;
    let records = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return err(
                ErrorCode::Internal,
                format!("cannot read the audit log: {e}"),
            )
        }
        Err(e) => return err(ErrorCode::Internal, e.to_string()),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    let seq_of = |r: &crate::audit::RawRecord| {
        r.value
            .as_ref()
            .and_then(|v| v.get("seq"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    for r in records.into_iter().filter(|r| seq_of(r) > after_seq) {
        if out.len() >= limit || bytes + r.text.len() > MAX_AUDIT_PAGE_BYTES {
            more = true;
            break;
        }
        bytes += r.text.len();
        out.push(r.text);
    }
    Response::AuditRecords { records: out, more }
}
