//! `kind = "http"` resources: the upstream base URL, how the credential is put on each
//! request (`auth`), and each permission's allow list.
//!
//! ```toml
//! [resources.github]
//! kind = "http"
//! base_url = "https://api.github.com"      # https only; a path prefix is kept
//! tls = "verify-full"                       # the only mode for http resources
//! ca_file = "/etc/ssl/corp-ca.pem"          # optional; system roots otherwise
//! auth = { scheme = "bearer" }              # Authorization: Bearer <secret>
//! # auth = { scheme = "header", name = "x-api-key", value = "{{secret}}" }
//! # auth = { scheme = "basic", username = "ci-bot" }
//! # auth = { scheme = "query", param = "api_key" }
//! # auth = { scheme = "aws_sigv4", service = "s3", region = "eu-west-1" }
//!
//! [resources.github.permissions.issues_read]
//! credential = { source = "keyring" }       # `agentd secret set github issues_read`
//! allow = [{ methods = ["GET", "HEAD"], paths = ["/repos/*/*/issues/**"] }]
//! ```
//!
//! Paths are matched segment by segment on the normalised path (see
//! [`crate::listener::http::path`]): `*` is exactly one segment, `**` any number (zero or
//! more), anything else must equal the segment. Deny by default: a request no rule allows
//! is refused with 403.

use serde::Deserialize;

/// Methods an allow rule may name. CONNECT and TRACE are never proxied.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// How the daemon authenticates each forwarded request, and where the client puts the grant
/// token instead of the real credential.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    /// `Authorization: Bearer <secret>`; the client sends `Authorization: Bearer <token>`.
    Bearer,
    /// A header `name: value`, where `value` is a template containing `{{secret}}` (e.g.
    /// `"token {{secret}}"`); the client sends the same header with the token in place of
    /// the secret (or `Authorization: Bearer <token>`).
    Header {
        /// Header name, e.g. `x-api-key`.
        name: String,
        /// Value template (default `{{secret}}`).
        #[serde(default = "default_template")]
        value: String,
    },
    /// `Authorization: Basic base64(username:secret)`; the client sends basic auth with any
    /// user name and the token as the password (or `Authorization: Bearer <token>`).
    Basic {
        /// The upstream user name (the permission's `username` when empty).
        #[serde(default)]
        username: String,
    },
    /// A query parameter `param=<secret>`; the client sends `param=<token>` (or
    /// `Authorization: Bearer <token>`).
    Query {
        /// Parameter name, e.g. `api_key`.
        param: String,
    },
    /// AWS Signature Version 4 (`Authorization: AWS4-HMAC-SHA256 …`, signed by the daemon
    /// with the real key for `service` in `region`). The secret is
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]` (or the secret access key alone,
    /// with the permission's `username` as the access key id). The client signs with any
    /// access key id and the grant token as its secret access key (or sends
    /// `Authorization: Bearer <token>`); see [`crate::listener::http::sigv4`].
    AwsSigv4 {
        /// The signing name of the service, e.g. `s3`, `sqs`, `execute-api`.
        service: String,
        /// The region, e.g. `us-east-1`.
        region: String,
    },
}

fn default_template() -> String {
    "{{secret}}".to_owned()
}

impl HttpAuth {
    /// Where the client puts the grant token, in words (shown in the handle).
    pub fn token_placement(&self) -> String {
        match self {
            HttpAuth::Bearer => "header `Authorization: Bearer <token>`".to_owned(),
            HttpAuth::Header { name, value } => format!(
                "header `{name}: {}` (or `Authorization: Bearer <token>`)",
                value.replace("{{secret}}", "<token>")
            ),
            HttpAuth::Basic { .. } => {
                "basic auth with the token as the password (or `Authorization: Bearer <token>`)"
                    .to_owned()
            }
            HttpAuth::Query { param } => {
                format!("query parameter `{param}=<token>` (or `Authorization: Bearer <token>`)")
            }
            HttpAuth::AwsSigv4 { service, region } => format!(
                "AWS SigV4 (service {service}, region {region}) signing with the token as the \
                 secret access key and any access key id (AWS_ACCESS_KEY_ID=agentd \
                 AWS_SECRET_ACCESS_KEY=<token> AWS_REGION={region} AWS_ENDPOINT_URL=<base_url>), \
                 or `Authorization: Bearer <token>`"
            ),
        }
    }

    /// The scheme's name as written in the config.
    pub fn scheme(&self) -> &'static str {
        match self {
            HttpAuth::Bearer => "bearer",
            HttpAuth::Header { .. } => "header",
            HttpAuth::Basic { .. } => "basic",
            HttpAuth::Query { .. } => "query",
            HttpAuth::AwsSigv4 { .. } => "aws_sigv4",
        }
    }
}

/// One allow rule: any of `methods` on any of `paths`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Upper-case methods from [`METHODS`].
    pub methods: Vec<String>,
    /// Path patterns starting with `/`; `*` one segment, `**` any number of segments.
    pub paths: Vec<String>,
}

impl AllowRule {
    /// The rule as one line, e.g. `GET, HEAD /repos/*/*/issues/**`; also the `rule` the
    /// audit log names.
    pub fn describe(&self) -> String {
        format!("{} {}", self.methods.join(", "), self.paths.join(" "))
    }

    /// True when `method` (upper case) on normalised `path` is allowed by this rule.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        self.methods.iter().any(|m| m == method) && self.paths.iter().any(|p| glob(p, path))
    }
}

/// Matches a `/`-separated `pattern` against a normalised `path` segment by segment.
pub fn glob(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    glob_segments(&pat, &segs)
}

fn glob_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|skip| glob_segments(rest, &segs[skip..])),
        Some((&p, rest)) => match segs.split_first() {
            Some((&s, srest)) => {
                (p == "*" && !s.is_empty() || p == s) && glob_segments(rest, srest)
            }
            None => false,
        },
    }
}

/// Checks an http resource's `base_url` and `auth`; the error is `(field, message)`.
pub(super) fn validate_resource(
    base_url: Option<&str>,
    auth: Option<&HttpAuth>,
) -> Result<(), (String, String)> {
    let Some(url) = base_url else {
        return Err((
            "base_url".to_owned(),
            "required for kind = \"http\", e.g. \"https://api.github.com\"".to_owned(),
        ));
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ("base_url".to_owned(), format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err((
            "base_url".to_owned(),
            "must start with https:// (the credential crosses the network)".to_owned(),
        ));
    }
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err((
            "base_url".to_owned(),
            "must be https://HOST[:PORT][/PREFIX] without a query".to_owned(),
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err((
            "base_url".to_owned(),
            "must not carry user info (put the credential in the keychain)".to_owned(),
        ));
    }
    match auth {
        None => Err((
            "auth".to_owned(),
            "required for kind = \"http\", e.g. auth = { scheme = \"bearer\" }".to_owned(),
        )),
        Some(HttpAuth::Header { name, value }) => {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(("auth.name".to_owned(), "not a valid header name".to_owned()));
            }
            if !value.contains("{{secret}}") {
                return Err((
                    "auth.value".to_owned(),
                    "must contain {{secret}}".to_owned(),
                ));
            }
            Ok(())
        }
        Some(HttpAuth::Query { param }) if param.is_empty() => {
            Err(("auth.param".to_owned(), "must not be empty".to_owned()))
        }
        Some(HttpAuth::AwsSigv4 { service, region }) => {
            for (field, value) in [("auth.service", service), ("auth.region", region)] {
                if value.is_empty()
                    || value.len() > 64
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err((
                        field.to_owned(),
                        "must be a lower-case AWS name such as \"s3\" or \"us-east-1\" (a-z, 0-9, -)"
                            .to_owned(),
                    ));
                }
            }
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Checks one permission's allow list; the error is `(field, message)` relative to the
/// permission.
pub(super) fn validate_allow(allow: &[AllowRule]) -> Result<(), (String, String)> {
    if allow.is_empty() {
        return Err((
            "allow".to_owned(),
            "an http permission needs at least one allow rule, e.g. allow = [{ methods = [\"GET\"], paths = [\"/**\"] }]".to_owned(),
        ));
    }
    for (i, rule) in allow.iter().enumerate() {
        if rule.methods.is_empty() {
            return Err((
                format!("allow[{i}].methods"),
                "must not be empty".to_owned(),
            ));
        }
        for (j, m) in rule.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                return Err((
                    format!("allow[{i}].methods[{j}]"),
                    format!("{m:?} is not one of {}", METHODS.join(", ")),
                ));
            }
        }
        if rule.paths.is_empty() {
            return Err((format!("allow[{i}].paths"), "must not be empty".to_owned()));
        }
        for (j, p) in rule.paths.iter().enumerate() {
            if !p.starts_with('/')
                || p.contains("//")
                || p.contains('\\')
                || p.contains('%')
                || p.contains('?')
                || p.split('/').any(|s| s == "." || s == "..")
            {
                return Err((
                    format!("allow[{i}].paths[{j}]"),
                    "must start with '/' and use plain segments, '*' or '**' (no '.', '..', '//', '%', '?')".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// A permission's allow list in words, e.g. "may GET, HEAD on /repos/*/*/issues/** (any
/// one segment for *, any depth for **); everything else is refused".
pub fn explain_allow(allow: &[AllowRule]) -> String {
    let rules: Vec<String> = allow
        .iter()
        .map(|r| format!("{} on {}", r.methods.join(", "), r.paths.join(" or ")))
        .collect();
    format!(
        "may {}; everything else is refused (* = one path segment, ** = any depth)",
        rules.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_segments_match_as_documented() {
        assert!(glob("/repos/*/*/issues/**", "/repos/a/b/issues"));
        assert!(glob("/repos/*/*/issues/**", "/repos/a/b/issues/1/comments"));
        assert!(!glob("/repos/*/*/issues/**", "/repos/a/issues/1"));
        assert!(!glob("/repos/*/*/issues/**", "/repos/a/b/pulls"));
        assert!(glob("/**", "/anything/at/all"));
        assert!(glob("/v1/models", "/v1/models"));
        assert!(!glob("/v1/models", "/v1/models/x"));
        assert!(!glob("/v1/*", "/v1/"));
    }
}
