//! Talk only to our daemon (issue 15): another local OS user who creates the control
//! socket (or its directory) first must not receive the CLI's or the shim's requests. The
//! test runs as root, creates that user, has it serve a tiny fake server, and shows both
//! clients refuse before sending anything, naming the squatter's uid and the path.

#![cfg(target_os = "linux")]

use agentd_tests::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt as _;

const SQUATTER: &str = "agentd-squatter";

/// A fake control server: binds the socket, says `ready`, and for every connection writes
/// how many bytes it received (read until EOF or 2 s) as one line to LOG.
const FAKE_SERVER: &str = r#"
import socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    n = 0
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
    except Exception:
        pass
    with open(log, "a") as f:
        f.write(f"{n}\n")
    c.close()
"#;

/// The squatter's uid and gid, creating the user if needed.
fn squatter() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<Option<u32>> {
        let out = std::process::Command::new("id")
            .args([flag, SQUATTER])
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten())
    };
    if id("-u")?.is_none() {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SQUATTER,
            ])
            .status()?;
        // 9: created meanwhile by a parallel run.
        anyhow::ensure!(
            status.success() || status.code() == Some(9),
            "useradd failed"
        );
    }
    Ok((
        id("-u")?.ok_or_else(|| anyhow::anyhow!("no uid"))?,
        id("-g")?.ok_or_else(|| anyhow::anyhow!("no gid"))?,
    ))
}

/// Starts the fake server as the squatter at `socket`, logging to `log`; waits for it.
async fn fake_server(
    uid: u32,
    gid: u32,
    socket: &Path,
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "/usr/bin/python3", "-c", FAKE_SERVER])
        .arg(socket)
        .arg(log)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let line = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await??;
    anyhow::ensure!(line.as_deref() == Some("ready"), "fake server: {line:?}");
    Ok(child)
}

/// `agentd --socket SOCKET ARGS` as root without a terminal.
async fn cli_at(socket: &Path, args: &[&str]) -> anyhow::Result<CliOutput> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new(bin("agentd"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await??;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The CLI (status, requests) and the shim (a tool call) refuse `socket` with `expected`
/// in their message.
async fn both_refuse(socket: &Path, expected: &str, log_dir: &Path) -> anyhow::Result<()> {
    for args in [&["status"][..], &["requests"]] {
        let out = cli_at(socket, args).await?;
        assert_ne!(out.code, 0, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(expected) && out.stderr.contains(&socket.display().to_string()),
            "{args:?}: {}",
            out.stderr
        );
    }
    let shim = McpSession::start_at(socket, log_dir.join("shim.log")).await?;
    let listed = shim.call("list_resources", serde_json::json!({})).await?;
    assert!(listed.is_error, "{}", listed.raw);
    assert!(listed.raw.contains(expected), "{}", listed.raw);
    shim.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_shim_refuse_a_socket_another_user_created_first() -> anyhow::Result<()> {
    if agentd_proto::socket::current_uid() != 0 {
        eprintln!("SKIPPED: needs root to create and run as another OS user");
        return Ok(());
    }
    let (uid, gid) = squatter()?;
    let base = tempfile::tempdir()?;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))?;
    let log = base.path().join("received.log");
    std::fs::write(&log, "")?;
    std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;

    // 1. The squatter made the socket's directory (as in a shared /tmp).
    let squat_dir = base.path().join("agentd-0");
    std::fs::create_dir(&squat_dir)?;
    std::os::unix::fs::chown(&squat_dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(&squat_dir, std::fs::Permissions::from_mode(0o755))?;
    let squat_socket = squat_dir.join("agentd.sock");
    let server = fake_server(uid, gid, &squat_socket, &log).await?;
    both_refuse(
        &squat_socket,
        &format!("the socket's directory belongs to uid {uid}"),
        base.path(),
    )
    .await?;
    // The default path, with no XDG_RUNTIME_DIR and no /run/user/0: the temp-dir
    // fallback is this squatted directory, and it is refused the same way.
    if !Path::new("/run/user/0").exists() {
        let out = tokio::process::Command::new(bin("agentd"))
            .arg("status")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("AGENTD_SOCKET")
            .env_remove("AGENTD_PROFILE")
            .env("TMPDIR", base.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("belongs to uid {uid}"))
                && stderr.contains(&squat_socket.display().to_string()),
            "{stderr}"
        );
    }

    // 2. A root-owned directory, but the socket in it is served by the squatter's process
    //    (bound elsewhere, then moved in).
    let honest_dir = base.path().join("honest");
    std::fs::create_dir(&honest_dir)?;
    std::fs::set_permissions(&honest_dir, std::fs::Permissions::from_mode(0o755))?;
    let moved: PathBuf = honest_dir.join("agentd.sock");
    std::fs::rename(&squat_socket, &moved)?;
    both_refuse(
        &moved,
        &format!("the process serving it belongs to uid {uid}"),
        base.path(),
    )
    .await?;

    // 3. A directory anyone may write to (no sticky bit): refused before connecting.
    std::fs::set_permissions(&honest_dir, std::fs::Permissions::from_mode(0o777))?;
    let out = cli_at(&moved, &["status"]).await?;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("writable by other users (mode 777)"),
        "{}",
        out.stderr
    );

    // Nothing reached the fake server: every connection it saw carried 0 bytes.
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while std::fs::read_to_string(&log)?.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(server);
    let received = std::fs::read_to_string(&log)?;
    assert!(
        received.lines().all(|l| l == "0"),
        "the squatter received bytes: {received:?}"
    );
    assert!(!received.is_empty(), "the server check needs a connection");
    Ok(())
}
