//! What the packages ship, checked with the real tools: completions and man pages generated
//! by the real `agentd` binary (rendered by `man -l`), the systemd unit's exposure score
//! from `systemd-analyze security --offline=true`, and the maintainer scripts' syntax. The
//! full install (`dpkg -i`, the installed daemon) is `packaging/deb/ci-install.sh`.

#![cfg(target_os = "linux")]

use agentd_tests::{bin, STEP_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` (stdin from /dev/null, at most [`STEP_TIMEOUT`]): success, stdout, stderr.
async fn run(cmd: &mut tokio::process::Command) -> (bool, String, String) {
    match tokio::time::timeout(STEP_TIMEOUT, cmd.stdin(Stdio::null()).output()).await {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => (false, String::new(), format!("cannot run: {e}")),
        Err(_) => (false, String::new(), "timed out".to_owned()),
    }
}

#[tokio::test]
async fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) =
            run(tokio::process::Command::new(bin("agentd")).args(["completions", shell])).await;
        assert!(ok, "{shell}: {err}");
        assert!(out.len() > 1000, "{shell}: {} bytes", out.len());
        for sub in ["doctor", "approve", "status"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    if have("bash") {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agentd.bash");
        let (_, out, _) =
            run(tokio::process::Command::new(bin("agentd")).args(["completions", "bash"])).await;
        std::fs::write(&file, out).unwrap();
        let (ok, _, err) = run(tokio::process::Command::new("bash").arg("-n").arg(&file)).await;
        assert!(ok, "bash -n: {err}");
    }
}

#[tokio::test]
async fn man_pages_are_written_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(tokio::process::Command::new(bin("agentd"))
        .args(["man", "--out"])
        .arg(dir.path()))
    .await;
    assert!(ok, "{err}");
    let listed: Vec<&str> = out.lines().collect();
    assert!(listed.len() > 10, "{out}");
    for page in ["agentd.1", "agentd-doctor.1", "agentd-completions.1"] {
        let path = dir.path().join(page);
        assert!(listed.contains(&path.to_str().unwrap()), "{page} in {out}");
        assert!(std::fs::metadata(&path).unwrap().len() > 200, "{page}");
    }
    if !have("man") {
        eprintln!("man not installed: rendering not checked");
        return;
    }
    let (ok, text, err) = run(tokio::process::Command::new("man")
        .arg("-l")
        .arg(dir.path().join("agentd-doctor.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"))
    .await;
    assert!(ok, "man -l: {err}");
    assert!(text.contains("agentd-doctor"), "{text}");
    assert!(text.contains("--json"), "{text}");
}

#[tokio::test]
async fn the_system_unit_scores_ok_or_better() {
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze not installed: unit not scored");
        return;
    }
    let unit = repo().join("packaging/systemd/agentd.service");
    let (_, out, err) = run(tokio::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit))
    .await;
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in {out} / {err}"));
    // "→ Overall exposure level for agentd.service: 1.6 OK 🙂"
    let score: f64 = line
        .rsplit(": ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{line}");
    assert!(score <= 2.0, "exposure {score} is worse than OK: {out}");
    for directive in [
        "User=agentd",
        "ExecStart=/usr/bin/agentd daemon --system",
        "CapabilityBoundingSet=\n",
        "LimitMEMLOCK=infinity",
        "UMask=0077",
    ] {
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(text.contains(directive), "unit lacks {directive:?}");
    }
}

#[tokio::test]
async fn maintainer_scripts_parse() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo().join("packaging/deb").join(script);
        let (ok, _, err) = run(tokio::process::Command::new("sh").arg("-n").arg(&path)).await;
        assert!(ok, "{script}: {err}");
    }
    for script in ["build.sh", "ci-install.sh"] {
        let path = repo().join("packaging/deb").join(script);
        let (ok, _, err) = run(tokio::process::Command::new("bash").arg("-n").arg(&path)).await;
        assert!(ok, "{script}: {err}");
    }
}

/// A reader that has gone (`agentd completions bash | head -1`) ends the command quietly
/// with exit status 0: no panic, no backtrace on stderr. The pipe's read end is closed
/// before the command starts, so its first write fails with EPIPE.
#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly() {
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"][..],
        &["config", "check", "--help"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio::process::Command::new(bin("agentd"))
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
