//! The control socket server: accepts local connections, checks the peer's uid (Unix),
//! reads framed [`agentd_proto::Request`]s and answers with the broker's responses.

use crate::broker::{Broker, Caller};
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

/// Binds the control socket at `path` (mode 0600 on Unix; the directory must be private).
///
/// # Errors
/// The bind error.
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    let name = agentd_proto::client::socket_name(path)?;
    let options = ListenerOptions::new().name(name);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(0o600)
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

/// The peer's identity as the kernel reports it.
type Peer = Caller;

fn peer_of(stream: &Stream) -> Peer {
    match stream.peer_creds() {
        Ok(creds) => Caller {
            pid: creds.pid().and_then(|p| u32::try_from(p).ok()),
            #[cfg(unix)]
            uid: creds.euid(),
            #[cfg(not(unix))]
            uid: None,
        },
        Err(_) => Peer::default(),
    }
}

/// On Unix only our own uid may talk to the daemon.
fn peer_allowed(peer: &Peer) -> bool {
    #[cfg(unix)]
    {
        peer.uid == Some(agentd_proto::socket::current_uid())
    }
    #[cfg(not(unix))]
    {
        let _ = peer;
        true
    }
}

async fn serve_connection(stream: Stream, broker: Arc<Broker>) {
    let peer = peer_of(&stream);
    let mut framed = framing::framed(stream);
    if !peer_allowed(&peer) {
        warn!(uid = ?peer.uid, pid = ?peer.pid, "refused control connection from another user");
        let reply = Envelope::new(Response::Error {
            code: ErrorCode::Denied,
            message: "this agentd daemon serves only the user that started it".to_owned(),
        });
        // Read the peer's first request (bounded in size and time) before answering, so the
        // refusal reaches it instead of a broken pipe.
        let _ = tokio::time::timeout(
            REFUSAL_READ_TIMEOUT,
            framing::recv::<_, serde_json::Value>(&mut framed),
        )
        .await;
        let _ = framing::send(&mut framed, &reply).await;
        return;
    }
    loop {
        let reply = match framing::recv::<_, Envelope<Request>>(&mut framed).await {
            Ok(env) if env.version != PROTOCOL_VERSION => Response::Error {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "control protocol version {} is not supported; this daemon speaks {PROTOCOL_VERSION}",
                    env.version
                ),
            },
            Ok(env) => dispatch(&broker, env.body, peer).await,
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

async fn dispatch(broker: &Arc<Broker>, request: Request, peer: Peer) -> Response {
    if !request.is_agent_verb() {
        if let Err(message) = check_user_presence(&peer) {
            warn!(pid = ?peer.pid, "human verb refused without user presence");
            return Response::Error {
                code: ErrorCode::PresenceRequired,
                message,
            };
        }
    }
    match request {
        Request::Ping => Response::Pong {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        },
        Request::ListResources { agent_type } => broker.list_resources(agent_type.as_deref(), peer),
        Request::ListGrants => broker.list_grants(peer),
        Request::RequestAccess(mut spec) => {
            spec.agent.pid = peer.pid;
            spec.agent.uid = peer.uid;
            if spec.agent.agent_type.is_empty() {
                spec.agent.agent_type = "other".to_owned();
            }
            broker.request_access(spec).await
        }
        Request::GetRequest { request_id } => broker.get_request(&request_id),
        Request::AwaitRequest {
            request_id,
            timeout_seconds,
        } => {
            broker
                .await_request(&request_id, Duration::from_secs(timeout_seconds))
                .await
        }
        Request::CancelRequest { request_id } => broker.cancel(&request_id, peer),
        Request::Release { grant_id } => broker.release(&grant_id, peer).await,
        Request::Status => broker.status(),
        Request::ListRequests { all } => broker.list_requests(all),
        Request::Approve {
            request_id,
            duration_seconds,
            presence,
        } => {
            broker
                .approve(
                    &request_id,
                    duration_seconds.map(Duration::from_secs),
                    &presence,
                    peer,
                )
                .await
        }
        Request::Deny {
            request_id,
            reason,
            presence,
        } => broker.deny(&request_id, reason, &presence, peer),
        Request::Revoke { target } => {
            info!(?target, "revoke");
            broker.revoke(&target, peer).await
        }
    }
}

/// User presence for human verbs (approve, deny): the peer process must have a controlling
/// terminal. On Linux the daemon checks this itself from `/proc/PID/stat` (field `tty_nr`),
/// so a process an agent started without a terminal is refused even if it skips the CLI's
/// own `/dev/tty` prompt. Elsewhere only the CLI's prompt applies.
///
/// # Errors
/// A message telling the human what to run.
fn check_user_presence(peer: &Peer) -> Result<(), String> {
    let refused = || {
        "approving or denying access needs a human at an interactive terminal; \
         this process has none. A human must run `agentd approve ID` / `agentd deny ID` in a terminal"
            .to_owned()
    };
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let Some(pid) = peer.pid else {
        return Err(refused());
    };
    match controlling_tty(pid) {
        Some(tty) if tty != 0 => Ok(()),
        _ => Err(refused()),
    }
}

/// The `tty_nr` field of `/proc/PID/stat` (0 = no controlling terminal); `None` when the
/// file cannot be read or parsed. Format: `proc(5)`, field 7, after the `(comm)` field
/// (which may itself contain spaces and parentheses, hence the split at the last `)`).
fn controlling_tty(pid: u32) -> Option<i64> {
    parse_tty_nr(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_tty_nr(stat: &str) -> Option<i64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session tty_nr …
    after_comm.split_whitespace().nth(4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tty_nr_from_proc_stat() {
        assert_eq!(
            parse_tty_nr("4242 (bash) S 1 4242 4242 34816 4242 4194560 0"),
            Some(34816)
        );
        // comm may hold spaces and parentheses.
        assert_eq!(parse_tty_nr("7 (a) b (c)) R 1 7 7 0 -1 4194560"), Some(0));
        assert_eq!(parse_tty_nr("garbage"), None);
        assert_eq!(parse_tty_nr("1 (x) S 1"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn presence_needs_a_known_peer_with_a_terminal() {
        assert!(check_user_presence(&Caller {
            pid: None,
            uid: Some(0)
        })
        .is_err());
        assert!(check_user_presence(&Caller {
            pid: Some(u32::MAX),
            uid: Some(0)
        })
        .is_err());
    }
}
