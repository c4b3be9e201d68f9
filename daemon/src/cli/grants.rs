//! `agentd status`, `agentd request`, `agentd revoke`, `agentd release`.
//!
//! Client-sent text (agent type, client name, justification) is shown through
//! [`agentd_proto::text::terminal_safe`] and labelled "claimed"; the requester's OS
//! identity comes from the daemon. `status` never carries a token.

use super::{call, ReleaseArgs, RequestArgs, RevokeArgs};
use agentd_proto::text::{terminal_safe, who_asked};
use agentd_proto::{
    AccessRequestSpec, AgentInfo, Client, ClientError, Request, Response, RevokeTarget,
};
use anyhow::bail;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use std::path::Path;

/// `agentd status [--json]`. Exits non-zero when the daemon is down (and says so).
pub async fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let response = match Client::connect(socket).await {
        Ok(mut c) => c.call(Request::Status).await?,
        // Not our daemon (a squatted socket): say so, never "not running".
        Err(e @ (ClientError::NotOurDaemon { .. } | ClientError::OpenDirectory { .. })) => {
            return Err(e.into())
        }
        Err(_) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"daemon": "down", "socket": socket})
                );
            } else {
                outln!("agentd daemon: not running (socket {})", socket.display());
            }
            bail!("daemon not running; start it with `agentd daemon`");
        }
    };
    let status = match response {
        Response::Status(status) => status,
        Response::Error { code, message } => bail!("{message} ({code:?})"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let mode = super::doctor::daemon_mode(status.pid, socket);
    let note = (mode == "user").then(|| {
        format!(
            "{}; {}",
            super::doctor::USER_MODE_WARNING,
            super::doctor::MOVE_TO_SYSTEM
        )
    });
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["daemon"] = "up".into();
        value["socket"] = socket.display().to_string().into();
        value["mode"] = mode.into();
        if let Some(note) = &note {
            value["user_mode_note"] = note.clone().into();
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    outln!(
        "agentd daemon: up (pid {}, version {}, uptime {}s)\nmode: {mode}\nsocket: {}\nconfig: {}",
        status.pid,
        status.daemon_version,
        status.uptime_seconds,
        socket.display(),
        status.config_path
    );
    if let Some(note) = &note {
        outln!("note: {note} (`agentd doctor` lists what is exposed)");
    }
    if status.grants.is_empty() {
        outln!("\nno active grants");
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "grant",
            "resource",
            "permission",
            "requester (OS) / agent (claimed)",
            "remaining",
            "listener",
            "connections",
        ]);
        for g in &status.grants {
            table.add_row([
                g.id.clone(),
                terminal_safe(&g.resource, 100),
                terminal_safe(&g.permission, 100),
                who_asked(&g.agent, g.requester.as_ref()),
                humantime::format_duration(std::time::Duration::from_secs(g.remaining_seconds))
                    .to_string(),
                g.listener.clone(),
                g.connections.to_string(),
            ]);
        }
        outln!("\n{table}");
    }
    for t in &status.tampered {
        outln!(
            "\nWARNING: {}/{}: the stored login no longer authenticates (found after grant {}: {}). New grants on it are refused. Set the secret again with `agentd secret set {} {}` (and reset the role's password on the server if it was changed).",
            t.resource, t.permission, t.grant_id, t.error, t.resource, t.permission
        );
    }
    if !status.pending_requests.is_empty() {
        outln!("\npending requests:");
        for r in &status.pending_requests {
            outln!(
                "  {} {}/{} by {}: {}",
                r.id,
                terminal_safe(&r.resource, 100),
                terminal_safe(&r.permission, 100),
                who_asked(&r.agent, r.requester.as_ref()),
                terminal_safe(&r.justification, 200)
            );
        }
    }
    Ok(())
}

/// `agentd request RESOURCE --permission P [--ttl D] [--json]`.
pub async fn request(socket: &Path, args: &RequestArgs) -> anyhow::Result<()> {
    let spec = AccessRequestSpec {
        resource: args.resource.clone(),
        permission: args.permission.clone(),
        duration_seconds: args.ttl.map(|d| d.as_secs().max(1)),
        justification: args.justification.clone(),
        agent: AgentInfo {
            agent_type: "cli".to_owned(),
            ..Default::default()
        },
    };
    let response = call(socket, Request::RequestAccess(spec)).await?;
    let Response::AccessRequest(view) = response else {
        bail!("unexpected reply from the daemon: {response:?}")
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    outln!("request {}: {}", view.id, view.state.as_str());
    if let Some(message) = &view.message {
        outln!("{message}");
    }
    if let (Some(grant), Some(handle)) = (&view.grant, &view.handle) {
        let clamped = if view.clamped {
            " (clamped to the permission's max_ttl)"
        } else {
            ""
        };
        outln!("grant {} for {}s{clamped}", grant.id, view.duration_seconds);
        outln!("\npsql: {}", handle.psql);
        outln!("env (for any libpq tool or driver):");
        for (k, v) in &handle.env {
            outln!("  export {k}={v}");
        }
        outln!(
            "DSN (for drivers that need a URL; keep it off command lines): {}",
            handle.dsn
        );
    }
    Ok(())
}

/// `agentd revoke GRANT_ID | --resource R | --agent A | --all [--json]`.
pub async fn revoke(socket: &Path, args: &RevokeArgs) -> anyhow::Result<()> {
    let target = if args.all {
        RevokeTarget::All
    } else if let Some(resource) = &args.resource {
        RevokeTarget::Resource {
            resource: resource.clone(),
        }
    } else if let Some(agent_type) = &args.agent {
        RevokeTarget::Agent {
            agent_type: agent_type.clone(),
        }
    } else if let Some(id) = &args.grant_id {
        RevokeTarget::Grant {
            grant_id: id.clone(),
        }
    } else {
        bail!("name a grant id, or pass --resource, --agent or --all");
    };
    let response = call(socket, Request::Revoke { target }).await?;
    print_ended(response, args.json, "revoked", "no active grants to revoke")
}

/// `agentd release GRANT_ID [--json]`.
pub async fn release(socket: &Path, args: &ReleaseArgs) -> anyhow::Result<()> {
    let response = call(
        socket,
        Request::Release {
            grant_id: args.grant_id.clone(),
        },
    )
    .await?;
    print_ended(response, args.json, "released", "nothing to release")
}

fn print_ended(response: Response, json: bool, verb: &str, none: &str) -> anyhow::Result<()> {
    let Response::Revoked { grant_ids } = response else {
        bail!("unexpected reply from the daemon: {response:?}")
    };
    if json {
        outln!("{}", serde_json::json!({ verb: grant_ids }));
    } else if grant_ids.is_empty() {
        outln!("{none}");
    } else {
        for id in &grant_ids {
            outln!("{verb} {id}");
        }
    }
    Ok(())
}
