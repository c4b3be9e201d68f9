//! Who is on the other end of an accepted loopback TCP connection, for every listener kind
//! (PostgreSQL today, HTTP next): the uid that owns the client's socket.
//!
//! A TCP socket carries no peer credentials, but on Linux the kernel knows which uid
//! created every socket. For an accepted connection our remote address is the client's
//! local address, so one exact `SOCK_DIAG_BY_FAMILY` query over `NETLINK_SOCK_DIAG`
//! (`inet_diag_req_v2` with source = the client's address and port, destination = ours, no
//! dump flag; see sock_diag(7)) returns the client's socket, and its `idiag_uid` is the uid
//! we want. Elsewhere (macOS, Windows) there is no equivalent: [`tcp_peer_uid`] answers
//! [`PeerUid::Unsupported`] and the grant token is the only check.

use std::net::SocketAddr;

/// The answer of [`tcp_peer_uid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerUid {
    /// The uid owning the client's socket.
    Uid(u32),
    /// The platform has no way to tell (not Linux): the token is the only check.
    Unsupported,
    /// The lookup failed or found no socket (a client that already closed, another network
    /// namespace); the text says why, for the log.
    Unknown(String),
}

/// The uid owning the client end of an accepted loopback TCP connection: `ours` is the
/// accepted socket's local address (the listener), `client` its peer address.
pub fn tcp_peer_uid(ours: SocketAddr, client: SocketAddr) -> PeerUid {
    #[cfg(target_os = "linux")]
    {
        match linux::lookup(ours, client) {
            Ok(Some(uid)) => PeerUid::Uid(uid),
            Ok(None) => PeerUid::Unknown("no such socket (closed already?)".to_owned()),
            Err(e) => PeerUid::Unknown(e.to_string()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (ours, client);
        PeerUid::Unsupported
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_sock_diag::{
        constants::{AF_INET, AF_INET6, IPPROTO_TCP},
        inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
        SockDiagMessage,
    };
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
    use std::io;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Longest wait for the kernel's answer (it answers at once; this only bounds a bug).
    const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
    /// Receive buffer: one `inet_diag_msg` (72 bytes) plus header, or an error message.
    const RECV_BYTES: usize = 8192;

    /// One exact lookup of the socket `client → ours`; its uid, or `None` when the kernel
    /// has no such socket.
    pub(super) fn lookup(ours: SocketAddr, client: SocketAddr) -> io::Result<Option<u32>> {
        let family = match client {
            SocketAddr::V4(_) => AF_INET,
            SocketAddr::V6(_) => AF_INET6,
        };
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        set_recv_timeout(&socket, ANSWER_TIMEOUT)?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: client.port(),
                    destination_port: ours.port(),
                    source_address: client.ip(),
                    destination_address: ours.ip(),
                    interface_id: 0,
                    // INET_DIAG_NOCOOKIE: match on the addresses only.
                    cookie: [0xff; 8],
                },
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        socket.send(&buf[..], 0)?;
        let mut answer = vec![0u8; RECV_BYTES];
        let size = socket.recv(&mut &mut answer[..], 0)?;
        let reply =
            <NetlinkMessage<SockDiagMessage>>::deserialize(&answer[..size.min(answer.len())])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let id = &response.header.socket_id;
                // The kernel found it by these fields; check anyway.
                if id.source_port == client.port() && id.destination_port == ours.port() {
                    Ok(Some(response.header.uid))
                } else {
                    Ok(None)
                }
            }
            NetlinkPayload::Error(e) if e.code.map(|c| c.get()) == Some(-libc::ENOENT) => Ok(None),
            NetlinkPayload::Error(e) => Err(e.to_io()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected sock_diag answer: {other:?}"),
            )),
        }
    }

    fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
        use rustix::net::sockopt::{set_socket_timeout, Timeout};
        set_socket_timeout(socket, Timeout::Recv, Some(timeout))?;
        Ok(())
    }
}

/// Admits an accepted loopback TCP connection only when its client socket belongs to
/// `owner_uid` (the grant owner's), for every listener kind. Off Linux the token is the only
/// check ([`PeerUid::Unsupported`] admits).
///
/// # Errors
/// A message for the refused client (it names the grant and its owner's uid, never a token).
pub fn check_tcp_owner(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    owner_uid: u32,
    grant_id: &str,
) -> Result<(), String> {
    let ours = stream
        .local_addr()
        .map_err(|e| format!("agentd: cannot check this connection ({e})"))?;
    match tcp_peer_uid(ours, peer) {
        PeerUid::Uid(uid) if uid == owner_uid => Ok(()),
        PeerUid::Unsupported => Ok(()),
        PeerUid::Uid(uid) => {
            tracing::warn!(
                peer_uid = uid,
                owner_uid,
                "refused TCP peer: its socket belongs to another OS user than the grant's owner"
            );
            Err(format!(
                "agentd: grant {grant_id} belongs to another OS user (uid {owner_uid}); only its owner may connect"
            ))
        }
        PeerUid::Unknown(why) => {
            tracing::warn!(%why, "refused TCP peer: cannot tell which OS user it is");
            Err("agentd: cannot tell which OS user this connection belongs to; refused".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_uid_of_a_loopback_client_and_nothing_for_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let ours = accepted.local_addr().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let found = tcp_peer_uid(ours, peer);
        if cfg!(target_os = "linux") {
            assert_eq!(found, PeerUid::Uid(agentd_proto::socket::current_uid()));
            // A port nobody uses: no socket.
            let nobody = SocketAddr::from(([127, 0, 0, 1], 1));
            assert!(matches!(tcp_peer_uid(ours, nobody), PeerUid::Unknown(_)));
        } else {
            assert_eq!(found, PeerUid::Unsupported);
        }
    }
}
