//! The control socket server: accepts local connections, checks the peer's uid (Unix),
//! reads framed [`agentd_proto::Request`]s and answers with the broker's responses.

use crate::broker::Broker;
use agentd_proto::framing::{self, FrameError};
use agentd_proto::{Envelope, ErrorCode, Request, Response, PROTOCOL_VERSION};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::ListenerOptions;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long a refused peer gets to send its first request before the refusal is sent.
const REFUSAL_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
        let broker = broker.clone();
        tokio::spawn(serve_connection(stream, broker).instrument(tracing::info_span!("control")));
    }
}

/// The peer's identity as the kernel reports it.
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    pid: Option<u32>,
    uid: Option<u32>,
}

fn peer_of(stream: &Stream) -> Peer {
    match stream.peer_creds() {
        Ok(creds) => Peer {
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
    match request {
        Request::Ping => Response::Pong {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        },
        Request::ListResources => broker.list_resources(),
        Request::RequestAccess(mut spec) => {
            spec.agent.pid = peer.pid;
            spec.agent.uid = peer.uid;
            if spec.agent.agent_type.is_empty() {
                spec.agent.agent_type = "other".to_owned();
            }
            broker.request_access(spec).await
        }
        Request::GetRequest { request_id } => broker.get_request(&request_id),
        Request::Status => broker.status(),
        Request::Revoke { target } => {
            let r = broker.revoke(&target);
            info!(?target, "revoke");
            r
        }
    }
}
