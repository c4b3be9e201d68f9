//! The control socket server: accepts local connections, checks the peer's uid (Unix),
//! reads framed [`agentd_proto::Request`]s and answers with the broker's responses.

mod admin;

use crate::broker::Broker;
use crate::principal::{Peer, Principal};
use agentd_proto::framing::{self, FrameError};
use agentd_proto::{Envelope, ErrorCode, Request, Response, PROTOCOL_VERSION};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::ListenerOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long a refused peer gets to send its first request before the refusal is sent.
const REFUSAL_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Most control connections served at once. Each costs one task and at most one frame
/// buffer ([`framing::MAX_FRAME_BYTES`]); connections beyond this are closed at once.
pub const MAX_CONTROL_CONNECTIONS: usize = 256;

/// Binds the control socket at `path` with permission bits `mode` on Unix: 0600 in user mode
/// (the directory must be private), 0666 in system mode (every client must reach it; each
/// peer is classified by uid).
///
/// # Errors
/// The bind error.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<Listener> {
    let name = agentd_proto::client::socket_name(path)?;
    let options = ListenerOptions::new().name(name);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(mode)
    };
    options.create_tokio()
}

/// Serves control connections until `stop` fires.
pub async fn serve(listener: Listener, broker: Arc<Broker>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(
                limit = MAX_CONTROL_CONNECTIONS,
                "refused control connection: too many open"
            );
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(
            async move {
                serve_connection(stream, broker).await;
                drop(slot);
            }
            .instrument(tracing::info_span!("control")),
        );
    }
}

/// The peer as the kernel reports it for the socket (`SO_PEERCRED` / `LOCAL_PEERCRED`).
/// `None` when the platform reports no credentials (such a peer is refused).
fn peer_of(stream: &Stream) -> Option<Peer> {
    let creds = stream.peer_creds().ok()?;
    #[cfg(unix)]
    let (uid, gid) = (creds.euid()?, creds.egid());
    #[cfg(not(unix))]
    let (uid, gid) = (0, None);
    Some(Peer {
        uid,
        gid,
        pid: creds.pid().and_then(|p| u32::try_from(p).ok()),
    })
}

/// Classifies the connection's peer ([`crate::principal::Roles::classify`]).
fn principal_of(stream: &Stream, broker: &Broker) -> Result<Principal, String> {
    match peer_of(stream) {
        Some(peer) => broker.roles().classify(peer).map_err(|r| r.to_string()),
        None => Err("agentd cannot tell who is connecting (no peer credentials)".to_owned()),
    }
}

async fn serve_connection(stream: Stream, broker: Arc<Broker>) {
    let principal = principal_of(&stream, &broker);
    let mut framed = framing::framed(stream);
    let principal = match principal {
        Ok(p) => p,
        Err(message) => {
            warn!(%message, "refused control connection");
            refuse(&mut framed, message).await;
            return;
        }
    };
    loop {
        let reply = match framing::recv::<_, Envelope<Request>>(&mut framed).await {
            Ok(env) if env.version != PROTOCOL_VERSION => Response::Error {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "control protocol version {} is not supported; this daemon speaks {PROTOCOL_VERSION}",
                    env.version
                ),
            },
            Ok(env) => dispatch(&broker, env.body, &principal).await,
            Err(FrameError::Closed) => return,
            Err(FrameError::Json(e)) => Response::Error {
                code: ErrorCode::BadRequest,
                message: format!("malformed request: {e}"),
            },
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                // The length prefix was over the cap: answer, then close (the stream cannot
                // be resynchronised).
                warn!(error = %e, "control message over the size limit; connection closed");
                let reply = Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!(
                        "control message too large: the limit is {} bytes",
                        framing::MAX_FRAME_BYTES
                    ),
                };
                let _ = framing::send(&mut framed, &Envelope::new(reply)).await;
                return;
            }
            Err(e) => {
                debug!(error = %e, "control connection dropped");
                return;
            }
        };
        if framing::send(&mut framed, &Envelope::new(reply))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Answers a refused peer: reads its first request (bounded in size and time) before
/// answering, so the refusal reaches it instead of a broken pipe.
async fn refuse<S>(framed: &mut framing::FramedStream<S>, message: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reply = Envelope::new(Response::Error {
        code: ErrorCode::Denied,
        message,
    });
    let _ = tokio::time::timeout(
        REFUSAL_READ_TIMEOUT,
        framing::recv::<_, serde_json::Value>(framed),
    )
    .await;
    let _ = framing::send(framed, &reply).await;
}

/// Whether `principal` may send `request` at all (ownership of the request or grant it
/// names is checked by the broker). Approve, deny and revoke are admin verbs; approve and
/// deny also need user presence.
///
/// # Errors
/// The refusal to send back.
fn authorize(request: &Request, principal: &Principal) -> Result<(), Response> {
    if request.is_admin_verb() && !principal.is_admin() {
        warn!(who = %principal.describe(), "admin verb refused to a client");
        return Err(Response::Error {
            code: ErrorCode::Denied,
            message: format!(
                "only an agentd admin (root or a member of [daemon] admin_group) may approve, deny, revoke, \
                 manage secrets, read the audit log or reload the config; you are {}, a client. \
                 Ask an admin (e.g. `sudo agentd approve ID`)",
                principal.describe()
            ),
        });
    }
    if request.needs_presence() {
        if let Err(message) = check_user_presence(principal) {
            warn!(who = %principal.describe(), "human verb refused without user presence");
            return Err(Response::Error {
                code: ErrorCode::PresenceRequired,
                message,
            });
        }
    }
    Ok(())
}

/// Refuses client-sent text over its bound (justification, agent type, client name, deny
/// reason; see [`agentd_proto::text`]), before anything is recorded or shown to a human.
///
/// # Errors
/// A `bad_request` naming the field, its limit and the length sent.
fn check_lengths(request: &Request) -> Result<(), Response> {
    use agentd_proto::text::{
        MAX_AGENT_TYPE_CHARS, MAX_CLIENT_NAME_CHARS, MAX_JUSTIFICATION_CHARS, MAX_REASON_CHARS,
    };
    let mut fields: Vec<(&str, &str, usize)> = Vec::new();
    match request {
        Request::RequestAccess(spec) => {
            fields.push((
                "justification",
                &spec.justification,
                MAX_JUSTIFICATION_CHARS,
            ));
            fields.push(("agent type", &spec.agent.agent_type, MAX_AGENT_TYPE_CHARS));
            if let Some(name) = &spec.agent.client_name {
                fields.push(("client name", name, MAX_CLIENT_NAME_CHARS));
            }
        }
        Request::ListResources {
            agent_type: Some(agent_type),
        }
        | Request::Revoke {
            target: agentd_proto::RevokeTarget::Agent { agent_type },
        } => fields.push(("agent type", agent_type, MAX_AGENT_TYPE_CHARS)),
        Request::Deny {
            reason: Some(reason),
            ..
        } => fields.push(("deny reason", reason, MAX_REASON_CHARS)),
        _ => {}
    }
    for (name, value, max) in fields {
        let chars = value.chars().count();
        if chars > max {
            warn!(
                field = name,
                chars, max, "control request refused: text too long"
            );
            return Err(Response::Error {
                code: ErrorCode::BadRequest,
                message: format!(
                    "the {name} is too long: {chars} characters, the limit is {max}; say it in fewer words"
                ),
            });
        }
    }
    Ok(())
}

async fn dispatch(broker: &Arc<Broker>, request: Request, principal: &Principal) -> Response {
    if let Err(refusal) = authorize(&request, principal) {
        return refusal;
    }
    if let Err(refusal) = check_lengths(&request) {
        return refusal;
    }
    let request = match admin::dispatch(broker, request, principal).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    match request {
        Request::Ping => Response::Pong {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        },
        Request::ListResources { agent_type } => {
            broker.list_resources(agent_type.as_deref(), principal)
        }
        Request::ListGrants => broker.list_grants(principal),
        Request::RequestAccess(mut spec) => {
            spec.agent.pid = principal.pid;
            spec.agent.uid = Some(principal.uid);
            if spec.agent.agent_type.is_empty() {
                spec.agent.agent_type = "other".to_owned();
            }
            broker.request_access(spec, principal).await
        }
        Request::GetRequest { request_id } => broker.get_request(&request_id, principal),
        Request::AwaitRequest {
            request_id,
            timeout_seconds,
        } => {
            broker
                .await_request(&request_id, Duration::from_secs(timeout_seconds), principal)
                .await
        }
        Request::CancelRequest { request_id } => broker.cancel(&request_id, principal),
        Request::Release { grant_id } => broker.release(&grant_id, principal).await,
        Request::Status => broker.status(principal),
        Request::ListRequests { all } => broker.list_requests(all, principal),
        Request::Approve {
            request_id,
            duration_seconds,
            presence: _,
        } => {
            broker
                .approve(
                    &request_id,
                    duration_seconds.map(Duration::from_secs),
                    principal,
                )
                .await
        }
        Request::Deny {
            request_id,
            reason,
            presence: _,
        } => broker.deny(&request_id, reason, principal),
        Request::Revoke { target } => {
            info!(?target, who = %principal.describe(), "revoke");
            broker.revoke(&target, principal).await
        }
        Request::ReloadConfig => broker.reload_config(&principal.describe()),
        // Handled by admin::dispatch above.
        Request::SetSecret { .. }
        | Request::DeleteSecret { .. }
        | Request::ListSecrets
        | Request::ReadAudit { .. }
        | Request::VerifyAudit => Response::Error {
            code: ErrorCode::Internal,
            message: "unhandled admin verb".to_owned(),
        },
    }
}

/// User presence for human verbs (approve, deny): the peer process must have a controlling
/// terminal. On Linux the daemon checks this itself from `/proc/PID/stat` (field `tty_nr`,
/// read when the connection was classified), so a process an agent started without a
/// terminal is refused even if it skips the CLI's own `/dev/tty` prompt. Elsewhere only the
/// CLI's prompt applies.
///
/// # Errors
/// A message telling the human what to run.
fn check_user_presence(principal: &Principal) -> Result<(), String> {
    if !cfg!(target_os = "linux") || principal.tty.is_some() {
        return Ok(());
    }
    Err(
        "approving or denying access needs a human at an interactive terminal; \
         this process has none. A human must run `agentd approve ID` / `agentd deny ID` in a terminal"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Role;

    fn principal(role: Role, tty: Option<&str>) -> Principal {
        Principal {
            uid: 1000,
            pid: Some(42),
            start_time: Some(1),
            user: "alice".into(),
            tty: tty.map(str::to_owned),
            role,
        }
    }

    #[test]
    fn admin_verbs_need_an_admin_and_human_verbs_a_terminal() {
        let approve = Request::Approve {
            request_id: "r_1".into(),
            duration_seconds: None,
            presence: Default::default(),
        };
        let revoke = Request::Revoke {
            target: agentd_proto::RevokeTarget::All,
        };
        assert!(authorize(&approve, &principal(Role::Client, Some("/dev/pts/1"))).is_err());
        assert!(authorize(&revoke, &principal(Role::Client, None)).is_err());
        assert!(authorize(&revoke, &principal(Role::Admin, None)).is_ok());
        assert!(authorize(&approve, &principal(Role::Admin, Some("/dev/pts/1"))).is_ok());
        if cfg!(target_os = "linux") {
            assert!(matches!(
                authorize(&approve, &principal(Role::Admin, None)),
                Err(Response::Error {
                    code: ErrorCode::PresenceRequired,
                    ..
                })
            ));
        }
        assert!(authorize(&Request::ListGrants, &principal(Role::Client, None)).is_ok());
    }

    #[test]
    fn over_long_client_text_is_refused_with_its_name_and_limit() {
        let spec = |justification: String, client: Option<String>| {
            Request::RequestAccess(agentd_proto::AccessRequestSpec {
                resource: "db".into(),
                permission: "read_only".into(),
                duration_seconds: None,
                justification,
                agent: agentd_proto::AgentInfo {
                    agent_type: "cursor".into(),
                    client_name: client,
                    pid: None,
                    uid: None,
                },
            })
        };
        assert!(check_lengths(&spec("é".repeat(1_000), Some("c".repeat(200)))).is_ok());
        let Err(Response::Error { code, message }) = check_lengths(&spec("x".repeat(1_001), None))
        else {
            panic!("a 1,001-character justification must be refused")
        };
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("justification is too long: 1001 characters, the limit is 1000"));
        let Err(Response::Error { message, .. }) =
            check_lengths(&spec("ok".into(), Some("c".repeat(201))))
        else {
            panic!("a 201-character client name must be refused")
        };
        assert!(message.contains("client name"), "{message}");
        let deny = Request::Deny {
            request_id: "r_1".into(),
            reason: Some("r".repeat(1_001)),
            presence: Default::default(),
        };
        assert!(check_lengths(&deny).is_err());
    }
}
