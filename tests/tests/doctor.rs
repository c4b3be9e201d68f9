//! `agentd doctor` and the user-mode note of `agentd status`, against real files, a real
//! unprivileged OS user and a real user-mode daemon.
//!
//! The system layout is built in a temporary root (`agentd doctor --root DIR`) and `doctor`
//! runs as an unprivileged user (`setpriv`), so permissions are what the kernel enforces.
//! Tests that need root (to create the user) skip with a message when not root.

#![cfg(target_os = "linux")]

use agentd_tests::{bin, DaemonProcess, STEP_TIMEOUT};
use anyhow::Context as _;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The unprivileged user `doctor` runs as.
const TEST_USER: &str = "agentd-doctor";

fn is_root() -> bool {
    // SAFETY-free wrapper in the proto crate.
    agentd_proto::socket::current_uid() == 0
}

/// Creates [`TEST_USER`] when missing; returns (uid, gid).
fn test_user() -> anyhow::Result<(u32, u32)> {
    let lookup = || -> anyhow::Result<Option<(u32, u32)>> {
        let out = std::process::Command::new("id").arg(TEST_USER).output()?;
        if !out.status.success() {
            return Ok(None);
        }
        let field = |flag: &str| -> anyhow::Result<u32> {
            let o = std::process::Command::new("id")
                .args([flag, TEST_USER])
                .output()?;
            Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
        };
        Ok(Some((field("-u")?, field("-g")?)))
    };
    if let Some(ids) = lookup()? {
        return Ok(ids);
    }
    // Another test may create it at the same moment; look again either way.
    let _ = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .status();
    lookup()?.context("useradd agentd-doctor failed")
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// A fake system layout under a temporary root, traversable by everyone, with the modes
/// the .deb sets (owner root; /etc/agentd 0755 here since the test has no `agentd` group).
struct Layout {
    root: tempfile::TempDir,
}

impl Layout {
    fn new() -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("agentd-doctor-")
            .tempdir()?;
        chmod(root.path(), 0o755)?;
        let p = root.path();
        for (dir, mode) in [
            ("etc", 0o755),
            ("etc/agentd", 0o755),
            ("var", 0o755),
            ("var/lib", 0o755),
            ("var/lib/agentd", 0o700),
            ("var/lib/agentd/secrets", 0o700),
            ("run", 0o755),
            ("run/agentd", 0o755),
            ("home", 0o755),
        ] {
            std::fs::create_dir(p.join(dir))?;
            chmod(&p.join(dir), mode)?;
        }
        std::fs::write(
            p.join("etc/agentd/config.toml"),
            "[daemon]\nmode = \"system\"\n",
        )?;
        chmod(&p.join("etc/agentd/config.toml"), 0o640)?;
        std::fs::write(
            p.join("var/lib/agentd/secrets/app-db.ro"),
            "not-a-real-secret",
        )?;
        chmod(&p.join("var/lib/agentd/secrets/app-db.ro"), 0o600)?;
        Ok(Self { root })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
}

/// Runs `agentd doctor --json --root ROOT` as [`TEST_USER`] with a clean environment; the
/// user socket is placed in a directory that is not world-writable and no user config
/// exists, so only the layout decides the path checks.
async fn doctor_as_user(layout: &Layout, uid: u32, gid: u32) -> anyhow::Result<(i32, Value)> {
    doctor_as_user_with(layout, uid, gid, &layout.path("home/config.toml")).await
}

/// [`doctor_as_user`] with `AGENTD_CONFIG=config`.
async fn doctor_as_user_with(
    layout: &Layout,
    uid: u32,
    gid: u32,
    config: &Path,
) -> anyhow::Result<(i32, Value)> {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg("--")
        .arg(bin("agentd"))
        .args(["doctor", "--json", "--root"])
        .arg(layout.root.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", layout.path("home"))
        .env("AGENTD_SOCKET", layout.path("home/agentd/agentd.sock"))
        .env("AGENTD_CONFIG", config)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "doctor output is not JSON: {stdout:?} / {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), json))
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    static MISSING: Value = Value::Null;
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id))
        .unwrap_or(&MISSING)
}

fn exposed_paths(report: &Value, id: &str) -> Vec<String> {
    let c = check(report, id);
    assert_eq!(c["status"], "exposed", "{id}: {c:#}");
    assert!(
        c["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{id} has a fix: {c:#}"
    );
    c["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn doctor_sees_a_writable_config_and_a_readable_store_as_a_client_user() {
    if !is_root() {
        eprintln!("skipped: needs root to create the test user");
        return;
    }
    let (uid, gid) = test_user().unwrap();
    let layout = Layout::new().unwrap();

    // As the package lays it out: nothing to see for a client.
    let (code, report) = doctor_as_user(&layout, uid, gid).await.unwrap();
    assert_eq!(report["user"]["uid"], uid);
    assert_eq!(report["mode"], "none", "{report:#}");
    for d in report["daemons"].as_array().unwrap() {
        assert_eq!(d["state"], "down", "{d:#}");
    }
    for id in [
        "user_mode_daemon",
        "keychain_secrets",
        "store_readable",
        "config_writable",
        "daemon_dirs_writable",
        "socket_fallback_dir",
    ] {
        assert_eq!(check(&report, id)["status"], "ok", "{id}: {report:#}");
    }
    // Terminal injection follows the kernel's sysctl (absent before Linux 6.2: exposed).
    let tiocsti = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").ok();
    let want = if tiocsti.as_deref().map(str::trim) == Some("0") {
        "ok"
    } else {
        "exposed"
    };
    assert_eq!(
        check(&report, "terminal_injection")["status"],
        want,
        "{report:#}"
    );
    // Exit code: 1 exactly when something is exposed (ptrace_scope depends on the kernel).
    let exposures = report["exposures"].as_u64().unwrap();
    assert_eq!(code, i32::from(exposures > 0), "{report:#}");

    // Break the layout the ways an admin might.
    let config = layout.path("etc/agentd/config.toml");
    chmod(&config, 0o666).unwrap();
    chmod(&layout.path("var/lib/agentd"), 0o755).unwrap();
    chmod(&layout.path("var/lib/agentd/secrets"), 0o755).unwrap();
    let secret = layout.path("var/lib/agentd/secrets/app-db.ro");
    chmod(&secret, 0o644).unwrap();
    chmod(&layout.path("run/agentd"), 0o777).unwrap();

    let (code, report) = doctor_as_user(&layout, uid, gid).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        exposed_paths(&report, "config_writable"),
        vec![config.display().to_string()]
    );
    assert_eq!(
        exposed_paths(&report, "store_readable"),
        vec![secret.display().to_string()]
    );
    assert_eq!(
        exposed_paths(&report, "daemon_dirs_writable"),
        vec![layout.path("run/agentd").display().to_string()]
    );
    assert!(report["exposures"].as_u64().unwrap() >= 3);

    // A CLI whose config in force is the system config (as a system-mode client's is):
    // the file is reported once, and no keychain entries are claimed for it.
    let (_, report) = doctor_as_user_with(&layout, uid, gid, &config)
        .await
        .unwrap();
    assert_eq!(
        exposed_paths(&report, "config_writable"),
        vec![config.display().to_string()]
    );
    assert_eq!(
        check(&report, "keychain_secrets")["status"],
        "ok",
        "{report:#}"
    );
    // The report names files, never their contents.
    assert!(!report.to_string().contains("not-a-real-secret"));
}

#[tokio::test]
async fn doctor_reports_a_sudoers_global_timestamp() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let layout = Layout::new().unwrap();
    let sudoers = layout.path("etc/sudoers");
    std::fs::write(
        &sudoers,
        "Defaults env_reset\n# Defaults timestamp_type=global\n",
    )
    .unwrap();
    std::fs::create_dir(layout.path("etc/sudoers.d")).unwrap();
    let run = || async {
        let out = tokio::process::Command::new(bin("agentd"))
            .args(["doctor", "--json", "--root"])
            .arg(layout.root.path())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(check(&run().await, "sudo_global_timestamp")["status"], "ok");
    let dropin = layout.path("etc/sudoers.d/agents");
    std::fs::write(&dropin, "Defaults timestamp_type = global\n").unwrap();
    assert_eq!(
        exposed_paths(&run().await, "sudo_global_timestamp"),
        vec![dropin.display().to_string()]
    );
}

#[tokio::test]
async fn doctor_and_status_say_what_a_user_mode_daemon_does_not_protect() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
data_dir = "{}"
notify = false

[resources.app-db]
kind = "postgres"
host = "127.0.0.1"
database = "app"
tls = "require"

[resources.app-db.permissions.read_only]
username = "agent_ro"
policy = "approval"
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let socket = dir.path().join("run").join("agentd.sock");
    let daemon = DaemonProcess::start_with(&config, &socket).await.unwrap();

    let run = |args: &'static [&'static str]| {
        let (config, socket) = (config.clone(), socket.clone());
        async move {
            let out = tokio::process::Command::new(bin("agentd"))
                .arg("--config")
                .arg(&config)
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };

    let (code, out) = run(&["doctor", "--json"]).await;
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "user", "{report:#}");
    let user = report["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mode"] == "user")
        .unwrap();
    assert_eq!(user["state"], "up");
    assert_eq!(user["pid"], daemon.pid);
    assert_eq!(user["uid"], agentd_proto::socket::current_uid());
    assert_eq!(
        exposed_paths(&report, "user_mode_daemon"),
        vec![socket.display().to_string()]
    );
    assert_eq!(
        exposed_paths(&report, "keychain_secrets"),
        vec!["app-db/read_only".to_owned()]
    );
    assert!(exposed_paths(&report, "config_writable").contains(&config.display().to_string()));
    let note = report["user_mode_note"].as_str().unwrap();
    assert!(
        note.contains("does not hold against an agent with a shell"),
        "{note}"
    );
    assert!(
        note.contains("sudo systemctl enable --now agentd"),
        "{note}"
    );

    let (code, text) = run(&["doctor"]).await;
    assert_eq!(code, 1);
    assert!(text.contains("mode: user"), "{text}");
    assert!(text.contains("[exposed] user_mode_daemon"), "{text}");
    assert!(text.contains("fix: move to system mode"), "{text}");

    let (code, out) = run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["mode"], "user");
    assert!(status["user_mode_note"]
        .as_str()
        .unwrap()
        .contains("does not hold against an agent with a shell"));
    let (code, text) = run(&["status"]).await;
    assert_eq!(code, 0);
    assert!(text.contains("mode: user"), "{text}");
    assert!(text.contains("note: user mode does not hold"), "{text}");

    daemon.stop().await.unwrap();
}
