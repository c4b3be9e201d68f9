//! AWS Signature Version 4 for `auth = { scheme = "aws_sigv4", service, region }`, through
//! the `aws-sigv4` crate (the signer of the AWS SDK for Rust).
//!
//! **The secret** (keychain entry, system store or command `password`) is
//! `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`
//! (AWS key ids, secret keys and session tokens never contain `:`); a secret without `:` is
//! the secret access key alone, and the permission's `username` (or the command's
//! `username`) is the access key id. The secret access key and the session token are held
//! in [`Credentials`] (zeroizing, `Debug` redacted) and scanned for in responses; the access
//! key id is an identifier AWS itself prints in errors, so it is not.
//!
//! **The client** signs as any AWS SDK does, with any access key id and **the grant token as
//! its secret access key** (boto3 / aws-cli: `AWS_ACCESS_KEY_ID=agentd
//! AWS_SECRET_ACCESS_KEY=<token> AWS_ENDPOINT_URL=<handle base_url>`; curl: `--aws-sigv4
//! aws:amz:REGION:SERVICE --user agentd:<token>`), so the token itself never crosses the
//! socket; or it sends `Authorization: Bearer <token>` (the MCP `http_request` tool, plain
//! curl). The listener recomputes the client's signature with the token ([`Signer::verify`]:
//! the headers the client listed in `SignedHeaders`, its scope, its `x-amz-date`, at most
//! [`MAX_CLOCK_SKEW`] from now) and compares in constant time. Then the client's
//! `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and `X-Amz-Content-SHA256` (and
//! presigning query parameters) are removed, and after the path is normalised and allowed
//! the request is signed afresh with the real key for the configured service and region
//! ([`Signer::sign`]: every forwarded header but `user-agent`, `expect`, `x-amzn-trace-id`,
//! `transfer-encoding`, plus `host` = the upstream authority).
//!
//! **Payload hash** ([`PayloadPlan`]): the client's `x-amz-content-sha256` is used as is
//! when it is a SHA-256 hex digest (S3 then checks the body against it), `UNSIGNED-PAYLOAD`
//! or `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: the body streams, unbuffered. Chunk-signed
//! uploads (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD…`) are refused: each chunk's signature chains
//! from the client's key and would have to be re-signed. Without that header the body's
//! hash is needed, both to check a signing client and because services other than S3 do
//! not accept `UNSIGNED-PAYLOAD`: the body is then buffered, at most
//! [`super::Limits::max_buffered_body_bytes`] (16 MiB by default; larger gets 413) and at
//! most [`MAX_BUFFERING`] requests per listener at once. For `service = "s3"` with a
//! Bearer client the body streams and is signed `UNSIGNED-PAYLOAD` (S3 accepts it over
//! TLS, which is the only transport agentd uses upstream).

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// Header carrying the payload hash (S3 requires it; every SDK sends it for S3).
pub const CONTENT_SHA256: &str = "x-amz-content-sha256";
/// The payload hash of a body that is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The payload hash of an unsigned `aws-chunked` body with checksum trailers.
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// How far a client's `x-amz-date` may be from the daemon's clock (AWS allows 15 minutes).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Requests of one listener whose bodies may be buffered for hashing at once.
pub const MAX_BUFFERING: usize = 4;

/// Request headers the client's signing leaves behind; removed before re-signing.
const CLIENT_SIGNING_HEADERS: [&str; 3] = ["x-amz-date", "x-amz-security-token", CONTENT_SHA256];
/// Query parameters of a presigned URL; removed before forwarding.
const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];
/// Forwarded headers not signed upstream: the crate's defaults plus `expect` (as botocore).
const NOT_SIGNED: [&str; 5] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
    "expect",
];

/// Parses the secret into an AWS key: `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, or
/// the secret access key alone with `username` as the access key id.
///
/// # Errors
/// Agent-safe text (never the secret) when the shape is wrong.
pub fn parse_key(secret: &SecretString, username: &str) -> Result<Credentials, String> {
    let s = secret.expose_secret().trim();
    let parts: Vec<&str> = s.split(':').collect();
    let (id, key, token) = match parts.as_slice() {
        [key] if !username.is_empty() => (username, *key, None),
        [id, key] => (*id, *key, None),
        [id, key, token] if !token.is_empty() => (*id, *key, Some((*token).to_owned())),
        _ => {
            return Err(
                "the aws_sigv4 secret must be ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] \
                 (or the secret access key with the permission's username as the key id)"
                    .to_owned(),
            )
        }
    };
    if id.is_empty() || key.is_empty() {
        return Err("the aws_sigv4 secret has an empty access key id or secret key".to_owned());
    }
    Ok(Credentials::new(id, key, token, None, "agentd"))
}

/// A client's `Authorization: AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSignature {
    /// `YYYYMMDD` of the scope.
    pub date: String,
    /// Region of the scope.
    pub region: String,
    /// Service of the scope.
    pub service: String,
    /// Lower-case header names, in the client's order.
    pub signed_headers: Vec<String>,
    /// Lower-case hex signature.
    pub signature: String,
}

impl ClientSignature {
    /// Parses an `Authorization` value; `None` when it is not a SigV4 one (or is malformed).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let v = std::str::from_utf8(value).ok()?;
        let rest = v.strip_prefix("AWS4-HMAC-SHA256")?.trim_start();
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (k, val) = part.trim().split_once('=')?;
            match k {
                "Credential" => credential = Some(val),
                "SignedHeaders" => signed = Some(val),
                "Signature" => signature = Some(val),
                _ => return None,
            }
        }
        // The access key id is the client's to choose and may itself hold '/'.
        let mut scope = credential?.rsplitn(5, '/');
        if scope.next()? != "aws4_request" {
            return None;
        }
        let service = scope.next()?.to_owned();
        let region = scope.next()?.to_owned();
        let date = scope.next()?.to_owned();
        let signed_headers: Vec<String> = signed?.split(';').map(str::to_owned).collect();
        let signature = signature?.to_owned();
        let ok = date.len() == 8
            && date.bytes().all(|b| b.is_ascii_digit())
            && !region.is_empty()
            && !service.is_empty()
            && signed_headers.len() <= 64
            && signed_headers.iter().all(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_lowercase() || b"-_0123456789".contains(&b))
            })
            && signature.len() == 64
            && signature
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then_some(Self {
            date,
            region,
            service,
            signed_headers,
            signature,
        })
    }
}

/// Why a client's signature was not accepted (the text is safe to show the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `x-amz-date`, or its date is not the scope's.
    #[error("the SigV4 request has no valid x-amz-date matching its credential scope")]
    Date,
    /// `x-amz-date` too far from now.
    #[error("the SigV4 request's x-amz-date is more than 15 minutes from the daemon's clock")]
    Skew,
    /// `host` not signed, or a signed header missing or not text.
    #[error("the SigV4 request must sign host, and every signed header must be present")]
    Headers,
    /// The signature does not match (wrong token, or the request changed).
    #[error("the SigV4 signature does not match (sign with the grant token as the secret key)")]
    Mismatch,
}

/// How the payload hash of one request is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadPlan {
    /// This value, from the client's `x-amz-content-sha256`; the body streams.
    Given(String),
    /// `UNSIGNED-PAYLOAD` upstream (S3, Bearer client); the body streams.
    Unsigned,
    /// The body must be buffered and hashed.
    Buffer,
}

/// Refusal text for a payload hash agentd cannot re-sign.
pub const CHUNK_SIGNED: &str =
    "chunk-signed uploads (x-amz-content-sha256: STREAMING-AWS4-…) cannot be re-signed by agentd";

/// Decides the [`PayloadPlan`] for a request with the client's `x-amz-content-sha256`
/// value `given`, whether the client signed with SigV4, and whether the service is S3.
///
/// # Errors
/// [`CHUNK_SIGNED`] (or a bad value) as agent-safe text.
pub fn payload_plan(given: Option<&[u8]>, signed: bool, s3: bool) -> Result<PayloadPlan, String> {
    match given {
        Some(v) => {
            let v = std::str::from_utf8(v).map_err(|_| "x-amz-content-sha256 is not text")?;
            let hex = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            if hex || v == UNSIGNED_PAYLOAD || v == STREAMING_UNSIGNED_TRAILER {
                Ok(PayloadPlan::Given(v.to_owned()))
            } else if v.starts_with("STREAMING-") {
                Err(CHUNK_SIGNED.to_owned())
            } else {
                Err("x-amz-content-sha256 must be a SHA-256 hex digest, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned())
            }
        }
        None if s3 && !signed => Ok(PayloadPlan::Unsigned),
        None => Ok(PayloadPlan::Buffer),
    }
}

/// Lower-case hex SHA-256 of `body`.
pub fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(body);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One grant's SigV4 signer (real key, upstream) and verifier (token, client side).
/// `Debug` shows only the service and region.
pub struct Signer {
    key: Credentials,
    service: String,
    region: String,
    upstream: Identity,
    client: Identity,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("service", &self.service)
            .field("region", &self.region)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// The crate's settings for `service`: S3 signs the path as sent (single encoding, no
/// normalisation) and adds `x-amz-content-sha256`; other services double-encode and
/// normalise.
fn settings(service: &str, add_content_sha256: bool, excluded: &[&'static str]) -> SigningSettings {
    let mut s = SigningSettings::default();
    if service == "s3" {
        s.percent_encoding_mode = PercentEncodingMode::Single;
        s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    if add_content_sha256 {
        s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    s.excluded_headers = Some(excluded.iter().map(|h| Cow::Borrowed(*h)).collect());
    s
}

fn parse_amz_date(v: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl Signer {
    /// A signer for `service` in `region` with the real `key`; clients are checked against
    /// `token` as their secret access key.
    pub fn new(service: &str, region: &str, key: Credentials, token: &SecretString) -> Self {
        let client = Credentials::new("agentd", token.expose_secret(), None, None, "grant");
        Self {
            service: service.to_owned(),
            region: region.to_owned(),
            upstream: key.clone().into(),
            key,
            client: client.into(),
        }
    }

    /// True for S3 (`UNSIGNED-PAYLOAD` accepted, `x-amz-content-sha256` required).
    pub fn is_s3(&self) -> bool {
        self.service == "s3"
    }

    /// The real secret access key and session token, for the response scanner.
    pub fn secret_forms(&self) -> Vec<zeroize::Zeroizing<Vec<u8>>> {
        let mut forms = vec![zeroize::Zeroizing::new(
            self.key.secret_access_key().as_bytes().to_vec(),
        )];
        if let Some(t) = self.key.session_token() {
            forms.push(zeroize::Zeroizing::new(t.as_bytes().to_vec()));
        }
        forms
    }

    /// Checks a client's SigV4 signature `sig` over `method`, `path_and_query` (as the
    /// client sent them), the signed ones of `headers` and `payload_hash`, with the grant
    /// token as the secret key, at `now`.
    ///
    /// # Errors
    /// [`VerifyError`].
    pub fn verify(
        &self,
        sig: &ClientSignature,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        payload_hash: &str,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::Date)?;
        if !amz_date.starts_with(&sig.date) {
            return Err(VerifyError::Date);
        }
        let time = parse_amz_date(amz_date).ok_or(VerifyError::Date)?;
        let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
        if skew > MAX_CLOCK_SKEW {
            return Err(VerifyError::Skew);
        }
        if !sig.signed_headers.iter().any(|h| h == "host") {
            return Err(VerifyError::Headers);
        }
        let mut signed: Vec<(&str, &str)> = Vec::new();
        for name in &sig.signed_headers {
            let mut any = false;
            for v in headers.get_all(name.as_str()) {
                signed.push((name, v.to_str().map_err(|_| VerifyError::Headers)?));
                any = true;
            }
            if !any {
                return Err(VerifyError::Headers);
            }
        }
        let uri = format!("http://localhost{path_and_query}");
        let request = SignableRequest::new(
            method,
            uri,
            signed.into_iter(),
            SignableBody::Precomputed(payload_hash.to_owned()),
        )
        .map_err(|_| VerifyError::Headers)?;
        let params = v4::SigningParams::builder()
            .identity(&self.client)
            .region(&sig.region)
            .name(&sig.service)
            .time(time)
            .settings(settings(&sig.service, false, &[]))
            .build()
            .map_err(|_| VerifyError::Headers)?
            .into();
        let out = sign(request, &params).map_err(|_| VerifyError::Headers)?;
        let ours = out.signature().as_bytes();
        let theirs = sig.signature.as_bytes();
        if ours.len() == theirs.len() && bool::from(ours.ct_eq(theirs)) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    /// Removes what the client's own signing left on the request: `Authorization`,
    /// `X-Amz-Date`, `X-Amz-Security-Token`, `X-Amz-Content-SHA256` and presigning query
    /// parameters (`query` holds raw `key=value` pairs).
    pub fn strip_client_signing(headers: &mut HeaderMap, query: &mut Vec<String>) {
        headers.remove(http::header::AUTHORIZATION);
        for h in CLIENT_SIGNING_HEADERS {
            headers.remove(h);
        }
        query.retain(|pair| {
            let key = pair.split_once('=').map_or(pair.as_str(), |(k, _)| k);
            !PRESIGN_PARAMS.contains(&key)
        });
    }

    /// Signs the outgoing request (`uri` absolute, `headers` as they will be sent) with the
    /// real key at `now`, and sets `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`
    /// (sensitive) and for S3 `X-Amz-Content-SHA256` on `headers`.
    ///
    /// # Errors
    /// Agent-safe text when the request cannot be signed (a header that is not text).
    pub fn sign(
        &self,
        method: &str,
        uri: &http::Uri,
        headers: &mut HeaderMap,
        payload_hash: &str,
        now: SystemTime,
    ) -> Result<(), String> {
        let unsigned = |e: &dyn std::fmt::Display| format!("the request could not be signed: {e}");
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            let value = value
                .to_str()
                .map_err(|_| format!("header {name} is not text and cannot be signed"))?;
            pairs.push((name.as_str(), value));
        }
        let request = SignableRequest::new(
            method,
            uri.to_string(),
            pairs.into_iter(),
            SignableBody::Precomputed(payload_hash.to_owned()),
        )
        .map_err(|e| unsigned(&e))?;
        let params = v4::SigningParams::builder()
            .identity(&self.upstream)
            .region(&self.region)
            .name(&self.service)
            .time(now)
            .settings(settings(&self.service, self.is_s3(), &NOT_SIGNED))
            .build()
            .map_err(|e| unsigned(&e))?
            .into();
        let (instructions, _) = sign(request, &params)
            .map_err(|e| unsigned(&e))?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        for h in new_headers {
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|_| "the signature is not a header value".to_owned())?;
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            headers.insert(HeaderName::from_static(h.name()), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// aws-sig-v4-test-suite `get-vanilla` (header-signed-request.txt).
    const VANILLA_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn vanilla_time() -> SystemTime {
        parse_amz_date("20150830T123600Z").unwrap()
    }

    #[test]
    fn get_vanilla_known_answer() {
        // The real-key side: what agentd sends upstream.
        let key = parse_key(&SecretString::from(format!("{AKID}:{KEY}")), "").unwrap();
        let signer = Signer::new("service", "us-east-1", key, &SecretString::from("unused"));
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        let uri: http::Uri = "https://example.amazonaws.com/".parse().unwrap();
        signer
            .sign("GET", &uri, &mut headers, EMPTY_SHA256, vanilla_time())
            .unwrap();
        assert_eq!(headers["authorization"], VANILLA_AUTH);
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert!(headers["authorization"].is_sensitive());

        // The client side: the same request verified with the key as "the token".
        let verifier = Signer::new(
            "service",
            "us-east-1",
            Credentials::new("x", "y", None, None, "t"),
            &SecretString::from(KEY),
        );
        let sig = ClientSignature::parse(VANILLA_AUTH.as_bytes()).unwrap();
        assert_eq!(sig.signed_headers, ["host", "x-amz-date"]);
        let mut got = HeaderMap::new();
        got.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        got.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        got.insert("user-agent", HeaderValue::from_static("not signed"));
        let now = vanilla_time() + Duration::from_secs(60);
        assert_eq!(
            verifier.verify(&sig, "GET", "/", &got, EMPTY_SHA256, now),
            Ok(())
        );
        // Anything changed: refused.
        assert_eq!(
            verifier.verify(&sig, "GET", "/x", &got, EMPTY_SHA256, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verifier.verify(&sig, "POST", "/", &got, EMPTY_SHA256, now),
            Err(VerifyError::Mismatch)
        );
        let late = vanilla_time() + MAX_CLOCK_SKEW + Duration::from_secs(1);
        assert_eq!(
            verifier.verify(&sig, "GET", "/", &got, EMPTY_SHA256, late),
            Err(VerifyError::Skew)
        );
        let mut no_host = got.clone();
        no_host.remove("host");
        assert_eq!(
            verifier.verify(&sig, "GET", "/", &no_host, EMPTY_SHA256, now),
            Err(VerifyError::Headers)
        );
        let wrong_token = Signer::new(
            "service",
            "us-east-1",
            Credentials::new("x", "y", None, None, "t"),
            &SecretString::from("not-the-token"),
        );
        assert_eq!(
            wrong_token.verify(&sig, "GET", "/", &got, EMPTY_SHA256, now),
            Err(VerifyError::Mismatch)
        );
        assert!(!format!("{signer:?}").contains(KEY));
    }

    #[test]
    fn key_shapes() {
        let k = parse_key(&SecretString::from("AKID:sec:tok"), "").unwrap();
        assert_eq!(
            (k.access_key_id(), k.secret_access_key(), k.session_token()),
            ("AKID", "sec", Some("tok"))
        );
        let k = parse_key(&SecretString::from("sec"), "AKID").unwrap();
        assert_eq!((k.access_key_id(), k.secret_access_key()), ("AKID", "sec"));
        for bad in ["Zsec9", ":Zsec9", "AKID:", "a:Zsec9:c:d", "a:Zsec9:"] {
            let e = parse_key(&SecretString::from(bad), "").unwrap_err();
            assert!(!e.contains("Zsec9"), "the error shows the secret");
        }
    }

    #[test]
    fn payload_plans() {
        assert_eq!(
            payload_plan(Some(EMPTY_SHA256.as_bytes()), true, false),
            Ok(PayloadPlan::Given(EMPTY_SHA256.to_owned()))
        );
        assert_eq!(
            payload_plan(Some(b"UNSIGNED-PAYLOAD"), true, true),
            Ok(PayloadPlan::Given(UNSIGNED_PAYLOAD.to_owned()))
        );
        assert_eq!(
            payload_plan(Some(b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), true, true),
            Err(CHUNK_SIGNED.to_owned())
        );
        assert_eq!(payload_plan(None, false, true), Ok(PayloadPlan::Unsigned));
        assert_eq!(payload_plan(None, true, true), Ok(PayloadPlan::Buffer));
        assert_eq!(payload_plan(None, false, false), Ok(PayloadPlan::Buffer));
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }

    #[test]
    fn authorization_parsing() {
        assert!(ClientSignature::parse(b"Bearer x").is_none());
        assert!(ClientSignature::parse(b"AWS4-HMAC-SHA256 Credential=a/b").is_none());
        let s = ClientSignature::parse(
            b"AWS4-HMAC-SHA256 Credential=a/b/20200101/eu-west-1/s3/aws4_request,SignedHeaders=host;x-amz-date,Signature=0000000000000000000000000000000000000000000000000000000000000000",
        )
        .unwrap();
        assert_eq!((s.region.as_str(), s.service.as_str()), ("eu-west-1", "s3"));
    }

    /// What SigV4 adds per request: one client verification plus one upstream signing.
    /// `cargo test -p agentd --release --lib sigv4_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run in release"]
    fn sigv4_cost() {
        let key = parse_key(&SecretString::from(format!("{AKID}:{KEY}")), "").unwrap();
        let signer = Signer::new("service", "us-east-1", key, &SecretString::from(KEY));
        let sig = ClientSignature::parse(VANILLA_AUTH.as_bytes()).unwrap();
        let mut got = HeaderMap::new();
        got.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        got.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let uri: http::Uri = "https://example.amazonaws.com/".parse().unwrap();
        let now = vanilla_time();
        let n = 20_000u32;
        let started = std::time::Instant::now();
        for _ in 0..n {
            signer
                .verify(&sig, "GET", "/", &got, EMPTY_SHA256, now)
                .unwrap();
            let mut out = got.clone();
            signer
                .sign("GET", &uri, &mut out, EMPTY_SHA256, now)
                .unwrap();
        }
        let each = started.elapsed() / n;
        println!("sigv4 verify + sign: {each:?} per request ({n} requests)");
    }
}
