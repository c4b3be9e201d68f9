//! Optional desktop notification when a request needs approval. Best effort: with no
//! desktop session (no `DISPLAY` / `WAYLAND_DISPLAY` on Linux) or no notifier program,
//! nothing happens and nothing fails.

use agentd_proto::AccessRequestSpec;
use tracing::debug;

/// Announces a pending request on the desktop (`notify-send` on Linux, `osascript` on
/// macOS), without waiting for the notifier. The agent's justification is passed as one
/// argument, never through a shell.
pub fn pending_request(request_id: &str, spec: &AccessRequestSpec) {
    let title = "agentd: access request";
    let body = format!(
        "{} asks for {}/{}: {}\nRun: {}",
        spec.agent.agent_type,
        spec.resource,
        spec.permission,
        truncate(&spec.justification, 200),
        super::lifecycle::approve_command(request_id)
    );
    let command = if cfg!(target_os = "macos") {
        let script = format!(
            "display notification {} with title {}",
            applescript_string(&body),
            applescript_string(title)
        );
        Some(("osascript", vec!["-e".to_owned(), script]))
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some(("notify-send", vec![title.to_owned(), body]))
    } else {
        None
    };
    let Some((program, args)) = command else {
        return;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(false)
        .spawn();
    match spawned {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => debug!(error = %e, program, "no desktop notification"),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn applescript_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
