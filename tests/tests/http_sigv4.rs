//! `auth = { scheme = "aws_sigv4" }` end to end: real SigV4 clients (curl `--aws-sigv4`,
//! boto3) sign with the grant token as their secret key; the listener checks that
//! signature, drops it, and re-signs with the real key. The upstream's request is checked
//! independently with the `aws-sigv4` crate ([`check_upstream_sigv4`]), and every output,
//! log and audit record is canary-scanned (the secret key is the canary; the session token
//! contains it).

use agentd_tests::http::{
    base_url, check_upstream_sigv4, curl, session_token, token, HttpFixture, AWS_KEY_ID,
};
use agentd_tests::CliOutput;

fn out(label: &str, o: &CliOutput) -> Vec<(String, String)> {
    vec![
        (format!("{label} stdout"), o.stdout.clone()),
        (format!("{label} stderr"), o.stderr.clone()),
    ]
}

/// The upstream's last request, with the checks every SigV4 call shares: the real key's
/// valid signature, nothing of the client's signing (its `Credential=agentd/…` or the
/// token) forwarded.
fn last_signed(
    fx: &HttpFixture,
    tok: &str,
    service: &str,
    region: &str,
) -> anyhow::Result<agentd::echo_upstream::Recorded> {
    let seen = fx
        .upstream
        .recorded()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("nothing reached the upstream"))?;
    let session = (service == "s3").then(|| session_token(&fx.secret));
    check_upstream_sigv4(&seen, &fx.secret, session.as_deref(), service, region)?;
    let auth = seen
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        !auth.contains("Credential=agentd/"),
        "the client's Authorization reached the upstream"
    );
    anyhow::ensure!(
        !format!("{:?}{:?}", seen.headers, seen.query).contains(tok),
        "the grant token reached the upstream"
    );
    anyhow::ensure!(
        seen.headers.get("x-amz-security-token").map(String::as_str) == session.as_deref(),
        "wrong session token upstream"
    );
    Ok(seen)
}

#[tokio::test]
async fn sigv4_clients_are_checked_and_requests_re_signed_with_the_real_key() -> anyhow::Result<()>
{
    let fx = HttpFixture::start("").await?;
    let mut outputs = vec![];

    // A service that needs the body's hash (execute-api): curl signs with the token.
    let view = fx.grant("api_aws").await?;
    outputs.push(("view".to_owned(), view.to_string()));
    let (base, tok) = (base_url(&view), token(&view));
    assert_eq!(view["handle"]["env"]["AWS_SECRET_ACCESS_KEY"], tok.as_str());
    assert_eq!(view["handle"]["env"]["AWS_ENDPOINT_URL"], base.as_str());
    assert_eq!(view["handle"]["http"]["auth_scheme"], "aws_sigv4");
    let user = format!("agentd:{tok}");
    let r = curl(&[
        "-i",
        "--aws-sigv4",
        "aws:amz:us-east-1:execute-api",
        "--user",
        &user,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"hello": "world"}"#,
        &format!("{base}/v1/things?a=1"),
    ])
    .await?;
    outputs.extend(out("curl signed", &r));
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    let seen = last_signed(&fx, &tok, "execute-api", "us-east-1")?;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/things")
    );

    // The same with a wrong token, and a signature over a different secret: refused, and
    // nothing forwarded.
    let before = fx.upstream.recorded().len();
    for user in ["agentd:wrong-token", &format!("agentd:{tok}x")] {
        let r = curl(&[
            "-i",
            "--aws-sigv4",
            "aws:amz:us-east-1:execute-api",
            "--user",
            user,
            &format!("{base}/echo/x"),
        ])
        .await?;
        outputs.extend(out("curl wrong", &r));
        assert!(r.stdout.starts_with("HTTP/1.1 401"), "{}", r.stdout);
        assert!(
            r.stdout.contains("signature does not match"),
            "{}",
            r.stdout
        );
    }
    // Signed correctly but for a path the allow list refuses: 403 after the check.
    let r = curl(&[
        "-i",
        "-X",
        "DELETE",
        "--aws-sigv4",
        "aws:amz:us-east-1:execute-api",
        "--user",
        &format!("agentd:{tok}"),
        &format!("{base}/echo/x"),
    ])
    .await?;
    assert!(r.stdout.starts_with("HTTP/1.1 403"), "{}", r.stdout);
    assert_eq!(
        fx.upstream.recorded().len(),
        before,
        "a refused request went upstream"
    );

    // A Bearer client (the MCP tool, plain curl): signed upstream with the body's hash.
    let bearer = format!("Authorization: Bearer {tok}");
    let r = curl(&["-i", "-H", &bearer, &format!("{base}/echo/bearer")]).await?;
    outputs.extend(out("curl bearer", &r));
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    last_signed(&fx, &tok, "execute-api", "us-east-1")?;

    // S3 with a session token: curl sends x-amz-content-sha256 (passed through, the body
    // streams); a Bearer client's body is signed UNSIGNED-PAYLOAD.
    let view = fx.grant("api_s3").await?;
    outputs.push(("view s3".to_owned(), view.to_string()));
    let (base, tok) = (base_url(&view), token(&view));
    let r = curl(&[
        "-i",
        "-X",
        "PUT",
        "--aws-sigv4",
        "aws:amz:eu-west-1:s3",
        "--user",
        &format!("agentd:{tok}"),
        "--data-binary",
        "object body",
        &format!("{base}/v1/bucket/key%20one.txt"),
    ])
    .await?;
    outputs.extend(out("curl s3", &r));
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    // The echo shows the upstream's headers: the session token comes back redacted.
    assert!(
        r.stdout.contains("\"x-amz-security-token\":\"[REDACTED]\""),
        "{}",
        r.stdout
    );
    let seen = last_signed(&fx, &tok, "s3", "eu-west-1")?;
    assert_eq!(seen.path, "/v1/bucket/key%20one.txt");
    assert_eq!(
        seen.headers.get("x-amz-content-sha256"),
        seen.body_sha256.as_ref()
    );
    let r = curl(&[
        "-i",
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        "--data-binary",
        "object body",
        &format!("{base}/v1/bucket/bearer"),
    ])
    .await?;
    outputs.extend(out("curl s3 bearer", &r));
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    let seen = last_signed(&fx, &tok, "s3", "eu-west-1")?;
    assert_eq!(
        seen.headers.get("x-amz-content-sha256").map(String::as_str),
        Some("UNSIGNED-PAYLOAD")
    );

    // Chunk-signed uploads cannot be re-signed: refused with a clear rule.
    let r = curl(&[
        "-i",
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        "-H",
        "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "--data-binary",
        "x",
        &format!("{base}/v1/bucket/chunked"),
    ])
    .await?;
    assert!(r.stdout.starts_with("HTTP/1.1 400"), "{}", r.stdout);
    assert!(r.stdout.contains("\"rule\":\"aws_sigv4\""), "{}", r.stdout);

    let records = fx.wait_http_records(8).await?;
    assert!(records
        .iter()
        .any(|r| r["path"] == "/v1/things" && r["status"] == 200));
    outputs.push(("daemon log".to_owned(), fx.daemon.log()));
    let tok_needle = secrecy::SecretString::from(tok.clone());
    agentd_tests::assert_no_leak(
        &tok_needle,
        agentd_tests::files_under(fx.dir.path())
            .iter()
            .map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    assert!(fx.assert_clean(&outputs)? > 3);
    Ok(())
}

const BOTO3: &str = r#"
import os, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
r = s3.put_object(Bucket="s3", Key="boto/object.txt", Body=b"hello from boto3")
print("put", r["ResponseMetadata"]["HTTPStatusCode"])
try:
    s3.delete_object(Bucket="s3", Key="boto/object.txt")
except botocore.exceptions.ClientError as e:
    print("delete", e.response["ResponseMetadata"]["HTTPStatusCode"])
"#;

#[tokio::test]
async fn boto3_works_unchanged_with_the_handle_env() -> anyhow::Result<()> {
    let fx = HttpFixture::start("").await?;
    let view = fx.grant("api_s3").await?;
    let tok = token(&view);
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", BOTO3]).kill_on_drop(true);
    cmd.env_remove("AWS_PROFILE");
    // The handle's env is all boto3 needs.
    for (k, v) in view["handle"]["env"].as_object().into_iter().flatten() {
        cmd.env(k, v.as_str().unwrap_or_default());
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let o = tokio::time::timeout(agentd_tests::STEP_TIMEOUT, cmd.output()).await??;
    let o = CliOutput {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert_eq!(o.code, 0, "boto3: {} {}", o.stdout, o.stderr);
    // The put went through; the delete was refused by the allow list (403) before any
    // signing upstream.
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        ["put 200", "delete 403"],
        "{}",
        o.stderr
    );
    let seen = fx
        .upstream
        .recorded()
        .into_iter()
        .find(|r| r.path == "/s3/boto/object.txt")
        .ok_or_else(|| anyhow::anyhow!("boto3's put did not reach the upstream"))?;
    check_upstream_sigv4(
        &seen,
        &fx.secret,
        Some(&session_token(&fx.secret)),
        "s3",
        "eu-west-1",
    )?;
    assert!(seen.headers["authorization"].contains(&format!("Credential={AWS_KEY_ID}/")));
    assert!(!format!("{:?}", seen.headers).contains(&tok));
    fx.assert_clean(&out("boto3", &o))?;
    Ok(())
}
