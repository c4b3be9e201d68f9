//! `agentd requests`, `agentd approve`, `agentd deny`: the human side of the workflow.
//!
//! User presence: approve and deny confirm on the controlling terminal (`/dev/tty`), not on
//! stdin, so piping `yes` into the command does not work and a process without a terminal
//! (a command an agent runs through its shell tool) is refused with a message telling the
//! human what to run. The daemon checks the same on its side from the peer's pid (Linux).
//!
//! Approving asks for a fresh 4-digit code shown on the terminal, not "yes": a process that
//! shares the terminal can push keystrokes into its input (TIOCSTI, where the kernel allows
//! it) but cannot read what is displayed, so it cannot type the code blind (one guess in
//! 10,000, and a wrong answer declines). Denying asks for "yes": a typed denial only ever
//! refuses access.
//!
//! What the human reads is the daemon's truth, not text an agent shaped: every string a
//! client sent (justification, agent type, client name) goes through
//! [`agentd_proto::text::terminal_safe`], and the approval prompt shows the agent's text
//! first and the daemon's own facts (resource, permission, duration, the requester's OS
//! user, uid and pid) last, right above the question.

use super::{call, ApproveArgs, DenyArgs, RequestsArgs};
use agentd_proto::text::{terminal_safe, who_asked, MAX_JUSTIFICATION_CHARS};
use agentd_proto::{AccessRequestView, Presence, Request, RequestState, Response};
use anyhow::{bail, Context as _};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest justification shown in a table cell, in characters (the prompt shows it whole).
const TABLE_TEXT_MAX_CHARS: usize = 200;
/// Longest resource or permission name shown (config names; bounded anyway).
const NAME_MAX_CHARS: usize = 100;

/// `agentd requests [--all] [--json]`.
pub async fn requests(socket: &Path, args: &RequestsArgs) -> anyhow::Result<()> {
    let response = call(socket, Request::ListRequests { all: args.all }).await?;
    let Response::Requests { requests } = response else {
        bail!("unexpected reply from the daemon: {response:?}")
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&requests)?);
        return Ok(());
    }
    if requests.is_empty() {
        outln!(
            "{}",
            if args.all {
                "no access requests"
            } else {
                "no pending access requests"
            }
        );
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "request",
        "state",
        "resource/permission",
        "duration",
        "requester (OS) / agent (claimed)",
        "justification (agent's text)",
    ]);
    for r in &requests {
        table.add_row([
            r.id.clone(),
            r.state.as_str().to_owned(),
            format!(
                "{}/{}",
                terminal_safe(&r.resource, NAME_MAX_CHARS),
                terminal_safe(&r.permission, NAME_MAX_CHARS)
            ),
            humantime::format_duration(Duration::from_secs(r.duration_seconds)).to_string(),
            who_asked(&r.agent, r.requester.as_ref()),
            terminal_safe(&r.justification, TABLE_TEXT_MAX_CHARS),
        ]);
    }
    outln!("{table}");
    if requests.iter().any(|r| r.state == RequestState::Pending) {
        outln!("\ndecide with: agentd approve ID [--ttl 30m] | agentd deny ID [--reason …]");
    }
    Ok(())
}

/// `agentd approve ID [--ttl D] [--json]`.
pub async fn approve(socket: &Path, args: &ApproveArgs) -> anyhow::Result<()> {
    let mut tty = Terminal::open(&args.request_id, "approve")?;
    let request = pending_request(socket, &args.request_id).await?;
    let duration = args
        .ttl
        .unwrap_or(Duration::from_secs(request.duration_seconds));
    tty.show(&describe(&request))?;
    let code = confirmation_code();
    let question = format!(
        "Approve {} for {}? Type {code} to approve (anything else declines): ",
        request.id,
        humantime::format_duration(duration)
    );
    if tty.answer(&question)? != code {
        bail!("not approved (nothing changed): the answer was not the code shown");
    }
    let view = call_for_request(
        socket,
        Request::Approve {
            request_id: args.request_id.clone(),
            duration_seconds: args.ttl.map(|d| d.as_secs().max(1)),
            presence: Presence::default(),
        },
    )
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    match &view.grant {
        Some(g) => {
            let clamped = if view.clamped {
                " (capped at the policy's max_ttl)"
            } else {
                ""
            };
            outln!(
                "approved {} → grant {} on {}/{} for {}{clamped}; the agent can connect now",
                view.id,
                g.id,
                g.resource,
                g.permission,
                humantime::format_duration(Duration::from_secs(view.duration_seconds))
            );
        }
        None => outln!("approved {}", view.id),
    }
    Ok(())
}

/// `agentd deny ID [--reason R] [--json]`.
pub async fn deny(socket: &Path, args: &DenyArgs) -> anyhow::Result<()> {
    let mut tty = Terminal::open(&args.request_id, "deny")?;
    let request = pending_request(socket, &args.request_id).await?;
    tty.show(&describe(&request))?;
    if !tty.confirm(&format!("Deny {}? Type \"yes\" to deny: ", request.id))? {
        bail!("not denied (nothing changed)");
    }
    let view = call_for_request(
        socket,
        Request::Deny {
            request_id: args.request_id.clone(),
            reason: args.reason.clone(),
            presence: Presence::default(),
        },
    )
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        outln!("denied {}", view.id);
    }
    Ok(())
}

/// Sends a request answered with an access-request view.
async fn call_for_request(socket: &Path, request: Request) -> anyhow::Result<AccessRequestView> {
    match call(socket, request).await? {
        Response::AccessRequest(view) => Ok(*view),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// The request to decide, from the admin's list (`get_request` serves only the requesting
/// process, and the approver is another one); never carries a handle.
async fn pending_request(socket: &Path, request_id: &str) -> anyhow::Result<AccessRequestView> {
    let response = call(socket, Request::ListRequests { all: true }).await?;
    let Response::Requests { requests } = response else {
        bail!("unexpected reply from the daemon: {response:?}")
    };
    let Some(view) = requests.into_iter().find(|r| r.id == request_id) else {
        bail!(
            "no access request {}; see pending ones with `agentd requests`",
            terminal_safe(request_id, 100)
        );
    };
    if view.state != RequestState::Pending {
        bail!(
            "request {} is already {}{}",
            view.id,
            view.state.as_str(),
            view.decided_by
                .as_deref()
                .map(|b| format!(" (by {})", terminal_safe(b, 200)))
                .unwrap_or_default()
        );
    }
    Ok(view)
}

/// The approval prompt's body: the agent's claims first, then a rule, then the daemon's
/// own facts, so the lines right above the question are never agent-shaped.
fn describe(r: &AccessRequestView) -> String {
    let expires = r
        .pending_until
        .and_then(|t| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(format!(
                " (expires undecided in {})",
                humantime::format_duration(Duration::from_secs(t.saturating_sub(now)))
            ))
        })
        .unwrap_or_default();
    let requester = match &r.requester {
        Some(q) => format!(
            "OS user {} (uid {}), pid {}",
            terminal_safe(&q.user, 64),
            q.uid,
            q.pid
        ),
        None => "unknown (older daemon)".to_owned(),
    };
    let client = r
        .agent
        .client_name
        .as_deref()
        .map(|c| terminal_safe(c, agentd_proto::text::MAX_CLIENT_NAME_CHARS))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "access request {}{expires}\n\
         \n\
         From the agent (its own words, unchecked):\n\
         \x20 justification:   {}\n\
         \x20 agent (claimed): {}\n\
         \x20 client (claimed): {}\n\
         \n\
         Checked by agentd:\n\
         \x20 requester:  {requester}\n\
         \x20 resource:   {}\n\
         \x20 permission: {}\n\
         \x20 duration:   {}{}\n",
        r.id,
        terminal_safe(&r.justification, MAX_JUSTIFICATION_CHARS),
        terminal_safe(
            &r.agent.agent_type,
            agentd_proto::text::MAX_AGENT_TYPE_CHARS
        ),
        client,
        terminal_safe(&r.resource, NAME_MAX_CHARS),
        terminal_safe(&r.permission, NAME_MAX_CHARS),
        humantime::format_duration(Duration::from_secs(r.duration_seconds)),
        if r.clamped {
            " (clamped to max_ttl)"
        } else {
            ""
        },
    )
}

/// The controlling terminal, where the human confirms.
struct Terminal {
    reader: BufReader<std::fs::File>,
    writer: std::fs::File,
}

impl Terminal {
    /// Opens `/dev/tty`; without a controlling terminal, explains who must run what.
    fn open(request_id: &str, verb: &str) -> anyhow::Result<Self> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tty_path());
        let file = match opened {
            Ok(f) => f,
            Err(_) => bail!(
                "`agentd {verb}` needs a human at an interactive terminal (user presence), and this \
                 process has no controlling terminal. If you are an AI agent: you cannot {verb} \
                 access yourself; ask the human to run `agentd {verb} {request_id}` in their own terminal."
            ),
        };
        let writer = file.try_clone().context("cannot use the terminal")?;
        Ok(Self {
            reader: BufReader::new(file),
            writer,
        })
    }

    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        self.writer.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Asks `question`; true only for an answer of `yes` or `y`.
    fn confirm(&mut self, question: &str) -> anyhow::Result<bool> {
        Ok(matches!(
            self.answer(question)?.to_ascii_lowercase().as_str(),
            "yes" | "y"
        ))
    }

    /// Asks `question` and returns the line typed, trimmed.
    fn answer(&mut self, question: &str) -> anyhow::Result<String> {
        self.writer.write_all(question.as_bytes())?;
        self.writer.flush()?;
        let mut answer = String::new();
        self.reader
            .read_line(&mut answer)
            .context("cannot read the answer from the terminal")?;
        Ok(answer.trim().to_owned())
    }
}

/// A fresh 4-digit code (`0000`–`9999`, uniform, from the OS-seeded thread RNG) the human
/// types to approve; see the module docs for why.
fn confirmation_code() -> String {
    use rand::Rng as _;
    format!("{:04}", rand::thread_rng().gen_range(0..10_000u32))
}

fn tty_path() -> &'static str {
    if cfg!(windows) {
        "CONIN$"
    } else {
        "/dev/tty"
    }
}
