//! The upstream side: connect to the real PostgreSQL server, negotiate TLS (rustls), log in
//! with the permission's secret, and hand back a stream positioned right after
//! AuthenticationOk.
//!
//! No downgrade: SCRAM-SHA-256-PLUS (channel binding `tls-server-end-point`) whenever the
//! server offers it over TLS (`channel_binding = "require"` insists on it); a
//! cleartext-password or md5 request is answered only with `tls = "verify-full"` (the server
//! proved its identity) or `allow_weak_auth = true`, otherwise the login is refused before
//! anything derived from the secret is sent.
//!
//! Source: PostgreSQL docs, "Frontend/Backend Protocol" → "Start-up", "SSL Session
//! Encryption", "SASL Authentication"; RFC 5929 §4.1 (`tls-server-end-point`).

use super::scram_client::{ChannelBinding, ScramClient, ScramKeyCache};
use super::startup::{StartupParams, PROTOCOL_3_0};
use super::wire::{self, parse_error_fields, put_message, WireError, MAX_AUTH_MESSAGE_BYTES};
use crate::config::{ChannelBindingMode, Resource, TlsMode};
use crate::credentials::command::RenewableLogin;
use crate::credentials::CredentialError;
use bytes::{BufMut, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use secrecy::{ExposeSecret, SecretString};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Everything needed to reach and log in to one upstream, built once per grant.
#[derive(Clone)]
pub struct UpstreamTarget {
    /// Resource name (for messages).
    pub resource: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database to open.
    pub database: String,
    /// Upstream user name.
    pub username: String,
    /// The secret for `username`; never logged.
    pub secret: Arc<SecretString>,
    /// `None` for `tls = "disable"`.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// TCP connect + TLS + auth deadline.
    pub connect_timeout: Duration,
    /// SCRAM keys derived from `secret`, shared by the grant's sessions (PBKDF2 once per
    /// grant, not per connection).
    pub scram_keys: ScramKeyCache,
    /// Which login methods the server may ask for.
    pub auth: AuthPolicy,
    /// For a command login that expires: where each session gets the current login
    /// (`username`, `secret` and `scram_keys` above are then the first one, unused by
    /// sessions). See [`UpstreamTarget::for_session`].
    pub renewable: Option<Arc<RenewableLogin>>,
}

impl UpstreamTarget {
    /// The target a new session logs in with: this one, or for a renewable login a copy
    /// with the current login (renewed when near its expiry).
    ///
    /// # Errors
    /// The credential program failed while renewing (never carries its output).
    pub async fn for_session(&self) -> Result<std::borrow::Cow<'_, Self>, CredentialError> {
        let Some(renewable) = &self.renewable else {
            return Ok(std::borrow::Cow::Borrowed(self));
        };
        let login = renewable.current().await?;
        Ok(std::borrow::Cow::Owned(Self {
            username: login.username.clone(),
            secret: Arc::clone(&login.secret),
            scram_keys: login.scram_keys.clone(),
            renewable: None,
            ..self.clone()
        }))
    }
}

/// Which authentication requests the daemon answers for one resource (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Answer AuthenticationCleartextPassword and AuthenticationMD5Password:
    /// `tls = "verify-full"` or `allow_weak_auth = true`.
    pub allow_weak: bool,
    /// SCRAM channel binding.
    pub channel_binding: ChannelBindingMode,
}

impl AuthPolicy {
    /// The policy a resource's config asks for.
    pub fn for_resource(resource: &Resource) -> Self {
        Self {
            allow_weak: resource.allow_weak_auth || resource.tls == TlsMode::VerifyFull,
            channel_binding: resource.channel_binding,
        }
    }
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("resource", &self.resource)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("secret", &"[REDACTED]")
            .field("tls", &self.tls.is_some())
            .field("renewable", &self.renewable.is_some())
            .finish()
    }
}

/// Why the upstream could not be used. `Display` goes to the log; [`UpstreamError::client_message`]
/// is what the client sees. Neither ever contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The whole login took longer than the connect timeout.
    #[error("timed out after {0:?} connecting and logging in")]
    Timeout(Duration),
    /// The server answered `N` to SSLRequest while TLS is required.
    #[error("server does not accept TLS, but the resource requires it")]
    TlsRefused,
    /// The TLS handshake failed (bad certificate, name mismatch, …).
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// Framing failure.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server sent an ErrorResponse during login.
    #[error("server refused login: {sqlstate} {message}")]
    Refused {
        /// SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
    },
    /// An authentication method we do not implement.
    #[error("unsupported authentication request {0}")]
    UnsupportedAuth(i32),
    /// The server asked for a method the resource does not allow (a downgrade): e.g. a
    /// cleartext password without `tls = "verify-full"`, or SCRAM without channel binding
    /// under `channel_binding = "require"`. Nothing derived from the secret was sent.
    #[error("refused to log in: {0}")]
    Downgrade(String),
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// A message safe to show an agent: what happened and what the human should look at.
    pub fn client_message(&self, resource: &str) -> String {
        match self {
            UpstreamError::Refused { sqlstate, .. } if sqlstate.starts_with("28") => format!(
                "agentd: upstream {resource} refused agentd's stored credential; ask the operator to check it (agentd secret set) and the agentd log"
            ),
            UpstreamError::Refused { sqlstate, message } => {
                format!("agentd: upstream {resource} refused the connection: {sqlstate} {message}")
            }
            UpstreamError::Downgrade(why) => format!(
                "agentd: refused to log in to upstream {resource}: {why}; ask the operator to check the server's authentication setup and the resource's tls / channel_binding / allow_weak_auth settings"
            ),
            UpstreamError::Connect { .. } | UpstreamError::Timeout(_) => {
                format!("agentd: upstream {resource} is unreachable; the agentd log has the reason")
            }
            _ => format!("agentd: could not open a session on upstream {resource}; the agentd log has the reason"),
        }
    }
}

/// The upstream byte stream: plain TCP or TLS over TCP.
pub enum UpstreamStream {
    /// `tls = "disable"`.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl UpstreamStream {
    /// The `tls-server-end-point` channel-binding data (RFC 5929 §4.1): the hash of the
    /// server's end-entity certificate with the hash function of the certificate's
    /// signature algorithm (SHA-256 when that is MD5 or SHA-1). `None` without TLS or for a
    /// signature algorithm with no single hash (RSA-PSS, Ed25519: PostgreSQL cannot bind
    /// those either).
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let UpstreamStream::Tls(tls) = self else {
            return None;
        };
        let cert = tls.get_ref().1.peer_certificates()?.first()?;
        certificate_hash(cert.as_ref())
    }
}

/// Hash functions `tls-server-end-point` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a DER certificate for `tls-server-end-point` (see
/// [`UpstreamStream::tls_server_end_point`]); `None` when it cannot be parsed or its
/// signature algorithm is not one with a single hash.
pub fn certificate_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    Some(match signature_hash(der)? {
        CertHash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        CertHash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        CertHash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

/// The hash of a certificate's `signatureAlgorithm` (X.509 `Certificate ::= SEQUENCE {
/// tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signatureValue BIT STRING }`),
/// MD5 and SHA-1 mapped to SHA-256 as RFC 5929 §4.1 says.
fn signature_hash(der: &[u8]) -> Option<CertHash> {
    let oid = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            r.next().read_der()?; // tbsCertificate
            let oid = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                r.read_optional(|r| r.read_der())?; // parameters
                Ok(oid)
            })?;
            r.next().read_der()?; // signatureValue
            Ok(oid)
        })
    })
    .ok()?;
    match oid.components().as_slice() {
        // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption
        [1, 2, 840, 113549, 1, 1, 4 | 5 | 11] => Some(CertHash::Sha256),
        [1, 2, 840, 113549, 1, 1, 12] => Some(CertHash::Sha384),
        [1, 2, 840, 113549, 1, 1, 13] => Some(CertHash::Sha512),
        // ecdsa-with-SHA1, ecdsa-with-SHA256 / 384 / 512
        [1, 2, 840, 10045, 4, 1] | [1, 2, 840, 10045, 4, 3, 2] => Some(CertHash::Sha256),
        [1, 2, 840, 10045, 4, 3, 3] => Some(CertHash::Sha384),
        [1, 2, 840, 10045, 4, 3, 4] => Some(CertHash::Sha512),
        _ => None,
    }
}

/// Builds the TLS part of an [`UpstreamTarget`] from a resource's config.
///
/// # Errors
/// A message naming the CA file or host when they cannot be used.
pub fn tls_for(resource: &Resource) -> Result<Option<(TlsConnector, ServerName<'static>)>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match resource.tls {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
        TlsMode::VerifyFull => builder
            .with_root_certificates(root_store(resource)?)
            .with_no_client_auth(),
    };
    let name = ServerName::try_from(resource.host.clone()).map_err(|e| {
        format!(
            "host {:?} is not a valid TLS server name: {e}",
            resource.host
        )
    })?;
    Ok(Some((TlsConnector::from(Arc::new(config)), name)))
}

pub(crate) fn root_store(resource: &Resource) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &resource.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// `tls = "require"`: encrypt, check handshake signatures, but accept any certificate
/// (libpq's `sslmode=require`).
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects, negotiates TLS and logs in; returns the stream right after AuthenticationOk,
/// so the server's ParameterStatus/BackendKeyData/ReadyForQuery follow on it.
///
/// # Errors
/// [`UpstreamError`]; never carries the secret.
pub async fn connect(
    target: &UpstreamTarget,
    client: &StartupParams,
) -> Result<UpstreamStream, UpstreamError> {
    tokio::time::timeout(target.connect_timeout, connect_inner(target, client))
        .await
        .map_err(|_| UpstreamError::Timeout(target.connect_timeout))?
}

async fn connect_inner(
    target: &UpstreamTarget,
    client: &StartupParams,
) -> Result<UpstreamStream, UpstreamError> {
    let mut stream = open(target).await?;
    stream
        .write_all(&startup_message(target, client))
        .await
        .map_err(WireError::Io)?;
    authenticate(&mut stream, target).await?;
    Ok(stream)
}

/// Opens a byte stream to the upstream: TCP (nodelay, keepalive), then TLS when the
/// resource asks for it. Used for sessions and for forwarding CancelRequests.
///
/// # Errors
/// [`UpstreamError::Connect`], [`UpstreamError::TlsRefused`] or [`UpstreamError::Tls`].
pub async fn open(target: &UpstreamTarget) -> Result<UpstreamStream, UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    Ok(match &target.tls {
        None => UpstreamStream::Plain(tcp),
        Some((connector, name)) => {
            UpstreamStream::Tls(Box::new(start_tls(tcp, connector, name).await?))
        }
    })
}

/// TCP keepalive on the upstream socket, so a vanished server or a dropped NAT entry ends
/// an idle session instead of leaving it hanging: first probe after 60 s idle, then every
/// 15 s.
fn set_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

async fn start_tls(
    mut tcp: TcpStream,
    connector: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    // SSLRequest: Int32 8, Int32 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(WireError::Io)?;
    match tcp.read_u8().await.map_err(WireError::Io)? {
        b'S' => connector
            .connect(name.clone(), tcp)
            .await
            .map_err(UpstreamError::Tls),
        b'N' => Err(UpstreamError::TlsRefused),
        other => Err(UpstreamError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

/// The StartupMessage we send upstream: the permission's user, the resource's database, and
/// the client's other parameters (`application_name`, `client_encoding`, `DateStyle`, …).
fn startup_message(target: &UpstreamTarget, client: &StartupParams) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_3_0);
    let mut param = |k: &str, v: &str| {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    };
    param("user", &target.username);
    param("database", &target.database);
    for (k, v) in &client.options {
        if !k.starts_with("_pq_.") {
            param(k, v);
        }
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32((body.len() + 4) as i32);
    out.put_slice(&body);
    out
}

/// Answers the server's authentication requests until AuthenticationOk, refusing the
/// downgrades the resource's [`AuthPolicy`] rules out (module docs).
async fn authenticate(
    stream: &mut UpstreamStream,
    target: &UpstreamTarget,
) -> Result<(), UpstreamError> {
    let password = target.secret.expose_secret().as_bytes();
    let policy = target.auth;
    let require_binding = policy.channel_binding == ChannelBindingMode::Require;
    let mut scram: Option<ScramClient> = None;
    let mut bound = false;
    loop {
        let msg = wire::read_message(stream, MAX_AUTH_MESSAGE_BYTES).await?;
        match msg.kind {
            b'R' => {}
            b'E' => return Err(refused(&msg.body)),
            b'N' => continue, // NoticeResponse during login: nothing for the client yet.
            b'v' => continue, // NegotiateProtocolVersion: we asked for nothing optional.
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during login",
                    other as char
                )))
            }
        }
        if msg.body.len() < 4 {
            return Err(UpstreamError::Protocol(
                "short Authentication message".into(),
            ));
        }
        let code = i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
        let data = &msg.body[4..];
        let mut out = BytesMut::new();
        match code {
            0 if require_binding && !bound => {
                return Err(UpstreamError::Downgrade(
                    "the server let agentd in without SCRAM-SHA-256-PLUS, but channel_binding = \"require\"".into(),
                ))
            }
            0 => return Ok(()),
            3 | 5 if require_binding || !policy.allow_weak => {
                let method = if code == 3 { "a cleartext password" } else { "an md5 password hash" };
                return Err(UpstreamError::Downgrade(format!(
                    "the server asked for {method}, which agentd sends only with tls = \"verify-full\" (or allow_weak_auth = true){}",
                    if require_binding { " and never with channel_binding = \"require\"" } else { "" }
                )));
            }
            3 => {
                let mut body = password.to_vec();
                body.push(0);
                put_message(&mut out, b'p', &body);
                zeroize::Zeroize::zeroize(&mut body);
            }
            5 => {
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| UpstreamError::Protocol("short md5 salt".into()))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    target.username.as_bytes(),
                    password,
                    salt,
                );
                let mut body = hash.into_bytes();
                body.push(0);
                put_message(&mut out, b'p', &body);
            }
            10 => {
                let s = ScramClient::new(choose_binding(data, stream, policy.channel_binding)?);
                bound = matches!(s.mechanism(), "SCRAM-SHA-256-PLUS");
                let first = s.client_first();
                let mut body = s.mechanism().as_bytes().to_vec();
                body.push(0);
                body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                body.extend_from_slice(&first);
                put_message(&mut out, b'p', &body);
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLContinue before SASL".into()))?;
                let reply = s
                    .client_final(data, &target.secret, &target.scram_keys)
                    .await
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                put_message(&mut out, b'p', &reply);
            }
            12 => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| UpstreamError::Protocol("SASLFinal before SASL".into()))?;
                s.verify_server_final(data)
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                continue;
            }
            other => return Err(UpstreamError::UnsupportedAuth(other)),
        }
        stream.write_all(&out).await.map_err(WireError::Io)?;
        stream.flush().await.map_err(WireError::Io)?;
    }
}

/// The SCRAM variant to use for an AuthenticationSASL offering `mechanisms` (NUL-separated
/// names): SCRAM-SHA-256-PLUS bound to the server's certificate when offered over TLS and
/// not disabled; otherwise plain SCRAM-SHA-256, flagged `y` when we could have bound over
/// TLS (so a server that supports binding detects a stripped offer).
///
/// # Errors
/// [`UpstreamError::Downgrade`] under `channel_binding = "require"` without PLUS over TLS;
/// [`UpstreamError::Protocol`] when no usable mechanism is offered.
fn choose_binding(
    mechanisms: &[u8],
    stream: &UpstreamStream,
    mode: ChannelBindingMode,
) -> Result<ChannelBinding, UpstreamError> {
    let offered = |name: &[u8]| mechanisms.split(|&b| b == 0).any(|m| m == name);
    let cert_hash = match mode {
        ChannelBindingMode::Disable => None,
        _ => stream.tls_server_end_point(),
    };
    if let (Some(hash), true) = (&cert_hash, offered(b"SCRAM-SHA-256-PLUS")) {
        return Ok(ChannelBinding::TlsServerEndPoint(hash.clone()));
    }
    if mode == ChannelBindingMode::Require {
        let why = if !matches!(stream, UpstreamStream::Tls(_)) {
            "there is no TLS to bind to"
        } else if cert_hash.is_none() {
            "the server certificate's signature algorithm has no tls-server-end-point hash"
        } else {
            "the server does not offer SCRAM-SHA-256-PLUS"
        };
        return Err(UpstreamError::Downgrade(format!(
            "channel_binding = \"require\" but {why}"
        )));
    }
    if !offered(b"SCRAM-SHA-256") {
        return Err(UpstreamError::Protocol(
            "server offers no SCRAM-SHA-256".into(),
        ));
    }
    Ok(if cert_hash.is_some() {
        ChannelBinding::NotOffered
    } else {
        ChannelBinding::None
    })
}

/// The [`UpstreamError::Refused`] for an ErrorResponse body (its SQLSTATE and message).
pub fn refused(body: &[u8]) -> UpstreamError {
    let fields = parse_error_fields(body);
    let get = |t: u8| {
        fields
            .iter()
            .find(|(f, _)| *f == t)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    UpstreamError::Refused {
        sqlstate: get(b'C'),
        message: get(b'M'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// RFC 5929 §4.1: the certificate's own signature hash picks the hash function.
    #[test]
    fn tls_server_end_point_hash_follows_the_signature_algorithm() {
        for (alg, expected_len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["db.test".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = cert.der().as_ref();
            let hash = certificate_hash(der).unwrap();
            assert_eq!(hash.len(), expected_len);
            let want = if expected_len == 32 {
                sha2::Sha256::digest(der).to_vec()
            } else {
                sha2::Sha384::digest(der).to_vec()
            };
            assert_eq!(hash, want);
        }
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.test".to_owned()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        assert_eq!(
            certificate_hash(cert.der().as_ref()),
            None,
            "Ed25519 has no binding hash"
        );
        assert_eq!(certificate_hash(b"\x30\x03\x02\x01\x00"), None);
    }
}
