//! The HTTP listener end to end: a real HTTPS upstream (rcgen CA, HTTP/1.1 + HTTP/2), the
//! real daemon, and real clients (curl, Python requests / httpx / openai, Node's fetch).
//! Every test ends with the canary scan of its outputs, logs and audit log.

use agentd_tests::http::{base_url, curl, raw_exchange, token, HttpFixture};
use agentd_tests::{vm_rss_kib, STEP_TIMEOUT};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::time::Duration;

fn out(label: &str, o: &agentd_tests::CliOutput) -> Vec<(String, String)> {
    vec![
        (format!("{label} stdout"), o.stdout.clone()),
        (format!("{label} stderr"), o.stderr.clone()),
    ]
}

#[tokio::test]
async fn curl_gets_the_credential_injected_and_never_sees_it() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    assert!(base.starts_with("http://127.0.0.1:"), "{view}");
    assert_eq!(view["handle"]["env"]["AGENTD_BASE_URL"], base.as_str());
    let mut outputs = vec![("request view".to_owned(), view.to_string())];

    let auth = format!("Authorization: Bearer {tok}");
    let r = curl(&[
        "-i",
        "-H",
        &auth,
        &format!("{base}/echo/hello?page=2&access_token=x"),
    ])
    .await?;
    outputs.extend(out("curl", &r));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    // The upstream echoes the headers it got: the injected credential comes back redacted.
    assert!(r.stdout.contains("Bearer [REDACTED]"), "{}", r.stdout);
    let seen = fx.upstream.recorded();
    let last = seen.last().expect("upstream saw the request");
    assert_eq!(last.path, "/echo/hello");
    assert_eq!(
        last.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {}", fx.secret.expose_secret()).as_str()),
        "upstream did not get the injected credential"
    );
    assert_eq!(
        last.headers.get("accept-encoding").map(String::as_str),
        Some("identity")
    );
    // HTTP/2 by ALPN, with the upstream's authority (not the listener's).
    assert_eq!(last.version, "HTTP/2.0");
    assert_eq!(last.authority, format!("127.0.0.1:{}", fx.upstream.port));
    assert!(
        !last.headers.values().any(|v| v.contains(&tok)),
        "the grant token went upstream"
    );

    // The Unix socket serves the same.
    let sock = view["handle"]["http"]["socket_path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!sock.is_empty(), "{view}");
    let r = curl(&[
        "--unix-socket",
        &sock,
        "-H",
        &auth,
        "http://localhost/echo/unix",
    ])
    .await?;
    outputs.extend(out("curl unix", &r));
    assert!(r.stdout.contains("\"/echo/unix\""), "{}", r.stdout);

    // One audit record per call, with the rule, and the secret-like query value redacted.
    let records = fx.wait_http_records(2).await?;
    let rec = records
        .iter()
        .find(|r| r["path"] == "/echo/hello")
        .expect("audit record");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["method"], "GET");
    assert!(
        rec["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("/echo/**"),
        "{rec}"
    );
    assert_eq!(
        rec["query"],
        serde_json::json!(["page=2", "access_token=[REDACTED]"])
    );
    assert!(rec["secret_reflected"].as_u64().unwrap_or(0) >= 1, "{rec}");
    assert_eq!(rec["end"], "complete");
    assert!(fx.assert_clean(&outputs)? > 3);
    Ok(())
}

/// An HTTP/1.1-only upstream: origin-form target and `Host` from the base URL; one client
/// connection's requests reuse one pooled upstream connection, and when the upstream closes
/// it (`Connection: close`) the next request on the same client connection goes out on a
/// new one.
#[tokio::test]
async fn http1_upstream_connection_is_reused_and_replaced_when_closed() -> anyhow::Result<()> {
    let fx = HttpFixture::start_http1_upstream("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    // One curl, four URLs: curl reuses its one client connection for all of them.
    let urls: Vec<String> = ["/echo/a", "/echo/close", "/echo/b", "/echo/c"]
        .iter()
        .map(|p| format!("{base}{p}"))
        .collect();
    let mut args = vec!["-H", auth.as_str(), "-w", "%{http_code} %{num_connects}\n"];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let r = curl(&args).await?;
    let outputs = out("curl", &r);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Every request answered; only the first opened a client connection.
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["200 1", "200 0", "200 0", "200 0"],
        "{}",
        r.stdout
    );
    let seen = fx.upstream.recorded();
    let got: Vec<(&str, &str, u64)> = seen
        .iter()
        .map(|r| (r.path.as_str(), r.version.as_str(), r.connection))
        .collect();
    assert_eq!(
        got,
        [
            ("/echo/a", "HTTP/1.1", 1),
            ("/echo/close", "HTTP/1.1", 1),
            ("/echo/b", "HTTP/1.1", 2),
            ("/echo/c", "HTTP/1.1", 2),
        ],
        "upstream requests (path, version, upstream connection)"
    );
    let injected = format!("Bearer {}", fx.secret.expose_secret());
    for rec in &seen {
        assert_eq!(rec.authority, format!("127.0.0.1:{}", fx.upstream.port));
        // assert!, not assert_eq!: a failure must not print the secret.
        assert!(
            rec.headers.get("authorization") == Some(&injected),
            "upstream did not get the injected credential on {}",
            rec.path
        );
    }
    let records = fx.wait_http_records(4).await?;
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 200 && r["end"] == "complete"),
        "{records:?}"
    );
    fx.assert_clean(&outputs)?;
    Ok(())
}

/// Upstream connections are shared through the grant's per-runtime pool: a client
/// connection holds one only while its request is in flight, so client connections that
/// come one after another reuse the same few upstream connections (at most one per HTTP
/// runtime of the daemon) instead of opening one each.
#[tokio::test]
async fn client_connections_one_after_another_share_pooled_upstream_connections(
) -> anyhow::Result<()> {
    const CLIENTS: usize = 8;
    let fx = HttpFixture::start_http1_upstream("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    let mut outputs = vec![];
    for i in 0..CLIENTS {
        // One curl process per request: a new client connection each time.
        let url = format!("{base}/echo/{i}");
        let r = curl(&[
            "-sS",
            "-H",
            &auth,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .await?;
        outputs.extend(out("curl", &r));
        assert_eq!(r.stdout, "200", "{}", r.stderr);
    }
    let runtimes = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let seen = fx.upstream.recorded();
    assert_eq!(seen.len(), CLIENTS);
    let mut upstream_conns: Vec<u64> = seen.iter().map(|r| r.connection).collect();
    upstream_conns.sort_unstable();
    upstream_conns.dedup();
    assert!(
        upstream_conns.len() <= runtimes.min(CLIENTS),
        "{CLIENTS} client connections one after another used upstream connections {upstream_conns:?} \
         (the daemon has {runtimes} HTTP runtimes, each with its own pool)"
    );
    fx.wait_http_records(CLIENTS).await?;
    fx.assert_clean(&outputs)?;
    Ok(())
}

/// A pooled upstream connection is reused only after its response was read to the end: a
/// client that leaves in the middle of a response (here one that never ends) takes that
/// upstream connection with it, so no later request, from any client connection, can be
/// answered with the rest of someone else's response.
#[tokio::test]
async fn an_upstream_connection_left_mid_response_is_never_reused() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = HttpFixture::start_http1_upstream("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {base}"))?;
    // Client A: a response that starts and never ends; A reads its first bytes and leaves.
    let mut a = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    a.write_all(
        format!("GET /hang HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("started") {
        let n = tokio::time::timeout(STEP_TIMEOUT, a.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "agentd closed before the response started");
        got.extend_from_slice(&buf[..n]);
    }
    drop(a);
    let hang_conn = fx
        .upstream
        .recorded()
        .iter()
        .find(|r| r.path == "/hang")
        .map(|r| r.connection)
        .ok_or_else(|| anyhow::anyhow!("the upstream did not record /hang"))?;
    // The record of A's request says the client left.
    let records = fx.wait_http_records(1).await?;
    assert_eq!(records[0]["end"], "client", "{records:?}");
    // Then clients one after another, on every HTTP runtime: each gets its own answer.
    let auth = format!("Authorization: Bearer {tok}");
    let mut outputs = vec![];
    for i in 0..6 {
        let url = format!("{base}/echo/after-{i}");
        let r = curl(&["-sS", "-m", "10", "-H", &auth, &url]).await?;
        outputs.extend(out("curl", &r));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let echoed: Value = serde_json::from_str(&r.stdout)?;
        assert_eq!(echoed["path"], format!("/echo/after-{i}"));
    }
    let seen = fx.upstream.recorded();
    let reused: Vec<&str> = seen
        .iter()
        .filter(|r| r.path != "/hang" && r.connection == hang_conn)
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        reused.is_empty(),
        "requests sent on the upstream connection left mid-response: {reused:?}"
    );
    fx.assert_clean(&outputs)?;
    Ok(())
}

/// `Content-Length` survives the proxy: a small body of known length goes out with its
/// length, not re-chunked, and when the scanner redacts the secret in it the length is the
/// redacted body's (the echo upstream echoes the injected credential back in a JSON body
/// with a `Content-Length`); a `HEAD` answer keeps the upstream's length (S3's
/// `HeadObject` and download tools read the size from it).
#[tokio::test]
async fn content_length_is_kept_for_head_and_small_bodies() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    let header = |text: &str, name: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut outputs = vec![];
    let get = curl(&["-sS", "-H", &auth, "-D", "-", &format!("{base}/echo/len")]).await?;
    outputs.extend(out("curl get", &get));
    assert_eq!(get.code, 0, "{}", get.stderr);
    let (head_part, body) = get.stdout.split_once("\r\n\r\n").unwrap_or_default();
    assert_eq!(
        header(head_part, "content-length"),
        Some(body.len().to_string()),
        "{head_part}"
    );
    assert!(
        header(head_part, "transfer-encoding").is_none(),
        "{head_part}"
    );
    assert!(body.contains("Bearer [REDACTED]"), "{body}");
    let head = curl(&["-sS", "-I", "-H", &auth, &format!("{base}/echo/len")]).await?;
    outputs.extend(out("curl head", &head));
    assert_eq!(head.code, 0, "{}", head.stderr);
    // The echo upstream's HEAD answer has the length its GET answer to that same request
    // would have (it echoes the method and headers): present and a number.
    let head_len = header(&head.stdout, "content-length");
    assert!(
        head_len
            .as_deref()
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l > 0),
        "HEAD lost its content-length:\n{}",
        head.stdout
    );
    assert!(
        header(&head.stdout, "transfer-encoding").is_none(),
        "{}",
        head.stdout
    );
    let records = fx.wait_http_records(2).await?;
    assert!(
        records.iter().all(|r| r["end"] == "complete"),
        "{records:?}"
    );
    assert!(
        records[0]["secret_reflected"].as_u64().unwrap_or(0) >= 1,
        "{records:?}"
    );
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn allow_list_and_token_refusals() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    let mut outputs = vec![];
    let cases: [(&[&str], &str, &str); 6] = [
        (&["-X", "DELETE"], "/echo/x", "403 allow_list"),
        (&["-X", "POST", "-d", "x"], "/echo/x", "403 allow_list"),
        (&[], "/admin", "403 allow_list"),
        (&[], "/echox", "403 allow_list"),
        (&["-X", "PATCH", "-d", "x"], "/upload", "403 allow_list"),
        (&["-X", "TRACE"], "/echo/x", "403 method"),
    ];
    let before = fx.upstream.recorded().len();
    for (extra, path, want) in cases {
        let mut args = vec!["-i", "-H", auth.as_str()];
        args.extend_from_slice(extra);
        let url = format!("{base}{path}");
        args.push(&url);
        let r = curl(&args).await?;
        outputs.extend(out("curl", &r));
        let (status, rule) = want.split_once(' ').unwrap_or_default();
        assert!(
            r.stdout.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {}",
            r.stdout
        );
        let body: Value =
            serde_json::from_str(r.stdout.split("\r\n\r\n").nth(1).unwrap_or_default())?;
        assert_eq!(body["error"]["rule"], rule, "{path}: {body}");
        assert!(body["error"]["next_step"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    }
    // Missing and wrong tokens: 401, nothing forwarded.
    for header in [
        "X-Nothing: 1".to_owned(),
        "Authorization: Bearer wrong".to_owned(),
        format!("Authorization: Bearer {tok}x"),
    ] {
        let r = curl(&["-i", "-H", &header, &format!("{base}/echo/x")]).await?;
        assert!(r.stdout.starts_with("HTTP/1.1 401"), "{}", r.stdout);
        assert!(r.stdout.contains("\"rule\":\"token\""), "{}", r.stdout);
    }
    // More wrong tokens within a minute: answers are held back (100 ms, doubling) and logged.
    let mut last = Duration::ZERO;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = curl(&[
            "-i",
            "-H",
            "Authorization: Bearer guess",
            &format!("{base}/echo/x"),
        ])
        .await?;
        assert!(r.stdout.starts_with("HTTP/1.1 401"), "{}", r.stdout);
        last = started.elapsed();
    }
    assert!(
        last >= Duration::from_millis(200),
        "the 5th wrong token was answered in {last:?}"
    );
    assert!(fx
        .daemon
        .log()
        .contains("wrong grant token; answer delayed"));
    assert_eq!(
        fx.upstream.recorded().len(),
        before,
        "a refused request reached the upstream"
    );
    let refused = fx
        .wait_http_records(12)
        .await?
        .iter()
        .filter(|r| r["refused"].is_string())
        .count();
    assert_eq!(refused, 12);
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn every_traversal_spelling_is_refused_or_normalised() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    // (target as sent, expected status, path the upstream must see for a 200)
    let cases = [
        ("/echo/../admin", 403, ""),
        ("/echo/%2e%2e/admin", 403, ""),
        ("/echo/%2E%2E/admin", 403, ""),
        ("/echo/.%2e/admin", 403, ""),
        ("/echo/..%2fadmin", 403, ""),
        ("/echo%2f..%2fadmin", 403, ""),
        ("/echo/..%5cadmin", 403, ""),
        ("/echo/..\\admin", 403, ""),
        ("/echo/..;/admin", 403, ""),
        ("/echo/%252e%252e/admin", 403, ""),
        ("/..", 403, ""),
        ("/echo/%00", 403, ""),
        ("http://evil.example/echo/x", 403, ""),
        ("//echo//a/./b/../c", 200, "/echo/a/c"),
        ("/admin/../echo/ok", 200, "/echo/ok"),
        ("/%65cho/%7Etilde", 200, "/echo/~tilde"),
    ];
    for (target, status, upstream_path) in cases {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_exchange(port, raw.as_bytes()).await?;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{target}: {}",
            resp.lines().next().unwrap_or_default()
        );
        if status == 200 {
            let last = fx.upstream.recorded().pop().expect("forwarded");
            assert_eq!(last.path, upstream_path, "{target}");
        }
        assert!(!resp.contains(fx.secret.expose_secret()));
    }
    // No refused spelling reached the upstream.
    assert!(fx
        .upstream
        .recorded()
        .iter()
        .all(|r| r.path.starts_with("/echo/")));
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn each_auth_scheme_injects_its_way() -> anyhow::Result<()> {
    use base64::Engine as _;
    let fx = HttpFixture::start("").await?;
    let secret = fx.secret.expose_secret().to_owned();
    let mut outputs = vec![];
    for (resource, header_args, want_header, want_query) in [
        (
            "api_header",
            "x-api-key: key {tok}",
            Some(("x-api-key", format!("key {secret}"))),
            None,
        ),
        (
            "api_header",
            "Authorization: Bearer {tok}",
            Some(("x-api-key", format!("key {secret}"))),
            None,
        ),
        (
            "api_basic",
            "Authorization: Basic {basic}",
            Some((
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("ci-bot:{secret}"))
                ),
            )),
            None,
        ),
        ("api_query", "", None, Some(format!("a=1&api_key={secret}"))),
    ] {
        let view = fx.grant(resource).await?;
        let (base, tok) = (base_url(&view), token(&view));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{tok}"));
        let header = header_args
            .replace("{tok}", &tok)
            .replace("{basic}", &basic);
        let url = if resource == "api_query" {
            format!("{base}/echo/q?a=1&api_key={tok}")
        } else {
            format!("{base}/echo/h")
        };
        let mut args = vec!["-i"];
        if !header.is_empty() {
            args.extend(["-H", header.as_str()]);
        }
        args.push(&url);
        let r = curl(&args).await?;
        outputs.extend(out(resource, &r));
        assert!(
            r.stdout.starts_with("HTTP/1.1 200"),
            "{resource}: {}",
            r.stdout
        );
        let last = fx.upstream.recorded().pop().expect("forwarded");
        if let Some((name, value)) = want_header {
            assert!(
                last.headers.get(name) == Some(&value),
                "{resource}: wrong {name}"
            );
            assert!(!last.headers.contains_key("authorization") || name == "authorization");
        }
        if let Some(q) = want_query {
            assert!(
                last.query.as_deref() == Some(q.as_str()),
                "{resource}: wrong query"
            );
        }
        assert!(!format!("{:?}{:?}", last.headers, last.query).contains(&tok));
        // The handle says where the token goes.
        assert!(view["handle"]["http"]["token_placement"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    }
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn reflected_secret_is_redacted_in_headers_and_across_chunks() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    let len = "Bearer ".len() + fx.secret.expose_secret().len();
    let mut outputs = vec![];
    for split in 0..=len {
        let r = curl(&["-i", "-H", &auth, &format!("{base}/reflect?split={split}")]).await?;
        outputs.extend(out("reflect", &r));
        assert!(
            r.stdout.contains("x-reflected: Bearer [REDACTED]"),
            "{split}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("{\"you_sent\": \"Bearer [REDACTED]\"}"),
            "{split}: {}",
            r.stdout
        );
    }
    let reflected: Vec<u64> = fx
        .wait_http_records(len + 1)
        .await?
        .iter()
        .filter(|r| r["path"] == "/reflect")
        .map(|r| r["secret_reflected"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(reflected.len(), len + 1);
    assert!(reflected.iter().all(|&n| n == 2), "{reflected:?}");
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn sse_first_event_arrives_before_the_upstream_finishes() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let mut child = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            &format!("Authorization: Bearer {tok}"),
            &format!("{base}/sse"),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The upstream holds the second event until released: the first must get through alone.
    let first = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("data: first"));
    fx.upstream.release.notify_one();
    let mut rest = vec![];
    while let Some(l) = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await?? {
        rest.push(l);
    }
    assert_eq!(
        rest,
        vec!["".to_owned(), "data: second".to_owned(), "".to_owned()]
    );
    assert!(child.wait().await?.success());
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn revoke_aborts_a_long_response_and_ends_the_listener() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let mut child = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            &format!("Authorization: Bearer {tok}"),
            &format!("{base}/hang"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("started"));
    let started = std::time::Instant::now();
    let r = fx
        .cli(&["revoke", view["grant"]["id"].as_str().unwrap_or_default()])
        .await?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let status = tokio::time::timeout(STEP_TIMEOUT, child.wait()).await??;
    assert!(!status.success(), "curl should see the response cut");
    assert!(started.elapsed() < Duration::from_secs(5));
    let rec = fx
        .wait_http_records(1)
        .await?
        .into_iter()
        .find(|r| r["path"] == "/hang")
        .expect("record");
    assert_eq!(rec["end"], "revoked");
    // The listener serves no more: its port, still held, answers that the grant ended.
    let r = curl(&[
        "-sS",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        "-w",
        "\n%{http_code}",
        &format!("{base}/echo/x"),
    ])
    .await?;
    assert!(r.stdout.ends_with("\n410"), "{}", r.stdout);
    assert!(
        r.stdout.contains("\"rule\":\"grant\"") && r.stdout.contains("was revoked"),
        "{}",
        r.stdout
    );
    fx.assert_clean(&[])?;
    Ok(())
}

#[tokio::test]
async fn hostile_requests_are_refused_and_the_daemon_stays_up() -> anyhow::Result<()> {
    let fx = HttpFixture::start("handshake_timeout = \"1s\"\nhttp_idle_timeout = \"1s\"").await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let tok = token(&view);
    let auth = format!("Authorization: Bearer {tok}");
    let cases: Vec<(String, &str)> = vec![
        (format!("POST /upload HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"), "HTTP/1.1 400"),
        // Over 100 headers.
        (format!("GET /echo/x HTTP/1.1\r\nHost: x\r\n{auth}\r\n{}\r\n", "X-A: 1\r\n".repeat(120)), "HTTP/1.1 431"),
        // Oversized head.
        (format!("GET /echo/x HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)), "HTTP/1.1 431"),
        (format!("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n{auth}\r\nConnection: close\r\n\r\n"), "HTTP/1.1 403"),
        (format!("GET http://evil.example/echo/x HTTP/1.1\r\nHost: evil.example\r\n{auth}\r\nConnection: close\r\n\r\n"), "HTTP/1.1 403"),
        (format!("GET /echo/x HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"), "HTTP/1.1 403"),
        (format!("GET /compressed HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\n\r\n"), "HTTP/1.1 502"),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n".to_owned(), "HTTP/1.1 400"),
    ];
    for (raw, want) in &cases {
        let resp = raw_exchange(port, raw.as_bytes()).await?;
        assert!(
            resp.starts_with(want),
            "{want}: got {:?}",
            resp.lines().next()
        );
    }
    // Request smuggling: Content-Length and Transfer-Encoding together. hyper lets the
    // chunked framing win, drops Content-Length and closes the connection after the
    // response (RFC 9112 §6.3), so the request hidden behind it is never read.
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n"
    );
    let resp = raw_exchange(port, raw.as_bytes()).await?;
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(resp.contains("{\"received\": 0}"), "{resp}");
    assert!(!fx
        .upstream
        .recorded()
        .iter()
        .any(|r| r.path.contains("smuggled")));
    // A slow client that never finishes its head is cut after the header timeout.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /echo/x HTTP/1.1\r\nHost: x\r\n").await?;
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // An idle keep-alive connection is closed after the idle timeout.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET /echo/x HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Still serving.
    let r = curl(&["-H", &auth, &format!("http://127.0.0.1:{port}/echo/ok")]).await?;
    assert!(r.stdout.contains("/echo/ok"), "{}", r.stdout);
    fx.assert_clean(&[])?;
    Ok(())
}

/// Sends `head` and `body_start` on a new connection to `port`, then nothing; returns what
/// the server sent until it closed the connection, and how long that took.
async fn stall_after(
    port: u16,
    head: &str,
    body_start: &[u8],
) -> anyhow::Result<(String, Duration)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(head.as_bytes()).await?;
    s.write_all(body_start).await?;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await??;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    ))
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_and_others_are_served() -> anyhow::Result<()> {
    let fx = HttpFixture::start("http_body_idle_timeout = \"1s\"").await?;
    let view = fx.grant("api").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let auth = format!("Authorization: Bearer {}", token(&view));
    // Headers, 10 of the 1,000 announced body bytes, then a stall: the streamed body.
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 1000\r\n\r\n");
    let stalled = tokio::spawn(async move { stall_after(port, &head, b"0123456789").await });
    // Meanwhile another connection of the same grant is served.
    let r = curl(&[
        "-H",
        &auth,
        "--data-binary",
        "ok",
        &format!("http://127.0.0.1:{port}/upload"),
    ])
    .await?;
    assert!(r.stdout.contains("{\"received\": 2}"), "{}", r.stdout);
    let (_, took) = tokio::time::timeout(STEP_TIMEOUT, stalled).await???;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // A body the listener reads whole to hash (aws_sigv4, not S3): 408, then closed.
    let view = fx.grant("api_aws").await?;
    let port = agentd_tests::handle_port(&view["handle"]);
    let head = format!(
        "POST /v1/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n",
        token(&view)
    );
    let (resp, took) = stall_after(port, &head, b"abc").await?;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("\"rule\":\"body_idle\""), "{resp}");
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    let records = fx.wait_http_records(3).await?;
    let idle = records
        .iter()
        .filter(|r| r["end"] == "client body idle")
        .count();
    assert_eq!(idle, 2, "{records:?}");
    assert!(fx
        .daemon
        .log()
        .contains("request body stalled; connection closed"));
    fx.assert_clean(&out("curl", &r))?;
    Ok(())
}

#[tokio::test]
async fn a_100_mb_body_streams_both_ways_in_bounded_memory() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let auth = format!("Authorization: Bearer {tok}");
    const SIZE: u64 = 100 * 1024 * 1024;
    let rss_before = vm_rss_kib(fx.daemon.pid).unwrap_or(0);
    let file = fx.dir.path().join("upload.bin");
    {
        let f = std::fs::File::create(&file)?;
        f.set_len(SIZE)?;
    }
    let r = curl(&[
        "-H",
        &auth,
        "-T",
        &file.display().to_string(),
        &format!("{base}/upload"),
    ])
    .await?;
    std::fs::remove_file(&file)?;
    assert_eq!(
        r.stdout.trim(),
        format!("{{\"received\": {SIZE}}}"),
        "{}",
        r.stderr
    );
    let r = curl(&[
        "-H",
        &auth,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{base}/bytes?n={SIZE}"),
    ])
    .await?;
    assert_eq!(r.stdout.trim(), SIZE.to_string(), "{}", r.stderr);
    let rss_after = vm_rss_kib(fx.daemon.pid).unwrap_or(0);
    let grown = rss_after.saturating_sub(rss_before);
    println!("daemon RSS {rss_before} KiB → {rss_after} KiB (+{grown} KiB) after 100 MiB each way");
    assert!(grown < 32 * 1024, "daemon RSS grew by {grown} KiB");
    let recs = fx.wait_http_records(2).await?;
    let up = recs
        .iter()
        .find(|r| r["path"] == "/upload")
        .expect("record");
    assert_eq!(up["bytes_up"], SIZE);
    let down = recs.iter().find(|r| r["path"] == "/bytes").expect("record");
    assert_eq!(down["bytes_down"], SIZE);
    fx.assert_clean(&[])?;
    Ok(())
}

/// Runs `program ARGS` with `env`; returns its output.
async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<agentd_tests::CliOutput> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output()).await??;
    Ok(agentd_tests::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

const PYTHON_CLIENTS: &str = r#"
import os, sys, json
import requests, httpx, openai
base, tok = os.environ["AGENTD_BASE_URL"], os.environ["AGENTD_TOKEN"]
r = requests.get(base + "/echo/requests", headers={"Authorization": "Bearer " + tok})
print("requests", r.status_code, r.json()["path"])
r = requests.delete(base + "/echo/requests", headers={"Authorization": "Bearer " + tok})
print("requests-denied", r.status_code, r.json()["error"]["rule"])
with httpx.Client(base_url=base, headers={"Authorization": "Bearer " + tok}) as c:
    r = c.get("/echo/httpx", params={"q": "1"})
    print("httpx", r.status_code, r.json()["path"])
    with c.stream("GET", "/sse") as s:
        first = next(s.iter_lines())
        print("httpx-sse", first)
client = openai.OpenAI(base_url=base + "/v1", api_key=tok, max_retries=0)
raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
echo = json.loads(raw.http_response.text)
print("openai", raw.http_response.status_code, echo["path"], echo["method"], echo["headers"]["authorization"])
"#;

#[tokio::test]
async fn python_requests_httpx_openai_and_node_fetch_work_unchanged() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api").await?;
    let (base, tok) = (base_url(&view), token(&view));
    let env = [
        ("AGENTD_BASE_URL", base.as_str()),
        ("AGENTD_TOKEN", tok.as_str()),
    ];
    let py = tokio::spawn({
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run("python3", &["-c", PYTHON_CLIENTS], &env).await
        }
    });
    // The httpx SSE read gets the first event while the upstream still holds the second;
    // the upstream is released once the SSE request has arrived.
    tokio::time::timeout(STEP_TIMEOUT, fx.upstream.sse_started.notified()).await?;
    fx.upstream.release.notify_one();
    let py = tokio::time::timeout(STEP_TIMEOUT, py).await???;
    assert_eq!(py.code, 0, "python: {} {}", py.stdout, py.stderr);
    let lines: Vec<&str> = py.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "requests 200 /echo/requests",
            "requests-denied 403 allow_list",
            "httpx 200 /echo/httpx",
            "httpx-sse data: first",
            "openai 200 /v1/chat/completions POST Bearer [REDACTED]",
        ],
        "{}",
        py.stderr
    );
    let node = run(
        "node",
        &["-e", "fetch(process.env.AGENTD_BASE_URL + '/echo/node', {headers: {authorization: 'Bearer ' + process.env.AGENTD_TOKEN}}).then(async r => console.log(r.status, (await r.json()).path))"],
        &env,
    )
    .await?;
    assert_eq!(node.stdout.trim(), "200 /echo/node", "{}", node.stderr);
    let openai_seen = fx
        .upstream
        .recorded()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("openai call");
    assert_eq!(
        openai_seen.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {}", fx.secret.expose_secret()).as_str())
    );
    let mut outputs = out("python", &py);
    outputs.extend(out("node", &node));
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn mcp_lists_http_resources_and_calls_through_http_request() -> anyhow::Result<()> {
    use serde_json::json;
    let fx = HttpFixture::start("").await?;
    let mcp = fx.mcp().await?;
    let mut outputs = vec![];
    let listed = mcp.call("list_resources", json!({"kind": "http"})).await?;
    outputs.push(("list_resources".to_owned(), listed.raw.clone()));
    let api = listed.value["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "api"))
        .cloned()
        .expect("api listed");
    assert_eq!(api["kind"], "http");
    let allows = api["permissions"][0]["http_allows"].to_string();
    assert!(allows.contains("GET, HEAD /echo/**"), "{allows}");
    let described = mcp
        .call("describe_resource", json!({"resource": "api"}))
        .await?;
    outputs.push(("describe_resource".to_owned(), described.raw.clone()));
    assert_eq!(described.value["base_url"], fx.upstream.base_url());
    let granted = mcp
        .call("request_access", json!({"resource": "api", "permission": "reader", "duration": "10m", "justification": "http test"}))
        .await?;
    outputs.push(("request_access".to_owned(), granted.raw.clone()));
    let grant_id = granted.value["grant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(grant_id.starts_with("g_"), "{}", granted.raw);

    let ok = mcp
        .call("http_request", json!({"grant_id": grant_id, "method": "GET", "path": "/echo/mcp?x=1", "headers": {"x-trace": "t1"}}))
        .await?;
    outputs.push(("http_request".to_owned(), ok.raw.clone()));
    assert!(!ok.is_error, "{}", ok.raw);
    assert_eq!(ok.value["status"], 200);
    let echoed: Value = serde_json::from_str(ok.value["body"].as_str().unwrap_or_default())?;
    assert_eq!(echoed["path"], "/echo/mcp");
    assert_eq!(echoed["headers"]["x-trace"], "t1");
    assert_eq!(echoed["headers"]["authorization"], "Bearer [REDACTED]");
    assert_eq!(ok.value["truncated"], false);

    let cut = mcp
        .call("http_request", json!({"grant_id": grant_id, "method": "GET", "path": "/bytes?n=100000", "max_bytes": 1000}))
        .await?;
    assert_eq!(cut.value["truncated"], true, "{}", cut.raw);
    assert_eq!(cut.value["body"].as_str().map(str::len), Some(1000));

    let refused = mcp
        .call(
            "http_request",
            json!({"grant_id": grant_id, "method": "DELETE", "path": "/echo/mcp"}),
        )
        .await?;
    outputs.push(("http_request refused".to_owned(), refused.raw.clone()));
    assert!(refused.is_error, "{}", refused.raw);
    assert_eq!(refused.value["error"], "refused");
    assert!(refused.raw.contains("do not retry"), "{}", refused.raw);
    let log = mcp.close().await?;
    outputs.push(("shim log".to_owned(), log));
    fx.assert_clean(&outputs)?;
    Ok(())
}

#[tokio::test]
async fn demo_http_shows_the_injected_credential_and_never_prints_it() -> anyhow::Result<()> {
    let out = run(
        &agentd_tests::bin("agentd").display().to_string(),
        &["demo", "--http"],
        &[],
    )
    .await?;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("(injected by agentd)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("\"authorization\":\"Bearer [REDACTED]\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\"rule\":\"allow_list\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("http_request"), "{}", out.stdout);
    // The demo's key is `demo-api-key-<32 hex>`: it appears nowhere in what was printed.
    assert!(!out.stdout.contains("demo-api-key-") && !out.stderr.contains("demo-api-key-"));
    Ok(())
}
