//! Red team of the HTTP listener: attacks issue 17 did not name, played with real
//! processes against the real daemon and the recording HTTPS upstream
//! ([`agentd::echo_upstream`]).
//!
//! The attackers: an MCP-only agent (the `http_request` tool), an agent with a shell as
//! the same user (curl or raw TCP at the handle), and another local OS user (`useradd` +
//! `setpriv`). Every test ends with the canary scan of its outputs, logs and audit log.

use agentd_tests::http::{base_url, curl, raw_exchange, token, HttpFixture, ALLOW};
use agentd_tests::STEP_TIMEOUT;
use secrecy::ExposeSecret as _;
use std::time::{Duration, Instant};

/// The fixture's allow list plus the routes these tests attack: the hostile echo
/// (`/mirror`), the cookie route, and a rule with three `**` (the matcher's worst case).
fn allow() -> String {
    ALLOW.replace(
        "\n]",
        "\n  { methods = [\"GET\"], paths = [\"/mirror\", \"/cookie\", \"/bigheader\", \"/reason\", \"/hidden-gzip\", \"/deep/**/b/**/c/**/d\"] },\n]",
    )
}

/// `METHOD TARGET` with the grant token, `extra` header lines and `Connection: close`, sent
/// over raw TCP; returns the whole answer.
async fn raw(
    port: u16,
    tok: &str,
    method: &str,
    target: &str,
    extra: &str,
) -> anyhow::Result<String> {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n{extra}Connection: close\r\n\r\n"
    );
    raw_exchange(port, req.as_bytes()).await
}

/// The JSON refusal's `rule`, or `None` when the answer is not an agentd refusal.
fn rule_of(resp: &str) -> Option<String> {
    let body = resp.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    (v["error"]["type"] == "agentd_refused")
        .then(|| v["error"]["rule"].as_str().unwrap_or_default().to_owned())
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn method_and_path_override_headers_are_refused_and_forwarding_headers_dropped(
) -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    let before = fx.upstream.recorded().len();
    let mut outputs = vec![];
    // The allow list says GET on /echo/** and POST on /upload: each of these would make a
    // framework that honours the header (Rails, Express method-override, ASP.NET, Google
    // APIs, Symfony, IIS URL rewrite) run something else.
    let cases = [
        (
            "GET",
            "/echo/x",
            "X-HTTP-Method-Override: DELETE\r\n",
            "method_override",
        ),
        (
            "GET",
            "/echo/x",
            "x-http-method: PUT\r\n",
            "method_override",
        ),
        (
            "GET",
            "/echo/x",
            "X-Method-Override: delete\r\n",
            "method_override",
        ),
        (
            "POST",
            "/upload?_method=DELETE",
            "Content-Length: 0\r\n",
            "method_override",
        ),
        (
            "POST",
            "/upload?%5Fmethod=PATCH",
            "Content-Length: 0\r\n",
            "method_override",
        ),
        (
            "GET",
            "/echo/x",
            "X-Original-URL: /admin\r\n",
            "path_override",
        ),
        (
            "GET",
            "/echo/x",
            "X-Rewrite-URL: /admin/users\r\n",
            "path_override",
        ),
        (
            "GET",
            "/echo/x",
            "X-Original-URI: /admin\r\n",
            "path_override",
        ),
    ];
    for (method, target, extra, want) in cases {
        let resp = raw(port, &tok, method, target, extra).await?;
        outputs.push((format!("{method} {target}"), resp.clone()));
        assert!(
            resp.starts_with("HTTP/1.1 403"),
            "{extra}: {}",
            status_line(&resp)
        );
        assert_eq!(rule_of(&resp).as_deref(), Some(want), "{extra}: {resp}");
        assert!(resp.contains("next_step"), "{resp}");
    }
    assert_eq!(
        fx.upstream.recorded().len(),
        before,
        "an override request reached the upstream"
    );
    // An override naming the request's own method changes nothing and is served.
    let resp = raw(
        port,
        &tok,
        "GET",
        "/echo/same",
        "X-HTTP-Method-Override: GET\r\n",
    )
    .await?;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", status_line(&resp));

    // Forwarding headers describe the hop, and agentd is that hop: the client's are dropped.
    let forwarding = "Forwarded: for=10.0.0.1;host=admin.internal;proto=http\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: admin.internal\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 10.0.0.1\r\nX-Forwarded-Port: 80\r\n";
    let resp = raw(port, &tok, "GET", "/echo/fwd", forwarding).await?;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", status_line(&resp));
    let seen = fx.upstream.recorded().pop().expect("forwarded");
    assert_eq!(seen.path, "/echo/fwd");
    for h in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-real-ip",
        "x-forwarded-port",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }

    // The MCP-only agent: the same header through the http_request tool is a tool error.
    let mcp = fx.mcp().await?;
    let granted = mcp
        .call(
            "request_access",
            serde_json::json!({"resource": "api", "permission": "reader", "duration": "10m", "justification": "red team"}),
        )
        .await?;
    let grant_id = granted.value["grant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let refused = mcp
        .call(
            "http_request",
            serde_json::json!({"grant_id": grant_id, "method": "GET", "path": "/echo/x", "headers": {"X-HTTP-Method-Override": "DELETE"}}),
        )
        .await?;
    outputs.push(("http_request".to_owned(), refused.raw.clone()));
    assert!(refused.is_error, "{}", refused.raw);
    assert_eq!(refused.value["error"], "refused", "{}", refused.raw);
    assert!(refused.raw.contains("method_override"), "{}", refused.raw);
    outputs.push(("shim log".to_owned(), mcp.close().await?));

    let records = fx.wait_http_records(11).await?;
    let refused = records
        .iter()
        .filter(|r| {
            r["refused"]
                .as_str()
                .is_some_and(|s| s.contains("_override"))
        })
        .count();
    assert_eq!(refused, 9, "{records:?}");
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_tricks_never_drop_the_injected_credential() -> anyhow::Result<()> {
    let fx = HttpFixture::start("http_idle_timeout = \"1s\"").await?;
    let secret = fx.secret.expose_secret().to_owned();
    for (resource, name, value) in [
        ("api", "authorization", format!("Bearer {secret}")),
        ("api_header", "x-api-key", format!("key {secret}")),
    ] {
        let view = fx.grant(resource).await?;
        let port = agentd_tests::handle_port(&view["handle"]);
        let tok = token(&view);
        let extra = format!(
            "Connection: {name}, authorization, x-api-key, te\r\nTE: trailers\r\nProxy-Authorization: Bearer {tok}\r\nKeep-Alive: timeout=5\r\n"
        );
        let resp = raw(port, &tok, "GET", "/echo/hop", &extra).await?;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{resource}: {}",
            status_line(&resp)
        );
        let seen = fx.upstream.recorded().pop().expect("forwarded");
        assert_eq!(
            seen.headers.get(name),
            Some(&value),
            "{resource}: credential not injected"
        );
        for h in ["connection", "te", "proxy-authorization", "keep-alive"] {
            assert!(
                !seen.headers.contains_key(h),
                "{resource}: {h} went upstream"
            );
        }
        assert!(
            !format!("{:?}", seen.headers).contains(&tok),
            "{resource}: token went upstream"
        );
    }
    // Expect: 100-continue on a refused request: the refusal comes at once, no 100, and the
    // announced body is never asked for.
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let started = Instant::now();
    let resp = raw(
        port,
        &token(&view),
        "DELETE",
        "/upload",
        "Expect: 100-continue\r\nContent-Length: 1000000\r\n",
    )
    .await?;
    assert!(resp.starts_with("HTTP/1.1 403"), "{}", status_line(&resp));
    assert!(!resp.contains("100 Continue"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A refused request's unread body is never read as a request of its own (keep-alive,
    // Content-Length and chunked framing), and an h2c prior-knowledge preface is not
    // served.
    let tok = token(&view);
    let hidden =
        format!("GET /echo/smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n");
    let chunked = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    for (framing, body) in [
        (format!("Content-Length: {}", hidden.len()), hidden.clone()),
        ("Transfer-Encoding: chunked".to_owned(), chunked),
    ] {
        let req = format!(
            "PATCH /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n{framing}\r\n\r\n{body}"
        );
        let answer = raw_exchange(port, req.as_bytes()).await?;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{framing}: {}",
            status_line(&answer)
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{framing}: {answer}"
        );
    }
    // Request trailers (chunked) carrying an override.
    let req = format!(
        "POST /v1/trailers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: chunked\r\nTrailer: X-HTTP-Method-Override\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nX-HTTP-Method-Override: DELETE\r\n\r\n"
    );
    let answer = raw_exchange(port, req.as_bytes()).await?;
    let seen = fx.upstream.recorded().pop().expect("forwarded");
    println!(
        "trailers: {} -> upstream trailers {:?}",
        status_line(&answer),
        seen.trailers
    );
    let preface = raw_exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    assert!(!preface.contains(" 200 "), "{preface}");
    assert!(
        !fx.upstream
            .recorded()
            .iter()
            .any(|r| r.path.contains("smuggled") || r.method == "PRI"),
        "a hidden request reached the upstream"
    );
    fx.assert_clean(&[("expect".to_owned(), resp), ("preface".to_owned(), preface)])?;
    Ok(())
}

/// Base64 characters of `secret` that do not depend on the bytes around it when it starts
/// `align` bytes into a longer text (independent of the daemon's scanner).
fn b64_core(secret: &[u8], align: usize, url: bool) -> String {
    use base64::Engine as _;
    let mut bytes = vec![0u8; align];
    bytes.extend_from_slice(secret);
    bytes.extend_from_slice(&[0, 0]);
    let text = if url {
        base64::engine::general_purpose::URL_SAFE.encode(&bytes)
    } else {
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    };
    let (lo, hi) = (8 * align, 8 * (align + secret.len()));
    text.char_indices()
        .filter(|(i, _)| 6 * i >= lo && 6 * i + 6 <= hi)
        .map(|(_, c)| c)
        .collect()
}

#[tokio::test]
async fn secret_reflected_in_other_encodings_is_redacted() -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    let secret = fx.secret.expose_secret().as_bytes().to_vec();
    // What must not come back, in any letter case: each form the agent could decode.
    let mut needles: Vec<String> = vec![
        secret.iter().map(|b| format!("{b:02x}")).collect(),
        secret.iter().map(|b| format!("%{b:02x}")).collect(),
        secret.iter().map(|b| format!("\\u{b:04x}")).collect(),
        String::from_utf8_lossy(&secret).into_owned(),
    ];
    for align in 0..3 {
        for url in [false, true] {
            needles.push(b64_core(&secret, align, url));
        }
    }
    let mut outputs = vec![];
    let forms = [
        "hex", "pct-all", "json-u", "php", "upper", "b64-0", "b64-1", "b64-2", "b64url-0",
        "b64url-1", "b64url-2",
    ];
    for form in forms {
        let r = curl(&["-H", &auth, &format!("{base}/mirror?form={form}")]).await?;
        outputs.push((format!("mirror {form}"), r.stdout.clone()));
        assert!(r.stdout.starts_with("form="), "{form}: {}", r.stderr);
        assert!(r.stdout.contains("[REDACTED]"), "{form}: not redacted");
        let lower = r.stdout.to_ascii_lowercase();
        for (i, n) in needles.iter().enumerate() {
            assert!(
                !lower.contains(&n.to_ascii_lowercase()),
                "{form}: the secret came back in encoding #{i}"
            );
        }
    }
    let records = fx.wait_http_records(forms.len()).await?;
    assert!(
        records
            .iter()
            .filter(|r| r["path"] == "/mirror")
            .all(|r| r["secret_reflected"].as_u64().unwrap_or(0) >= 1),
        "{records:?}"
    );
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn set_cookie_from_the_upstream_never_reaches_the_agent() -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let r = curl(&[
        "-i",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        &format!("{base}/cookie"),
    ])
    .await?;
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    assert!(
        !r.stdout.to_ascii_lowercase().contains("set-cookie"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("s3ss10n"), "{}", r.stdout);
    fx.assert_clean(&[("cookie".to_owned(), r.stdout)])?;
    Ok(())
}

#[tokio::test]
async fn path_differentials_are_refused_or_forwarded_as_matched() -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    // (method, target, status, rule of a refusal or the path the upstream must see)
    let cases = [
        // Over-long UTF-8 for '.' and '/', which old decoders fold to ASCII.
        ("GET", "/echo/%c0%ae%c0%ae/admin", 403, "path"),
        ("GET", "/echo/%C0%AF..%C0%AFadmin", 403, "path"),
        ("GET", "/echo/%e0%80%ae%e0%80%ae/admin", 403, "path"),
        // Full-width and other look-alikes that Unicode folding (NFKC, IIS best fit) maps
        // to '.', '/' or '\'.
        ("GET", "/echo/%EF%BC%8E%EF%BC%8E/admin", 403, "path"),
        ("GET", "/echo/..%EF%BC%8Fadmin", 403, "path"),
        ("GET", "/echo/%E2%80%A5/admin", 403, "path"),
        ("GET", "/echo/..%E2%88%95admin", 403, "path"),
        // Invalid UTF-8.
        ("GET", "/echo/%ff", 403, "path"),
        // Ordinary non-ASCII is served, escapes upper-cased.
        ("GET", "/echo/caf%c3%a9", 200, "/echo/caf%C3%A9"),
        // Matrix parameters on ordinary segments: resolved as segments, the allow list sees
        // the result.
        ("GET", "/echo;x/../admin", 403, "allow_list"),
        ("GET", "/echo/a;b/c", 200, "/echo/a;b/c"),
        // Method names are case-sensitive (RFC 9110 §9.1): `get` is not GET.
        ("get", "/echo/x", 403, "allow_list"),
        ("OPTIONS", "*", 403, "path"),
        // A fragment is not part of the target (RFC 9112 §3.2); nothing after `#` is used.
        ("GET", "/echo/x#/../../admin", 200, "/echo/x"),
    ];
    for (method, target, status, want) in cases {
        let resp = raw(port, &tok, method, target, "").await?;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {target}: {}",
            status_line(&resp)
        );
        if status == 200 {
            let seen = fx.upstream.recorded().pop().expect("forwarded");
            assert_eq!(seen.path, want, "{target}");
        } else {
            assert_eq!(rule_of(&resp).as_deref(), Some(want), "{target}: {resp}");
        }
    }
    assert!(
        fx.upstream
            .recorded()
            .iter()
            .all(|r| r.path.starts_with("/echo/")),
        "a refused spelling reached the upstream"
    );
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn a_long_path_against_a_many_wildcard_rule_is_answered_at_once() -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    // 10,000 segments against `/deep/**/b/**/c/**/d`: a backtracking matcher tries every
    // split (n³ steps) and holds a daemon worker thread for hours.
    let target = format!("/deep/{}x", "b/c/".repeat(5_000));
    let started = Instant::now();
    let resp = tokio::time::timeout(STEP_TIMEOUT, raw(port, &tok, "GET", &target, "")).await??;
    let took = started.elapsed();
    assert!(resp.starts_with("HTTP/1.1 403"), "{}", status_line(&resp));
    assert_eq!(rule_of(&resp).as_deref(), Some("allow_list"));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The matcher still matches.
    let resp = raw(port, &tok, "GET", "/deep/x/b/y/c/z/d", "").await?;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", status_line(&resp));
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn another_os_user_with_the_token_is_refused() -> anyhow::Result<()> {
    let uid = agentd_tests::ensure_system_user("agentd-rt-other")?;
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let before = fx.upstream.recorded().len();
    // The token reaches the other user (say, copied into a shared file); curl runs as them.
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
                "-sS",
                "-i",
                "-H",
                &format!("Authorization: Bearer {tok}"),
                &format!("{base}/echo/other"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with("HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("\"rule\":\"peer\""), "{stdout}");
    assert_eq!(
        fx.upstream.recorded().len(),
        before,
        "the other user's call was forwarded"
    );
    assert!(fx.daemon.log().contains("refused peer"));
    fx.assert_clean(&[("other user".to_owned(), stdout)])?;
    Ok(())
}

/// Another local user waits for a grant to end and binds its port, to receive what the
/// agent keeps sending to the handle's address (and to answer it). agentd keeps an ended
/// grant's port for 10 minutes and answers 410 with the reason, so the bind fails (even with
/// SO_REUSEADDR and SO_REUSEPORT: the listening socket is another uid's) and the agent
/// learns the grant ended.
#[tokio::test]
async fn another_os_user_cannot_take_an_ended_grants_port() -> anyhow::Result<()> {
    let uid = agentd_tests::ensure_system_user("agentd-rt-other")?;
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let port = agentd_tests::handle_port(&view["handle"]);
    let grant_id = view["grant"]["id"].as_str().unwrap_or_default().to_owned();
    let r = fx.cli(&["revoke", &grant_id]).await?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bind = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\ntry:\n    s.bind(('127.0.0.1', {port}))\n    s.listen()\n    print('bound')\nexcept OSError as e:\n    print('refused', e.errno)\n"
    );
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                // Debian's interpreter: the other user cannot reach root's pyenv.
                "/usr/bin/python3",
                "-c",
                &bind,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        said.trim(),
        "refused 98",
        "the other user's bind: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent, still using its handle, is told the grant ended.
    let r = curl(&[
        "-sS",
        "-i",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        &format!("{base}/echo/after"),
    ])
    .await?;
    assert!(r.stdout.starts_with("HTTP/1.1 410"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("agentd grant {grant_id} was revoked")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("request access again"), "{}", r.stdout);
    fx.assert_clean(&[("after revoke".to_owned(), r.stdout)])?;
    Ok(())
}

#[tokio::test]
async fn config_check_warns_about_write_rules_that_could_mint_credentials() -> anyhow::Result<()> {
    // The fixture allows POST and PUT on `/v1/**` and `/s3/**`: broad enough to reach an
    // API's key- or token-creating endpoints (the HTTP twin of ALTER ROLE … PASSWORD).
    let fx = HttpFixture::start("").await?;
    let out = fx.cli(&["config", "check", "--json"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json()?;
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
        .unwrap_or_default();
    let minting = warnings
        .iter()
        .filter(|w| w.contains("resources.api.permissions.reader.allow[1]: POST, PUT on"))
        .count();
    assert_eq!(minting, 2, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("create API keys, tokens")),
        "{warnings:#?}"
    );
    // SigV4 services other than S3 choose the operation outside the path.
    let aws = |resource: &str| {
        let prefix = format!("resources.{resource}.permissions.reader.allow: ");
        warnings
            .iter()
            .any(|w| w.starts_with(&prefix) && w.contains("X-Amz-Target"))
    };
    assert!(aws("api_aws"), "{warnings:#?}");
    assert!(!aws("api_s3"), "{warnings:#?}");
    fx.assert_clean(&[("config check".to_owned(), out.stdout)])?;
    Ok(())
}

#[tokio::test]
async fn a_huge_response_header_is_refused_and_the_daemon_stays_up() -> anyhow::Result<()> {
    let fx = HttpFixture::start_with_allow("", &allow()).await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    // 8 MiB of one response header (HTTP/2 upstream): hyper's client refuses a header list
    // over its limit, so the daemon never holds it.
    let rss_before = agentd_tests::vm_rss_kib(fx.daemon.pid).unwrap_or(0);
    let resp = raw(port, &tok, "GET", "/bigheader?n=8388608", "").await?;
    assert!(resp.starts_with("HTTP/1.1 502"), "{}", status_line(&resp));
    let grown = agentd_tests::vm_rss_kib(fx.daemon.pid)
        .unwrap_or(0)
        .saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "daemon RSS grew by {grown} KiB");
    let resp = raw(port, &tok, "GET", "/bigheader?n=1000", "").await?;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", status_line(&resp));
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn the_query_credential_stays_out_of_logs_and_audit_when_the_upstream_fails(
) -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api_query").await?;
    let (base, tok) = (base_url(&view), token(&view));
    // The upstream goes away: the request (its URI carries `api_key=<secret>`) fails.
    fx.upstream.stop();
    let r = curl(&["-i", &format!("{base}/echo/q?a=1&api_key={tok}")]).await?;
    assert!(r.stdout.starts_with("HTTP/1.1 502"), "{}", r.stdout);
    let rec = fx.wait_http_records(1).await?.pop().expect("record");
    assert_eq!(rec["end"], "upstream error", "{rec}");
    assert_eq!(rec["query"], serde_json::json!(["a=1"]), "{rec}");
    assert!(fx.daemon.log().contains("upstream request failed"));
    // The canary scan covers the daemon's debug log and the audit log.
    fx.assert_clean(&[("curl".to_owned(), r.stdout)])?;
    Ok(())
}

#[tokio::test]
async fn an_http1_upstream_cannot_leak_through_the_status_line_or_hide_compression(
) -> anyhow::Result<()> {
    let upstream = agentd::echo_upstream::EchoUpstream::start_with(false).await?;
    let fx = HttpFixture::start_with_upstream("", &allow(), upstream).await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    // A 401 whose reason phrase names the key it got (the injected secret).
    let resp = raw(port, &tok, "GET", "/reason", "").await?;
    assert_eq!(status_line(&resp), "HTTP/1.1 401 Unauthorized");
    let seen = fx.upstream.recorded().pop().expect("forwarded");
    assert_eq!(seen.version, "HTTP/1.1");
    // `Connection: content-encoding` from the upstream must not strip the header that says
    // the body is compressed (the scanner cannot read gzip).
    let gz = raw(port, &tok, "GET", "/hidden-gzip", "").await?;
    assert!(gz.starts_with("HTTP/1.1 502"), "{}", status_line(&gz));
    assert_eq!(rule_of(&gz).as_deref(), Some("compression"), "{gz}");
    fx.assert_clean(&[("reason".to_owned(), resp), ("gzip".to_owned(), gz)])?;
    Ok(())
}
