//! The access-request lifecycle: `pending → approved | denied | expired | cancelled`.
//!
//! The policy ([`crate::policy::decide`]) answers `auto`, `approval` or `deny`. An `auto`
//! request becomes a grant at once; an `approval` one waits for a human (`agentd approve` /
//! `agentd deny`, which the control server accepts only with user presence) until the
//! daemon's `pending_timeout`. Every transition is written to the audit log (synced) before
//! the caller hears of it, and wakes long-pollers ([`Broker::await_request`]).

use super::views::view_request;
use super::{error, no_such_request, notify, Broker, RequestRecord, MIN_TTL};
use crate::audit::AuditEvent;
use crate::policy;
use crate::principal::{Owner, Principal};
use agentd_proto::{
    AccessRequestSpec, ErrorCode, GrantState, PolicyDecision, RequestState, Response,
    MAX_AWAIT_SECONDS,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::info;

impl Broker {
    /// Handles an access request: the policy decision, and for `auto` a grant with its
    /// listener. `caller` becomes the request's owner.
    pub async fn request_access(
        self: &Arc<Self>,
        spec: AccessRequestSpec,
        caller: &Principal,
    ) -> Response {
        let Some(owner) = caller.as_owner() else {
            return error(
                ErrorCode::BadRequest,
                "agentd cannot tell which process is asking, so it cannot give it a grant".into(),
            );
        };
        let config = self.config();
        let Some((_, permission)) = config.permission(&spec.resource, &spec.permission) else {
            return self.not_found(&spec.resource, &spec.permission);
        };
        if spec.justification.trim().is_empty() {
            return error(
                ErrorCode::BadRequest,
                "a justification is required: say what you will do with this access".into(),
            );
        }
        let requested = spec.duration_seconds.map(Duration::from_secs);
        let now_local = chrono::Local::now().naive_local();
        let who = policy::Requester {
            agent_type: &spec.agent.agent_type,
            user: Some(&caller.user),
        };
        let decision = match policy::decide(permission, &who, requested, now_local) {
            Ok(d) => d,
            Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
        };
        if let Some(refusal) = self.refuse_over_user_limit(&owner, decision.policy) {
            return refusal;
        }
        let now = SystemTime::now();
        let mut record = RequestRecord {
            id: super::ids::request_id(),
            spec,
            owner,
            state: RequestState::Pending,
            duration: decision.duration.max(MIN_TTL),
            clamped: decision.clamped,
            max_ttl: decision.max_ttl,
            created_at: now,
            pending_until: None,
            deciding: false,
            decided_by: None,
            message: None,
            grant_id: None,
        };
        let request_event = AuditEvent::Request {
            request_id: record.id.clone(),
            resource: record.spec.resource.clone(),
            permission: record.spec.permission.clone(),
            duration_seconds: record.duration.as_secs(),
            clamped: record.clamped,
            justification: record.spec.justification.clone(),
            agent: record.spec.agent.clone(),
            requester: Some(record.owner.requester()),
        };
        // An auto-approved request is recorded together with its decision and grant (one
        // fdatasync, before the handle exists); the others are recorded here.
        if decision.policy != PolicyDecision::Auto {
            if let Err(refusal) = self.audit_sync(&request_event) {
                return refusal;
            }
        }
        let by = match decision.rule {
            Some(i) => format!("policy rule {i}"),
            None => "policy".to_owned(),
        };
        let rule = decision.rule.map(|i| format!("rules[{i}]"));
        match decision.policy {
            PolicyDecision::Deny => {
                record.state = RequestState::Denied;
                record.message = Some(format!(
                    "policy denies {} on {}; do not retry this request, ask a human if the access is really needed",
                    record.spec.permission, record.spec.resource
                ));
                if let Err(refusal) = self.audit_sync(&AuditEvent::Decision {
                    request_id: record.id.clone(),
                    decision: "denied".to_owned(),
                    by: by.clone(),
                    reason: None,
                    rule,
                }) {
                    return refusal;
                }
                record.decided_by = Some(by);
            }
            PolicyDecision::Approval => {
                let pending_for = self.config().daemon.pending_timeout;
                record.pending_until = Some(now + pending_for);
                record.message = Some(format!(
                    "this access needs a human's approval; tell the human to run `{}` in a terminal, then wait with await_approval (the request expires in {})",
                    approve_command(&record.id),
                    humantime::format_duration(pending_for)
                ));
                self.schedule_pending_expiry(record.id.clone(), pending_for);
                if self.config().daemon.notify {
                    notify::pending_request(&record.id, &record.spec, &record.owner.requester());
                }
            }
            PolicyDecision::Auto => match self.open_grant(&record).await {
                Ok(grant) => {
                    let grant_id = grant.id.clone();
                    if let Err(refusal) =
                        self.activate_grant(grant, &record, &by, rule, Some(request_event))
                    {
                        return refusal;
                    }
                    record.state = RequestState::Approved;
                    record.decided_by = Some(by);
                    record.grant_id = Some(grant_id);
                }
                Err(message) => {
                    self.audit_best_effort(&request_event);
                    self.audit_best_effort(&AuditEvent::Decision {
                        request_id: record.id.clone(),
                        decision: "denied".to_owned(),
                        by: "agentd".to_owned(),
                        reason: Some(message.clone()),
                        rule: None,
                    });
                    return error(ErrorCode::Internal, message);
                }
            },
        }
        info!(request = %record.id, resource = %record.spec.resource, permission = %record.spec.permission,
              agent = %record.spec.agent.agent_type, state = ?record.state, "access request");
        let id = record.id.clone();
        let response = {
            let mut state = self.state();
            state.request_order.push(id.clone());
            state.requests.insert(id.clone(), record);
            let r = &state.requests[&id];
            Response::AccessRequest(Box::new(view_request(&state, r, true)))
        };
        self.persist();
        self.announce_change();
        response
    }

    /// The refusal for a request by `owner` that would take its OS user past
    /// `max_pending_per_user` (a request that waits for approval) or `max_grants_per_user`
    /// (an auto-approved one); `None` when within both. Checked on arrival: requests that
    /// arrive at the same instant may overshoot by the number in flight.
    fn refuse_over_user_limit(&self, owner: &Owner, policy: PolicyDecision) -> Option<Response> {
        let settings = &self.config().daemon;
        let state = self.state();
        let (count, limit, what, next) = match policy {
            PolicyDecision::Deny => return None,
            PolicyDecision::Approval => (
                state
                    .requests
                    .values()
                    .filter(|r| r.state == RequestState::Pending && r.owner.uid == owner.uid)
                    .count(),
                settings.max_pending_per_user,
                "pending requests",
                "wait for the human's decision on those (await_approval) or cancel one you no longer need, then ask again",
            ),
            PolicyDecision::Auto => (
                state
                    .grants
                    .values()
                    .filter(|g| g.state == GrantState::Active && g.owner.uid == owner.uid)
                    .count(),
                settings.max_grants_per_user,
                "active grants",
                "release grants you no longer use (release_access), then ask again",
            ),
        };
        (count >= limit).then(|| {
            info!(uid = owner.uid, count, limit, what, "request refused: per-user limit");
            error(
                ErrorCode::LimitReached,
                format!(
                    "OS user {} already has {count} {what}, the most this daemon allows ([daemon] max_{}_per_user = {limit}); {next}",
                    agentd_proto::text::terminal_safe(&owner.user, 64),
                    if policy == PolicyDecision::Auto { "grants" } else { "pending" },
                ),
            )
        })
    }

    /// A human approves a pending request (the control server checked user presence).
    /// `duration` overrides the requested one, capped by the deciding policy's max TTL.
    pub async fn approve(
        self: &Arc<Self>,
        request_id: &str,
        duration: Option<Duration>,
        caller: &Principal,
    ) -> Response {
        if let Err(refusal) = self.begin_decision(request_id) {
            return refusal;
        }
        let by = human(caller);
        let snapshot = {
            let mut state = self.state();
            let Some(r) = state.requests.get_mut(request_id) else {
                return no_such_request(request_id);
            };
            if let Some(d) = duration {
                let wanted = d.max(MIN_TTL);
                r.clamped = wanted > r.max_ttl;
                r.duration = wanted.min(r.max_ttl);
            }
            RequestRecord {
                id: r.id.clone(),
                spec: r.spec.clone(),
                owner: r.owner.clone(),
                state: r.state,
                duration: r.duration,
                clamped: r.clamped,
                max_ttl: r.max_ttl,
                created_at: r.created_at,
                pending_until: r.pending_until,
                deciding: true,
                decided_by: None,
                message: None,
                grant_id: None,
            }
        };
        let opened = self.open_grant(&snapshot).await;
        let activated = opened.and_then(|grant| {
            let grant_id = grant.id.clone();
            self.activate_grant(grant, &snapshot, &by, None, None)
                .map(|()| grant_id)
                .map_err(|r| match r {
                    Response::Error { message, .. } => message,
                    _ => "audit log unavailable".to_owned(),
                })
        });
        let response = {
            let mut state = self.state();
            let Some(r) = state.requests.get_mut(request_id) else {
                return no_such_request(request_id);
            };
            r.deciding = false;
            match activated {
                Ok(grant_id) => {
                    r.state = RequestState::Approved;
                    r.decided_by = Some(by);
                    r.message = None;
                    r.grant_id = Some(grant_id);
                    let r = &state.requests[request_id];
                    // The approver sees the decision, never the agent's token.
                    Response::AccessRequest(Box::new(view_request(&state, r, false)))
                }
                Err(message) => error(ErrorCode::Internal, message),
            }
        };
        info!(request = %request_id, "approved");
        self.persist();
        self.announce_change();
        response
    }

    /// A human denies a pending request (the control server checked user presence).
    pub fn deny(&self, request_id: &str, reason: Option<String>, caller: &Principal) -> Response {
        let by = human(caller);
        let message = format!(
            "denied by a human{}; do not retry this request",
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        self.decide_without_grant(request_id, RequestState::Denied, &by, reason, message)
    }

    /// The agent withdraws its own pending request; someone else's is answered like an
    /// unknown id.
    pub fn cancel(&self, request_id: &str, caller: &Principal) -> Response {
        if !self.owned_request(request_id, caller) {
            return no_such_request(request_id);
        }
        self.decide_without_grant(
            request_id,
            RequestState::Cancelled,
            &format!("owner {}", caller.describe()),
            None,
            "cancelled by the agent".to_owned(),
        )
    }

    /// Expires a pending request that nobody decided (timeout or shutdown).
    pub(super) fn expire_request(&self, request_id: &str, by: &str) {
        let _ = self.decide_without_grant(
            request_id,
            RequestState::Expired,
            by,
            None,
            "nobody approved this request in time; request again if still needed".to_owned(),
        );
    }

    /// Waits (at most `timeout`, capped at [`MAX_AWAIT_SECONDS`]) until the request leaves
    /// `pending`, then returns its view; on timeout the view still says `pending`.
    /// Only the request's owner may wait on it; for anyone else it does not exist.
    pub async fn await_request(
        &self,
        request_id: &str,
        timeout: Duration,
        caller: &Principal,
    ) -> Response {
        if !self.owned_request(request_id, caller) {
            return no_such_request(request_id);
        }
        let timeout = timeout.min(Duration::from_secs(MAX_AWAIT_SECONDS));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        loop {
            {
                let state = self.state();
                let Some(r) = state.requests.get(request_id) else {
                    return no_such_request(request_id);
                };
                if r.state != RequestState::Pending || tokio::time::Instant::now() >= deadline {
                    let mut view = view_request(&state, r, true);
                    if view.state == RequestState::Pending {
                        view.message = Some(format!(
                            "still pending: no human has decided yet. Remind the human to run `{}`, then call await_approval again",
                            approve_command(request_id)
                        ));
                    }
                    return Response::AccessRequest(Box::new(view));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return error(ErrorCode::Internal, "the daemon is shutting down".into());
                    }
                }
            }
        }
    }

    /// True when `request_id` exists and `caller` made it.
    fn owned_request(&self, request_id: &str, caller: &Principal) -> bool {
        self.state()
            .requests
            .get(request_id)
            .is_some_and(|r| caller.owns(&r.owner))
    }

    /// Marks a pending request as being decided, so a second decision (or the expiry timer)
    /// cannot race the grant being opened.
    fn begin_decision(&self, request_id: &str) -> Result<(), Response> {
        let mut state = self.state();
        let Some(r) = state.requests.get_mut(request_id) else {
            return Err(no_such_request(request_id));
        };
        if r.state != RequestState::Pending || r.deciding {
            return Err(already_decided(r));
        }
        r.deciding = true;
        Ok(())
    }

    /// Moves a pending request to `to` (denied, cancelled, expired) and records it.
    fn decide_without_grant(
        &self,
        request_id: &str,
        to: RequestState,
        by: &str,
        reason: Option<String>,
        message: String,
    ) -> Response {
        {
            let state = self.state();
            let Some(r) = state.requests.get(request_id) else {
                return no_such_request(request_id);
            };
            if r.state != RequestState::Pending || r.deciding {
                return already_decided(r);
            }
        }
        // Record first; a request whose decision could not be recorded stays pending.
        if let Err(refusal) = self.audit_sync(&AuditEvent::Decision {
            request_id: request_id.to_owned(),
            decision: to.as_str().to_owned(),
            by: by.to_owned(),
            reason,
            rule: None,
        }) {
            return refusal;
        }
        let response = {
            let mut state = self.state();
            let Some(r) = state.requests.get_mut(request_id) else {
                return no_such_request(request_id);
            };
            r.state = to;
            r.decided_by = Some(by.to_owned());
            r.message = Some(message);
            let r = &state.requests[request_id];
            Response::AccessRequest(Box::new(view_request(&state, r, false)))
        };
        info!(request = %request_id, state = ?to, %by, "request decided");
        self.persist();
        self.announce_change();
        response
    }

    fn schedule_pending_expiry(self: &Arc<Self>, request_id: String, after: Duration) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(broker) = broker.upgrade() {
                let pending = broker
                    .state()
                    .requests
                    .get(&request_id)
                    .is_some_and(|r| r.state == RequestState::Pending && !r.deciding);
                if pending {
                    broker.expire_request(&request_id, "timeout");
                }
            }
        });
    }

    fn not_found(&self, resource: &str, permission: &str) -> Response {
        let config = self.config();
        let message = match config.resources.get(resource) {
            None => format!(
                "no resource {resource:?}; known resources: {}",
                config
                    .resources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(r) => format!(
                "resource {resource} has no permission {permission:?}; its permissions: {}",
                r.permissions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        error(ErrorCode::NotFound, message)
    }
}

/// The command a human runs to approve `request_id`: `agentd approve ID`, with
/// `--profile NAME` when this daemon serves a named profile.
pub(super) fn approve_command(request_id: &str) -> String {
    match agentd_proto::profile::active().name() {
        Some(profile) => format!("agentd --profile {profile} approve {request_id}"),
        None => format!("agentd approve {request_id}"),
    }
}

/// `user NAME (uid U pid P) on TTY` for a human decision, every part as the daemon read it
/// from the OS (never what the client said about itself).
fn human(caller: &Principal) -> String {
    match &caller.tty {
        Some(tty) => format!("{} on {tty}", caller.describe()),
        None => format!("{} without a terminal", caller.describe()),
    }
}

fn already_decided(r: &RequestRecord) -> Response {
    let what = if r.deciding {
        "being decided right now".to_owned()
    } else {
        format!(
            "already {}{}",
            r.state.as_str(),
            r.decided_by
                .as_deref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default()
        )
    };
    error(ErrorCode::Conflict, format!("request {} is {what}", r.id))
}
