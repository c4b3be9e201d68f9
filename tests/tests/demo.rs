//! `agentd demo` leaves nothing behind, whatever the way out: the built binary runs as a
//! child with its own `TMPDIR` (so its directories, its PostgreSQL cluster and the sweep
//! of killed runs are this test's alone, and tests run in parallel), and afterwards there
//! is no keychain entry of its service, no process whose working directory or command line
//! is under that `TMPDIR`, and nothing left in it.

use agentd::credentials::keychain::{self, KeychainError};
use agentd_tests::*;
use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

/// A private `TMPDIR` for one demo run. 0755: when we are root the cluster runs as the
/// `postgres` user, who must reach its data directory below.
fn private_tmpdir() -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new().prefix("demo-test-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// `agentd demo ARGS` with `TMPDIR=tmp` and `env`, stdout and stderr piped.
fn demo_command(tmp: &Path, args: &[&str], env: &[(&str, OsString)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin("agentd"));
    cmd.arg("demo")
        .args(args)
        .env("TMPDIR", tmp)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The keychain service a run names on stderr (`…, keychain service agentd-demo-…;`).
fn service_of(stderr: &str) -> Option<String> {
    let rest = stderr.split("keychain service ").nth(1)?;
    Some(rest.split(';').next()?.trim().to_owned())
}

/// Processes (pid, what matched) whose working directory or command line is under `dir`
/// (every PostgreSQL process has its data directory as working directory).
fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&needle) || cmdline.contains(&needle) {
            found.push((pid, format!("cwd {cwd}; {cmdline}")));
        }
    }
    found
}

/// Live keys in this machine's keyutils store (`/proc/keys`, every key we may view,
/// whatever keyring holds it) whose description names `service`; invalidated, revoked or
/// dead keys (flags `i`, `R`, `D`, about to be collected) do not count.
fn live_keys_of(service: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/keys")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("@{service}:")))
        .filter(|l| {
            let flags = l.split_whitespace().nth(1).unwrap_or_default();
            !flags.contains(['i', 'R', 'D'])
        })
        .map(str::to_owned)
        .collect()
}

/// Nothing of the run is left: no entry of `service` readable through the keychain API or
/// present anywhere in the kernel's key store, no process under `tmp`, nothing in `tmp`.
fn assert_nothing_left(tmp: &Path, service: Option<&str>, entries: &[&str]) {
    if let Some(service) = service {
        for entry in entries {
            assert!(
                matches!(keychain::get(service, entry), Err(KeychainError::NotFound)),
                "keychain entry {service}/{entry} left behind"
            );
        }
        let keys = live_keys_of(service);
        assert!(keys.is_empty(), "keys of {service} left: {keys:?}");
    }
    let procs = processes_under(tmp);
    assert!(
        procs.is_empty(),
        "processes left under {}: {procs:?}",
        tmp.display()
    );
    let left: Vec<PathBuf> = std::fs::read_dir(tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}

/// The demo's secrets never reach its output: the upstream password (`demo-` + 48 hex),
/// the cluster superuser's (48 hex) and the HTTP demo's API key (`demo-api-key-` + 32
/// hex) all hold a run of 32 or more hex digits, and nothing the demo prints does.
fn assert_no_secret_shaped(text: &str) {
    assert!(!text.contains("demo-api-key-"), "the API key was printed");
    let mut run = 0usize;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        assert!(run < 32, "a secret-shaped run of hex digits was printed");
    }
}

/// Runs `agentd demo ARGS` to the end; returns (exit code, stdout, stderr), checked with
/// [`assert_no_secret_shaped`].
async fn run_to_end(
    tmp: &Path,
    args: &[&str],
    env: &[(&str, OsString)],
) -> anyhow::Result<(Option<i32>, String, String)> {
    let out =
        tokio::time::timeout(STEP_TIMEOUT * 2, demo_command(tmp, args, env).output()).await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_no_secret_shaped(&stdout);
    assert_no_secret_shaped(&stderr);
    Ok((out.status.code(), stdout, stderr))
}

/// A running `agentd demo --serve` and what its JSON line says.
struct Serving {
    child: tokio::process::Child,
    /// Kept open so the demo's stdout stays writable.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    info: Value,
    service: String,
    cluster_dir: PathBuf,
}

/// Starts `agentd demo --serve [extra]` and waits for its JSON line on stdout.
async fn serve(tmp: &Path, extra: &[&str]) -> anyhow::Result<Serving> {
    let mut args = vec!["--serve"];
    args.extend_from_slice(extra);
    let mut child = demo_command(tmp, &args, &[]).spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(STEP_TIMEOUT * 2, lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("demo --serve ended without its JSON line"))?;
    let info: Value = serde_json::from_str(&line)?;
    let service = info["keyring_service"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cluster_dir = PathBuf::from(info["cluster_dir"].as_str().unwrap_or_default());
    anyhow::ensure!(service.starts_with("agentd-demo-"), "{line}");
    anyhow::ensure!(cluster_dir.starts_with(tmp), "{line}");
    Ok(Serving {
        child,
        _stdout: lines,
        info,
        service,
        cluster_dir,
    })
}

/// Sends `signal` (e.g. `TERM`) to `pid` with kill(1).
async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// While the demo serves: its files, cluster and keychain entry exist (so the checks
/// after it ends are not vacuous), its cluster's pg_hba has no `trust` line, and a local
/// superuser login without a password is refused.
async fn check_while_serving(tmp: &Path, s: &Serving) -> anyhow::Result<()> {
    assert!(
        keychain::get(&s.service, "demo/read_only").is_ok(),
        "the demo's keychain entry is not visible to the test"
    );
    assert!(!live_keys_of(&s.service).is_empty());
    assert!(!processes_under(tmp).is_empty(), "no cluster process found");
    let dir = PathBuf::from(s.info["dir"].as_str().unwrap_or_default());
    assert!(
        dir.starts_with(tmp) && dir.join("cleanup.json").is_file(),
        "{}",
        s.info
    );
    let hba = std::fs::read_to_string(s.cluster_dir.join("data").join("pg_hba.conf"))?;
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!rules.is_empty());
    for rule in &rules {
        assert!(
            !rule.split_whitespace().any(|w| w == "trust"),
            "trust in pg_hba: {rule}"
        );
        assert!(rule.ends_with("scram-sha-256"), "{rule}");
    }
    let socket_dir = s.cluster_dir.join("sock");
    let pg_port = std::fs::read_dir(&socket_dir)?
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(".s.PGSQL.")
                .and_then(|p| p.parse::<u16>().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no socket in {}", socket_dir.display()))?;
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new(agentd::pgcluster::psql_path())
            .arg("-h")
            .arg(&socket_dir)
            .args([
                "-p",
                &pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-w", "-X", "-At", "-c", "SELECT 1"])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a local superuser login without a password worked"
    );
    assert!(stderr.contains("password"), "{stderr}");
    Ok(())
}

/// `--serve` stopped by `signal` (then each of `more`, sent at once after it): exits 0
/// after saying so, and leaves nothing.
async fn serve_then_signal(signal: &str, more: &[&str]) -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let mut s = serve(tmp.path(), &[]).await?;
    check_while_serving(tmp.path(), &s).await?;
    let pid = s.child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    send_signal(pid, signal).await?;
    for other in more {
        // The demo may already be gone (cleanup is quick): that is fine too.
        let _ = send_signal(pid, other).await;
    }
    let mut stderr = String::new();
    if let Some(mut err) = s.child.stderr.take() {
        tokio::time::timeout(STEP_TIMEOUT, err.read_to_string(&mut stderr)).await??;
    }
    let status = tokio::time::timeout(STEP_TIMEOUT, s.child.wait()).await??;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_no_secret_shaped(&stderr);
    assert!(
        stderr.contains(&format!("SIG{signal} received")),
        "{stderr}"
    );
    assert_nothing_left(tmp.path(), Some(&s.service), &["demo/read_only"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_normal_exit_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let (code, stdout, stderr) = run_to_end(tmp.path(), &[], &[]).await?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("hash chain verified"), "{stdout}");
    let service = service_of(&stderr);
    assert!(service.is_some(), "{stderr}");
    assert_nothing_left(tmp.path(), service.as_deref(), &["demo/read_only"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_dynamic_normal_exit_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let (code, stdout, stderr) = run_to_end(tmp.path(), &["--dynamic"], &[]).await?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let service = service_of(&stderr);
    assert!(service.is_some(), "{stderr}");
    assert_nothing_left(tmp.path(), service.as_deref(), &["demo/admin"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_http_normal_exit_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let (code, stdout, stderr) = run_to_end(tmp.path(), &["--http"], &[]).await?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let service = service_of(&stderr);
    assert!(service.is_some(), "{stderr}");
    assert_nothing_left(tmp.path(), service.as_deref(), &["demo-api/reader"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_sigint_leaves_nothing() -> anyhow::Result<()> {
    serve_then_signal("INT", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_sigterm_leaves_nothing() -> anyhow::Result<()> {
    serve_then_signal("TERM", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_sighup_leaves_nothing() -> anyhow::Result<()> {
    serve_then_signal("HUP", &[]).await
}

/// SIGTERM while the cluster is being made (sent as soon as the demo says it starts one;
/// initdb alone takes longer): set-up finishes, is undone, and the demo says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sigterm_during_setup_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let mut child = demo_command(tmp.path(), &[], &[]).spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("demo ended early: {seen:?}"))?;
        let starting = line.contains("starting a throwaway PostgreSQL cluster");
        seen.push(line);
        if starting {
            break;
        }
    }
    send_signal(pid, "TERM").await?;
    while let Some(line) = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await?? {
        seen.push(line);
    }
    let status = tokio::time::timeout(STEP_TIMEOUT, child.wait()).await??;
    let text = seen.join("\n");
    assert_no_secret_shaped(&text);
    assert_ne!(status.code(), Some(0), "{text}");
    assert!(text.contains("SIGTERM received"), "{text}");
    assert_nothing_left(tmp.path(), None, &[]);
    Ok(())
}

/// A second and third signal while the first one's cleanup runs are reported, not obeyed:
/// the cleanup still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_more_signals_during_cleanup_leave_nothing() -> anyhow::Result<()> {
    serve_then_signal("TERM", &["INT", "HUP"]).await
}

/// The cluster started and was seeded, then storing the secret failed (the Secret Service
/// backend forced, with no session bus): the demo fails and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_failing_keychain_step_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let env = [
        ("AGENTD_KEYRING_BACKEND", OsString::from("secret-service")),
        (
            "DBUS_SESSION_BUS_ADDRESS",
            OsString::from("unix:path=/nonexistent/bus"),
        ),
    ];
    let (code, stdout, stderr) = run_to_end(tmp.path(), &[], &env).await?;
    assert_ne!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("storing the demo secret in the OS keychain"),
        "{stderr}"
    );
    assert_nothing_left(tmp.path(), None, &[]);
    Ok(())
}

/// The secret is stored and the grant made, then a step fails (curl is not on PATH): the
/// demo fails and deletes the entry it had stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_http_failing_step_after_the_secret_leaves_nothing() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let env = [("PATH", OsString::from("/nonexistent"))];
    let (code, stdout, stderr) = run_to_end(tmp.path(), &["--http"], &env).await?;
    assert_ne!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("running curl"), "{stderr}");
    let service = service_of(&stderr);
    assert!(service.is_some(), "{stderr}");
    assert_nothing_left(tmp.path(), service.as_deref(), &["demo-api/reader"]);
    Ok(())
}

/// A demo killed with SIGKILL cannot clean up: its cluster keeps running and its files
/// stay. The next `agentd demo` (same TMPDIR) sweeps them: cluster stopped, keychain entry
/// deleted, directories removed; then it cleans up after itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_demo_sweeps_what_a_sigkilled_demo_left() -> anyhow::Result<()> {
    let tmp = private_tmpdir()?;
    let mut s = serve(tmp.path(), &[]).await?;
    let pid = s.child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    send_signal(pid, "KILL").await?;
    tokio::time::timeout(STEP_TIMEOUT, s.child.wait()).await??;
    assert!(
        !processes_under(&s.cluster_dir).is_empty(),
        "the killed demo's cluster is not running: nothing to sweep"
    );
    assert!(!live_keys_of(&s.service).is_empty());
    let (code, stdout, stderr) = run_to_end(tmp.path(), &[], &[]).await?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("removed what a killed demo (pid {pid}) left")),
        "{stderr}"
    );
    let service = service_of(&stderr);
    assert_nothing_left(tmp.path(), Some(&s.service), &["demo/read_only"]);
    assert_nothing_left(tmp.path(), service.as_deref(), &["demo/read_only"]);
    Ok(())
}
