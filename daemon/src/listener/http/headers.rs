//! Header policy: what the listener refuses, drops or keeps of the headers that cross it,
//! beyond the token ([`super::auth`]) and hop-by-hop handling.
//!
//! Request side ([`request`]), after the path was normalised and before the allow list:
//! - **Method overrides are refused** (403, rule `method_override`) when they name another
//!   method than the request's: `X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override` (Rails/Rack, Express `method-override`, ASP.NET, Google APIs,
//!   Laravel, Symfony) and a `_method` query parameter (Symfony, Laravel). The allow list
//!   judges the request's method; a framework honouring the override would run another
//!   one, so `GET /repos/**` could delete. Refused rather than stripped: the agent learns
//!   at once that it must send the real method (which the allow list then judges), instead
//!   of a call that silently does something else than it asked.
//! - **Path overrides are refused** (403, rule `path_override`): `X-Original-URL`,
//!   `X-Rewrite-URL` (IIS URL Rewrite, Symfony, some gateways), `X-Original-URI`. They
//!   make the upstream route on a path the allow list never saw, and no client needs to
//!   send them to an API.
//! - **Forwarding headers are dropped**: `Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//!   `X-Client-IP`, `True-Client-IP`, `X-Host`, `X-Original-Host`. They describe the hop,
//!   and agentd is that hop; a client's copy would let it claim another host (URL
//!   generation, host-based routing, cache keys), prefix or source address (IP allow lists)
//!   to the upstream. Dropped rather than refused: SDKs and tools add some of them
//!   innocently, and without them the upstream sees the plain truth (agentd's own address).
//! - **Request trailers are dropped** (in `proxy::RequestBody`): hyper forwards them to an
//!   HTTP/2 upstream, and servers that merge trailers into the headers (Apache
//!   `MergeTrailers`, Tomcat `allowedTrailerHeaders`) would read an override this policy
//!   never saw. APIs do not need them (S3's checksum trailers travel inside the
//!   `aws-chunked` body, not as HTTP trailers).
//!
//! Response side ([`response`]), before the hop-by-hop headers are removed:
//! - **A custom reason phrase is dropped** (HTTP/1.1 upstreams): hyper would copy it to
//!   the client unscanned, and an upstream may name the key it rejected there.
//! - **`Set-Cookie` / `Set-Cookie2` are dropped**: a session cookie is a credential the
//!   upstream mints for whoever holds it; handed to the agent it would outlive the grant
//!   and work without agentd (wherever the upstream is reachable). API clients authenticate
//!   with the injected credential on every call and do not need one. `WWW-Authenticate`
//!   challenges are kept: they carry no credential (realm, scope, `error=invalid_token`)
//!   and tell the agent why the upstream said 401.
//! - **Compressed content is refused** (502, rule `compression`) here, before a
//!   `Connection: content-encoding` from the upstream could remove the header that says
//!   so; a transfer coding other than `chunked` (`Transfer-Encoding: gzip, chunked`) is
//!   refused too: hyper undoes only the chunking, so the scanner would see compressed
//!   bytes.
//!
//! Cost: one pass over the header names with a `match` on each (no allocation) when none
//! of these is present, which is the common case: about 50 ns for an 8-header request and
//! 40 ns for a 4-header response (release build, 2-core machine).

use http::header::{HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// The obsolete RFC 2965 cookie header, still dropped.
const SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// A refusal: status, the `rule` the 403/502 body names, the message and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Rule name (`method_override`, `path_override`, `compression`).
    pub rule: &'static str,
    /// What was refused (agent-safe: header names and methods only, never values other
    /// than a method name, which is cut to 32 characters).
    pub message: String,
    /// What to do instead.
    pub next: &'static str,
}

/// What a request header is to this policy.
enum Class {
    MethodOverride,
    PathOverride,
    Forwarding,
}

fn classify(name: &str) -> Option<Class> {
    match name {
        "x-http-method-override" | "x-http-method" | "x-method-override" => {
            Some(Class::MethodOverride)
        }
        "x-original-url" | "x-rewrite-url" | "x-original-uri" => Some(Class::PathOverride),
        "forwarded" | "x-real-ip" | "x-client-ip" | "true-client-ip" | "x-host"
        | "x-original-host" => Some(Class::Forwarding),
        n if n.starts_with("x-forwarded-") => Some(Class::Forwarding),
        _ => None,
    }
}

fn method_refusal(name: &str, value: &[u8]) -> Refusal {
    let shown: String = String::from_utf8_lossy(value).chars().take(32).collect();
    Refusal {
        status: StatusCode::FORBIDDEN,
        rule: "method_override",
        message: format!(
            "{name} asks the upstream to run {shown:?} instead of the request's method; method overrides are refused"
        ),
        next: "send the request with the method you mean (the allow list judges that method); do not retry with an override",
    }
}

/// Applies the request-side policy to a request with `method` and raw query pairs
/// `query` (`key=value`, as split on `&`): drops forwarding headers from `headers`.
///
/// # Errors
/// [`Refusal`] for a method override naming another method, or a path override header.
pub fn request(method: &Method, headers: &mut HeaderMap, query: &[String]) -> Result<(), Refusal> {
    let mut drop = false;
    for (name, value) in headers.iter() {
        match classify(name.as_str()) {
            None => {}
            Some(Class::Forwarding) => drop = true,
            Some(Class::MethodOverride)
                if !value
                    .as_bytes()
                    .eq_ignore_ascii_case(method.as_str().as_bytes()) =>
            {
                return Err(method_refusal(name.as_str(), value.as_bytes()));
            }
            Some(Class::MethodOverride) => {}
            Some(Class::PathOverride) => {
                return Err(Refusal {
                    status: StatusCode::FORBIDDEN,
                    rule: "path_override",
                    message: format!(
                        "{} asks the upstream to serve another path than the one the allow list checked; path overrides are refused",
                        name.as_str()
                    ),
                    next: "request the path itself (the allow list judges it); do not retry with an override",
                });
            }
        }
    }
    for pair in query {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // `_method`, plainly or percent-encoded (`%5Fmethod`).
        let is_override = k.eq_ignore_ascii_case("_method")
            || (k.contains('%')
                && percent_encoding::percent_decode_str(k)
                    .decode_utf8_lossy()
                    .eq_ignore_ascii_case("_method"));
        if is_override {
            let v = percent_encoding::percent_decode_str(v).collect::<Vec<u8>>();
            if !v.eq_ignore_ascii_case(method.as_str().as_bytes()) {
                return Err(method_refusal("the _method query parameter", &v));
            }
        }
    }
    if drop {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| matches!(classify(n.as_str()), Some(Class::Forwarding)))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    Ok(())
}

/// Applies the response-side policy to the upstream's response head: drops `Set-Cookie` /
/// `Set-Cookie2` and a custom HTTP/1.1 reason phrase.
///
/// # Errors
/// [`Refusal`] (502, `compression`) for a `Content-Encoding` other than `identity` or a
/// transfer coding other than `chunked`.
pub fn response(parts: &mut http::response::Parts) -> Result<(), Refusal> {
    // hyper's client keeps a non-canonical reason phrase as an extension and its server
    // writes it back verbatim: text the scanner never sees ("401 Invalid key sk-…"). The
    // client gets the canonical phrase for the status instead.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    let headers = &mut parts.headers;
    let compressed = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
        || headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|c| {
                let c = c.trim_ascii();
                !c.eq_ignore_ascii_case(b"chunked") && !c.eq_ignore_ascii_case(b"identity")
            });
    if compressed {
        return Err(Refusal {
            status: StatusCode::BAD_GATEWAY,
            rule: "compression",
            message: "the upstream sent a compressed response although agentd asked for identity; agentd cannot scan it for the secret".to_owned(),
            next: "ask the upstream's owner to honour Accept-Encoding: identity",
        });
    }
    headers.remove(http::header::SET_COOKIE);
    headers.remove(SET_COOKIE2);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn overrides_are_refused_unless_they_name_the_method() {
        for (name, value) in [
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "put"),
            ("x-method-override", "PATCH"),
        ] {
            let mut h = map(&[(name, value)]);
            let r = request(&Method::GET, &mut h, &[]).unwrap_err();
            assert_eq!(r.rule, "method_override");
            assert_eq!(r.status, StatusCode::FORBIDDEN);
        }
        let mut h = map(&[("x-http-method-override", "get")]);
        assert_eq!(request(&Method::GET, &mut h, &[]), Ok(()));
        assert!(h.contains_key("x-http-method-override"));
        for q in ["_method=DELETE", "%5fmethod=DELETE", "_METHOD=put"] {
            let r = request(&Method::POST, &mut HeaderMap::new(), &[q.to_owned()]);
            assert_eq!(r.unwrap_err().rule, "method_override", "{q}");
        }
        assert_eq!(
            request(
                &Method::POST,
                &mut HeaderMap::new(),
                &["_method=POST".to_owned(), "a=1".to_owned()]
            ),
            Ok(())
        );
        for name in ["x-original-url", "x-rewrite-url", "x-original-uri"] {
            let mut h = map(&[(name, "/admin")]);
            let r = request(&Method::GET, &mut h, &[]).unwrap_err();
            assert_eq!(r.rule, "path_override");
            assert!(!r.message.contains("/admin"));
        }
    }

    #[test]
    fn forwarding_headers_are_dropped_and_others_kept() {
        let mut h = map(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("accept", "*/*"),
            ("x-request-id", "1"),
        ]);
        assert_eq!(request(&Method::GET, &mut h, &[]), Ok(()));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-request-id"]);
    }

    #[test]
    fn responses_lose_cookies_and_compressed_ones_are_refused() {
        let parts = |h: HeaderMap| {
            let mut r = http::Response::new(());
            *r.headers_mut() = h;
            r.into_parts().0
        };
        let mut p = parts(map(&[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("www-authenticate", "Bearer error=\"invalid_token\""),
            ("content-type", "text/plain"),
        ]));
        p.extensions
            .insert(hyper::ext::ReasonPhrase::try_from(b"Invalid key sk-1".to_vec()).unwrap());
        assert_eq!(response(&mut p), Ok(()));
        assert!(!p.headers.contains_key("set-cookie"));
        assert!(p.headers.contains_key("www-authenticate"));
        assert!(p.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        for (name, value) in [
            ("content-encoding", "gzip"),
            ("content-encoding", "br"),
            ("transfer-encoding", "gzip, chunked"),
        ] {
            // Even when the upstream's Connection header names it (it would be removed as
            // hop-by-hop afterwards).
            let mut p = parts(map(&[(name, value), ("connection", "content-encoding")]));
            assert_eq!(response(&mut p).unwrap_err().rule, "compression", "{value}");
        }
        let mut p = parts(map(&[
            ("content-encoding", "identity"),
            ("transfer-encoding", "chunked"),
        ]));
        assert_eq!(response(&mut p), Ok(()));
    }
}
