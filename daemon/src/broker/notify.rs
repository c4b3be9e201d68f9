//! Optional desktop notification when a request needs approval. Best effort: with no
//! desktop session (no `DISPLAY` / `WAYLAND_DISPLAY` on Linux) or no notifier program,
//! nothing happens and nothing fails.

use agentd_proto::text::{terminal_safe, who_asked};
use agentd_proto::{AccessRequestSpec, Requester};
use tracing::debug;

/// Announces a pending request on the desktop (`notify-send` on Linux, `osascript` on
/// macOS), without waiting for the notifier. The text is [`body`], passed as one
/// argument, never through a shell.
pub fn pending_request(request_id: &str, spec: &AccessRequestSpec, requester: &Requester) {
    let title = "agentd: access request";
    let body = body(request_id, spec, requester);
    let command = if cfg!(target_os = "macos") {
        let script = format!(
            "display notification {} with title {}",
            applescript_string(&body),
            applescript_string(title)
        );
        Some(("osascript", vec!["-e".to_owned(), script]))
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some(("notify-send", vec![title.to_owned(), markup_escaped(&body)]))
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

/// The notification text: the daemon's facts (resource, permission, requester's OS user)
/// on the first line, the agent's claims and text after, every client string through
/// [`terminal_safe`] (justification cut at 200 characters), then the command to run.
pub fn body(request_id: &str, spec: &AccessRequestSpec, requester: &Requester) -> String {
    format!(
        "{}/{} requested by OS user {}\n{}\n\"{}\"\nRun: {}",
        terminal_safe(&spec.resource, 100),
        terminal_safe(&spec.permission, 100),
        requester,
        who_asked(&spec.agent, None),
        terminal_safe(&spec.justification, 200),
        super::lifecycle::approve_command(request_id)
    )
}

/// `text` with `&`, `<` and `>` written as entities. Freedesktop notification servers
/// render a markup subset in the body (`<b>`, `<i>`, `<a href>`, `<img>`; the spec's
/// "body-markup" capability, which GNOME, KDE and dunst advertise), so an agent's
/// justification could otherwise restyle the facts or add a link to click.
fn markup_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn applescript_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_facts_first_and_no_raw_controls() {
        let spec = AccessRequestSpec {
            resource: "prod-db".into(),
            permission: "read_only".into(),
            duration_seconds: None,
            justification: "\x1b]52;c;ZXZpbA==\x07\u{202e}evil\u{200b}".into(),
            agent: agentd_proto::AgentInfo {
                agent_type: "cursor\r".into(),
                client_name: Some("\u{9b}2J".into()),
                pid: Some(7),
                uid: Some(1000),
            },
        };
        let requester = Requester {
            user: "alice".into(),
            uid: 1000,
            pid: 7,
        };
        let text = body("r_1", &spec, &requester);
        assert!(
            text.starts_with("prod-db/read_only requested by OS user alice (uid 1000) pid 7\n"),
            "{text}"
        );
        assert!(!text
            .split('\n')
            .any(|line| line.chars().any(agentd_proto::text::is_unsafe)));
        assert!(
            text.contains("\\x1b]52;c;ZXZpbA==\\x07\\u{202e}evil\\u{200b}"),
            "{text}"
        );
        assert!(text.contains("claimed agent cursor\\r"), "{text}");
    }

    #[test]
    fn markup_in_the_body_is_shown_not_rendered() {
        assert_eq!(
            markup_escaped("<a href=\"https://evil.example/\">ok</a> & <b>"),
            "&lt;a href=\"https://evil.example/\"&gt;ok&lt;/a&gt; &amp; &lt;b&gt;"
        );
    }
}
