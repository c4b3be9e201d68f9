//! The grant token on the way in, the real credential on the way out.
//!
//! The client sends the token where it would send the real credential for the resource's
//! scheme (and `Authorization: Bearer <token>` always works): bearer → `Authorization:
//! Bearer`; header → the configured header, in the value template; basic → the password of
//! `Authorization: Basic`; query → the configured parameter. Every candidate must equal the
//! token (compared in constant time); all of them are removed before the real credential is
//! injected.

use crate::config::http::HttpAuth;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, PROXY_AUTHORIZATION};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Why a request's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token anywhere it may be.
    Missing,
    /// A token that is not this grant's.
    Wrong,
}

/// One grant's token check and credential injection. `Debug` shows only the scheme.
pub struct Injector {
    scheme: HttpAuth,
    token: SecretString,
    /// The header the real credential goes in (bearer, header, basic) and its value, held
    /// zeroizing for the grant's life; each request gets a sensitive `HeaderValue` copy.
    header: Option<(HeaderName, Zeroizing<Vec<u8>>)>,
    /// `param=secret`, percent-encoded (query).
    query_pair: Option<Zeroizing<String>>,
    /// The SigV4 signer (aws_sigv4).
    sigv4: Option<super::sigv4::Signer>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("scheme", &self.scheme.scheme())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// `value` as a header value held zeroizing, checked once that it is one.
fn sensitive(value: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    // The checked copy is dropped at once (a `HeaderValue` cannot be zeroized).
    HeaderValue::from_str(value)
        .map_err(|_| "the credential holds characters not allowed in an HTTP header".to_owned())?;
    Ok(Zeroizing::new(value.as_bytes().to_vec()))
}

impl Injector {
    /// Prepares injection of `secret` (with `username` for basic auth, or as the access key
    /// id of an aws_sigv4 secret without one) and the check of `token`.
    ///
    /// # Errors
    /// Agent-safe text when the secret cannot go in a header.
    pub fn new(
        scheme: HttpAuth,
        token: SecretString,
        secret: &SecretString,
        username: &str,
    ) -> Result<Self, String> {
        let s = secret.expose_secret();
        let mut sigv4 = None;
        let (header, query_pair) = match &scheme {
            HttpAuth::Bearer => (
                Some((
                    AUTHORIZATION,
                    sensitive(&Zeroizing::new(format!("Bearer {s}")))?,
                )),
                None,
            ),
            HttpAuth::Header { name, value } => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| "auth.name is not a valid header name".to_owned())?;
                let value = Zeroizing::new(value.replace("{{secret}}", s));
                (Some((name, sensitive(&value)?)), None)
            }
            HttpAuth::Basic { .. } => {
                let pair = Zeroizing::new(format!("{username}:{s}"));
                let encoded =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*pair));
                (
                    Some((
                        AUTHORIZATION,
                        sensitive(&Zeroizing::new(format!("Basic {}", &*encoded)))?,
                    )),
                    None,
                )
            }
            HttpAuth::Query { param } => (
                None,
                Some(Zeroizing::new(format!(
                    "{}={}",
                    utf8_percent_encode(param, COMPONENT),
                    utf8_percent_encode(s, COMPONENT)
                ))),
            ),
            HttpAuth::AwsSigv4 { service, region } => {
                let key = super::sigv4::parse_key(secret, username)?;
                sigv4 = Some(super::sigv4::Signer::new(service, region, key, &token));
                (None, None)
            }
        };
        Ok(Self {
            scheme,
            token,
            header,
            query_pair,
            sigv4,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> &HttpAuth {
        &self.scheme
    }

    /// The SigV4 signer, for `aws_sigv4`.
    pub fn sigv4(&self) -> Option<&super::sigv4::Signer> {
        self.sigv4.as_ref()
    }

    /// The values the response scanner looks for: the secret, or for `aws_sigv4` the
    /// secret access key and the session token (not the access key id, an identifier).
    pub fn scan_secrets(&self, secret: &SecretString) -> Vec<Zeroizing<Vec<u8>>> {
        match &self.sigv4 {
            Some(signer) => signer.secret_forms(),
            None => vec![Zeroizing::new(secret.expose_secret().as_bytes().to_vec())],
        }
    }

    fn matches(&self, candidate: &[u8]) -> bool {
        let token = self.token.expose_secret().as_bytes();
        candidate.len() == token.len() && bool::from(candidate.ct_eq(token))
    }

    /// Checks every token candidate in `headers` and `query` (raw `key=value` pairs) and
    /// removes them, with every `Authorization` / `Proxy-Authorization` header. For
    /// `aws_sigv4` a SigV4 `Authorization` is returned for the caller to verify
    /// ([`super::sigv4::Signer::verify`]) once the payload hash is known.
    ///
    /// # Errors
    /// [`TokenError`]: none found, or one that is not the grant's.
    pub fn take_token(
        &self,
        headers: &mut HeaderMap,
        query: &mut Vec<String>,
    ) -> Result<Option<super::sigv4::ClientSignature>, TokenError> {
        let mut found = 0usize;
        let mut wrong = false;
        let mut signed = None;
        if self.sigv4.is_some() {
            for value in headers.get_all(AUTHORIZATION) {
                if value.as_bytes().starts_with(b"AWS4-") {
                    found += 1;
                    match super::sigv4::ClientSignature::parse(value.as_bytes()) {
                        Some(sig) if signed.is_none() => signed = Some(sig),
                        _ => wrong = true,
                    }
                }
            }
        }
        let mut check = |candidate: &[u8]| {
            found += 1;
            if !self.matches(candidate) {
                wrong = true;
            }
        };
        for value in headers.get_all(AUTHORIZATION) {
            let v = value.as_bytes();
            if signed.is_some() && v.starts_with(b"AWS4-") {
                continue;
            }
            if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
                check(v[7..].trim_ascii());
            } else if v.len() > 6 && v[..6].eq_ignore_ascii_case(b"basic ") {
                let decoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(v[6..].trim_ascii())
                        .unwrap_or_default(),
                );
                match decoded.iter().position(|&b| b == b':') {
                    Some(i) => check(&decoded[i + 1..]),
                    None => check(&decoded),
                }
            } else {
                check(v);
            }
        }
        headers.remove(AUTHORIZATION);
        headers.remove(PROXY_AUTHORIZATION);
        match &self.scheme {
            HttpAuth::Header { name, value } => {
                let (prefix, suffix) = value.split_once("{{secret}}").unwrap_or(("", ""));
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    for v in headers.get_all(&name) {
                        let v = v.as_bytes();
                        let inner = v
                            .strip_prefix(prefix.as_bytes())
                            .and_then(|r| r.strip_suffix(suffix.as_bytes()))
                            .unwrap_or(v);
                        check(inner);
                    }
                    headers.remove(&name);
                }
            }
            HttpAuth::Query { param } => {
                query.retain(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if percent_decode_str(k).decode_utf8_lossy() != param.as_str() {
                        return true;
                    }
                    let v = Zeroizing::new(
                        percent_decode_str(&v.replace('+', " ")).collect::<Vec<u8>>(),
                    );
                    check(&v);
                    false
                });
            }
            HttpAuth::Bearer | HttpAuth::Basic { .. } | HttpAuth::AwsSigv4 { .. } => {}
        }
        match (found, wrong) {
            (0, _) => Err(TokenError::Missing),
            (_, true) => Err(TokenError::Wrong),
            _ => Ok(signed),
        }
    }

    /// Puts the real credential on the request.
    pub fn inject(&self, headers: &mut HeaderMap, query: &mut Vec<String>) {
        if let Some((name, value)) = &self.header {
            // Checked at construction; the per-request copy is marked sensitive (hyper keeps
            // it out of HPACK tables and Debug) and freed with the request, not zeroized.
            if let Ok(mut v) = HeaderValue::from_bytes(value) {
                v.set_sensitive(true);
                headers.insert(name.clone(), v);
            }
        }
        if let Some(pair) = &self.query_pair {
            query.push(pair.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(scheme: HttpAuth) -> Injector {
        Injector::new(
            scheme,
            SecretString::from("tok123"),
            &SecretString::from("real-secret"),
            "bot",
        )
        .unwrap()
    }

    #[test]
    fn token_is_taken_from_each_place_and_replaced() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok123"));
        let mut q = vec![];
        let i = injector(HttpAuth::Bearer);
        assert_eq!(i.take_token(&mut h, &mut q), Ok(None));
        i.inject(&mut h, &mut q);
        assert_eq!(h[AUTHORIZATION], "Bearer real-secret");

        let i = injector(HttpAuth::Header {
            name: "x-api-key".into(),
            value: "key {{secret}}".into(),
        });
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("key tok123"));
        assert_eq!(i.take_token(&mut h, &mut q), Ok(None));
        i.inject(&mut h, &mut q);
        assert_eq!(h["x-api-key"], "key real-secret");

        let i = injector(HttpAuth::Basic {
            username: String::new(),
        });
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("anyone:tok123")
            ))
            .unwrap(),
        );
        assert_eq!(i.take_token(&mut h, &mut q), Ok(None));
        i.inject(&mut h, &mut q);
        assert_eq!(
            h[AUTHORIZATION].to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("bot:real-secret")
            )
        );

        let i = injector(HttpAuth::Query {
            param: "api_key".into(),
        });
        let mut h = HeaderMap::new();
        let mut q = vec!["a=1".to_owned(), "api_key=tok123".to_owned()];
        assert_eq!(i.take_token(&mut h, &mut q), Ok(None));
        i.inject(&mut h, &mut q);
        assert_eq!(q, vec!["a=1".to_owned(), "api_key=real-secret".to_owned()]);
    }

    #[test]
    fn missing_and_wrong_tokens_are_refused() {
        let i = injector(HttpAuth::Bearer);
        let mut q = vec![];
        assert_eq!(
            i.take_token(&mut HeaderMap::new(), &mut q),
            Err(TokenError::Missing)
        );
        for bad in ["Bearer tok124", "Bearer tok1234", "tok123x", "Bearer "] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                i.take_token(&mut h, &mut q),
                Err(TokenError::Wrong),
                "{bad}"
            );
        }
        assert!(!format!("{i:?}").contains("tok123"));
    }
}
