//! Grants: opening one (secret, token verifier, listeners), recording it, and ending it by
//! expiry, revoke or release — which cuts its live sessions.

use super::{error, ids, Broker, GrantRecord, RequestRecord};
use crate::audit::AuditEvent;
use crate::config::http::HttpAuth;
use crate::config::{Permission, Resource, ResourceKind};
use crate::listener::http;
use crate::listener::postgres::{self as pg, auth::ScramVerifier, upstream, GrantListener};
use crate::listener::Listener;
use crate::principal::Principal;
use agentd_proto::{ErrorCode, GrantState, Response, RevokeTarget};
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

impl Broker {
    /// Fetches the secret, derives the token's verifier and opens the listeners for
    /// `request`. The grant is not yet visible or recorded: [`Broker::activate_grant`] does
    /// that. Returns an agent-safe error message on failure.
    pub(super) async fn open_grant(&self, request: &RequestRecord) -> Result<GrantRecord, String> {
        let config = self.config();
        let Some((resource, permission)) =
            config.permission(&request.spec.resource, &request.spec.permission)
        else {
            return Err(format!(
                "{}/{} is no longer configured",
                request.spec.resource, request.spec.permission
            ));
        };
        let grant_id = ids::grant_id();
        let token = ids::token();
        let now = SystemTime::now();
        let expires_at = now + request.duration;
        if resource.kind == ResourceKind::Http {
            return self
                .open_http_grant(request, resource, permission, grant_id, token, now)
                .await;
        }
        let tls = upstream::tls_for(resource)
            .map_err(|e| format!("resource {} TLS settings: {e}", request.spec.resource))?;
        let verifier = {
            let token = token.clone();
            tokio::task::spawn_blocking(move || ScramVerifier::derive(&token))
                .await
                .map_err(|e| format!("internal error preparing the grant: {e}"))?
        };
        let (login, role, renewable) = self
            .obtain_login(request, resource, permission, &grant_id, expires_at)
            .await
            .map_err(|e| {
                warn!(error = %e, "credential unavailable");
                format!(
                    "agentd cannot obtain the credential for {}/{}: {e}",
                    request.spec.resource, request.spec.permission
                )
            })?;
        let listener = Arc::new(GrantListener {
            owner_uid: request.owner.uid,
            grant_id: grant_id.clone(),
            verifier,
            upstream: upstream::UpstreamTarget {
                resource: request.spec.resource.clone(),
                host: resource.host.clone(),
                port: resource.port,
                database: resource.database.clone(),
                username: login.username,
                secret: Arc::new(login.password),
                tls,
                connect_timeout: self.config().daemon.connect_timeout,
                scram_keys: Default::default(),
                auth: upstream::AuthPolicy::for_resource(resource),
                renewable,
            },
            cut: self.shutdown.child_token(),
            cut_reason: Default::default(),
            live_connections: Default::default(),
            total_connections: Default::default(),
            next_session: Default::default(),
            cancels: Default::default(),
            audit: self.audit.clone(),
            statements: self.statements.clone(),
            admission: crate::listener::admission::Admission::new(
                self.config().daemon.handshake_timeout,
                self.config().daemon.max_handshakes,
            ),
            sessions: Default::default(),
        });
        self.check_not_tampered(
            &request.spec.resource,
            &request.spec.permission,
            &listener.upstream,
        )
        .await?;
        let addr = match pg::spawn(listener.clone(), self.config().daemon.listen_host).await {
            Ok(addr) => addr,
            Err(e) => {
                listener.cut("agentd: grant not opened".to_owned());
                if let Some(role) = role {
                    self.spawn_role_drop(&grant_id, role);
                }
                return Err(format!("cannot open a local listener: {e}"));
            }
        };
        let socket_dir = self.open_unix_listener(&listener, &grant_id, addr.port());
        #[cfg(unix)]
        let service_file = socket_dir.as_deref().and_then(|dir| {
            use secrecy::ExposeSecret as _;
            // System mode: the file is the daemon's; the owner (another uid) reads it
            // through an ACL.
            let reader = (self.roles().mode() == crate::principal::Mode::System)
                .then_some(request.owner.uid);
            pg::write_service_file(
                dir,
                &grant_id,
                addr.port(),
                &resource.database,
                token.expose_secret(),
                reader,
            )
        });
        #[cfg(not(unix))]
        let service_file = None;
        Ok(GrantRecord {
            id: grant_id,
            request_id: request.id.clone(),
            resource: request.spec.resource.clone(),
            permission: request.spec.permission.clone(),
            agent: request.spec.agent.clone(),
            owner: request.owner.clone(),
            state: GrantState::Active,
            created_at: now,
            expires_at,
            ended_at: None,
            listener_addr: addr,
            socket_dir,
            service_file,
            database: resource.database.clone(),
            token,
            listener: Listener::Postgres(listener),
            http: None,
            role,
        })
    }

    /// [`Broker::open_grant`] for an `http` resource: the secret, the injector, the
    /// upstream pool, the scanner, and the TCP + Unix listeners.
    async fn open_http_grant(
        &self,
        request: &RequestRecord,
        resource: &Resource,
        permission: &Permission,
        grant_id: String,
        token: SecretString,
        now: SystemTime,
    ) -> Result<GrantRecord, String> {
        let what = format!("{}/{}", request.spec.resource, request.spec.permission);
        let expires_at = now + request.duration;
        let (login, _, _) = self
            .obtain_login(request, resource, permission, &grant_id, expires_at)
            .await
            .map_err(|e| {
                warn!(error = %e, "credential unavailable");
                format!("agentd cannot obtain the credential for {what}: {e}")
            })?;
        let scheme = resource
            .auth
            .clone()
            .ok_or_else(|| format!("resource {} has no auth", request.spec.resource))?;
        let basic_user = match &scheme {
            HttpAuth::Basic { username } if !username.is_empty() => Some(username.clone()),
            HttpAuth::Basic { .. } => Some(login.username.clone()),
            _ => None,
        };
        let token_placement = scheme.token_placement();
        let auth_scheme = scheme.scheme();
        let aws_region = match &scheme {
            HttpAuth::AwsSigv4 { region, .. } => Some(region.clone()),
            _ => None,
        };
        let username = basic_user.clone().unwrap_or_else(|| login.username.clone());
        let auth = http::auth::Injector::new(scheme, token.clone(), &login.password, &username)
            .map_err(|e| format!("{what}: {e}"))?;
        let secrets = auth.scan_secrets(&login.password);
        let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_slice()).collect();
        let scanner = http::scan::Scanner::new(&secrets, basic_user.as_deref())?;
        let upstream = http::proxy::Upstream::new(resource, self.config().daemon.connect_timeout)
            .map_err(|e| format!("resource {}: {e}", request.spec.resource))?;
        let listener = Arc::new(http::HttpGrantListener {
            grant_id: grant_id.clone(),
            owner_uid: request.owner.uid,
            auth,
            allow: permission.allow.clone(),
            allow_described: permission.allow.iter().map(|r| r.describe()).collect(),
            upstream,
            scanner,
            limits: http::Limits {
                header_timeout: self.config().daemon.handshake_timeout,
                idle_timeout: self.config().daemon.http_idle_timeout,
                body_idle_timeout: self.config().daemon.http_body_idle_timeout,
                ..Default::default()
            },
            buffering: tokio::sync::Semaphore::new(http::sigv4::MAX_BUFFERING),
            admission: crate::listener::admission::Admission::new(
                self.config().daemon.handshake_timeout,
                self.config().daemon.max_handshakes,
            ),
            cut: self.shutdown.child_token(),
            cut_reason: Default::default(),
            live_connections: Default::default(),
            total_connections: Default::default(),
            total_requests: Default::default(),
            audit: self.audit.clone(),
            sessions: Default::default(),
        });
        let addr = http::spawn(listener.clone(), self.config().daemon.listen_host)
            .await
            .map_err(|e| {
                listener.cut("agentd: grant not opened".to_owned());
                format!("cannot open a local listener: {e}")
            })?;
        let socket_path = self.unix_socket_root.as_ref().and_then(|root| {
            #[cfg(unix)]
            {
                let dir = root.join(&grant_id);
                let shared = self.roles().mode() == crate::principal::Mode::System;
                match http::spawn_unix(listener.clone(), &dir, shared) {
                    Ok(path) => Some(path),
                    Err(e) => {
                        warn!(error = %e, "no Unix-socket listener for this grant");
                        None
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = root;
                None
            }
        });
        Ok(GrantRecord {
            id: grant_id,
            request_id: request.id.clone(),
            resource: request.spec.resource.clone(),
            permission: request.spec.permission.clone(),
            agent: request.spec.agent.clone(),
            state: GrantState::Active,
            created_at: now,
            expires_at,
            listener_addr: addr,
            socket_dir: socket_path
                .as_ref()
                .and_then(|p| p.parent().map(PathBuf::from)),
            database: String::new(),
            token,
            listener: Listener::Http(listener),
            owner: request.owner.clone(),
            ended_at: None,
            service_file: None,
            http: Some(super::HttpGrantInfo {
                socket_path,
                token_placement,
                auth_scheme,
                aws_region,
            }),
            role: None,
        })
    }

    /// Records the approval and the grant in the audit log (synced), then makes the grant
    /// visible and schedules its expiry. If the audit log cannot be written the listener is
    /// closed again and the agent is told why.
    ///
    /// `preceding` are records that belong before the decision (the request itself, for an
    /// auto-approved request): all of them go out with one fdatasync.
    pub(super) fn activate_grant(
        self: &Arc<Self>,
        grant: GrantRecord,
        request: &RequestRecord,
        by: &str,
        rule: Option<String>,
        preceding: Option<AuditEvent>,
    ) -> Result<(), Response> {
        let mut events: Vec<AuditEvent> = preceding.into_iter().collect();
        events.push(AuditEvent::Decision {
            request_id: request.id.clone(),
            decision: "approved".to_owned(),
            by: by.to_owned(),
            reason: None,
            rule,
        });
        events.push(AuditEvent::Grant {
            grant_id: grant.id.clone(),
            request_id: request.id.clone(),
            resource: grant.resource.clone(),
            permission: grant.permission.clone(),
            expires_at: super::views::unix(grant.expires_at),
            agent: grant.agent.clone(),
            requester: Some(grant.owner.requester()),
        });
        let recorded = self.audit_sync_all(&events);
        if let Err(refusal) = recorded {
            grant
                .listener
                .cut("agentd: the audit log is unavailable".to_owned());
            if let Some(role) = grant.role {
                self.spawn_role_drop(&grant.id, role);
            }
            return Err(refusal);
        }
        let (grant_id, ttl, addr) = (grant.id.clone(), request.duration, grant.listener_addr);
        {
            let mut state = self.state();
            state.grant_order.push(grant_id.clone());
            state.grants.insert(grant_id.clone(), grant);
        }
        self.schedule_expiry(grant_id.clone(), ttl);
        info!(grant = %grant_id, %addr, ttl_seconds = ttl.as_secs(), "grant active");
        Ok(())
    }

    /// Revokes the grants `target` names; cuts their sessions, and answers once their
    /// dynamic roles (if any) are dropped.
    /// The control server lets only admins send this.
    pub async fn revoke(&self, target: &RevokeTarget, caller: &Principal) -> Response {
        let ids: Vec<String> = {
            let state = self.state();
            let active = state
                .grant_order
                .iter()
                .filter_map(|id| state.grants.get(id))
                .filter(|g| g.state == GrantState::Active);
            match target {
                RevokeTarget::All => active.map(|g| g.id.clone()).collect(),
                RevokeTarget::Resource { resource } => {
                    if !self.config().resources.contains_key(resource) {
                        return error(
                            ErrorCode::NotFound,
                            format!("no resource {resource:?} in the config"),
                        );
                    }
                    active
                        .filter(|g| &g.resource == resource)
                        .map(|g| g.id.clone())
                        .collect()
                }
                RevokeTarget::Agent { agent_type } => active
                    .filter(|g| g.agent.agent_type.eq_ignore_ascii_case(agent_type))
                    .map(|g| g.id.clone())
                    .collect(),
                RevokeTarget::Grant { grant_id } => match state.grants.get(grant_id) {
                    Some(g) if g.state == GrantState::Active => vec![grant_id.clone()],
                    Some(g) => {
                        return error(
                            ErrorCode::Conflict,
                            format!("grant {grant_id} is already {}", g.state.as_str()),
                        )
                    }
                    None => {
                        return error(
                            ErrorCode::NotFound,
                            format!("no grant {grant_id}; `agentd status` lists active grants"),
                        )
                    }
                },
            }
        };
        let by = caller.describe();
        let grant_ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.end_grant(id, GrantState::Revoked, &by))
            .collect();
        self.await_role_drops(Some(&grant_ids)).await;
        Response::Revoked { grant_ids }
    }

    /// The agent gives its own grant back; answers once its dynamic role (if any) is
    /// dropped. Someone else's grant is answered exactly like an unknown id.
    pub async fn release(&self, grant_id: &str, caller: &Principal) -> Response {
        let owned = self
            .state()
            .grants
            .get(grant_id)
            .is_some_and(|g| caller.owns(&g.owner));
        if !owned {
            return error(ErrorCode::NotFound, format!("no grant {grant_id}"));
        }
        let by = format!("owner {}", caller.describe());
        if self.end_grant(grant_id, GrantState::Released, &by) {
            self.await_role_drops(Some(&[grant_id.to_owned()])).await;
            return Response::Revoked {
                grant_ids: vec![grant_id.to_owned()],
            };
        }
        match self.state().grants.get(grant_id) {
            Some(g) => error(
                ErrorCode::Conflict,
                format!("grant {grant_id} is already {}", g.state.as_str()),
            ),
            None => error(ErrorCode::NotFound, format!("no grant {grant_id}")),
        }
    }

    /// Moves an active grant to `end`, records it, and cuts its listener and sessions; a
    /// dynamic role is then dropped in the background ([`Broker::await_role_drops`] waits).
    /// False if it was not active.
    pub(super) fn end_grant(&self, grant_id: &str, end: GrantState, by: &str) -> bool {
        let (live, role, check) = {
            let mut state = self.state();
            let Some(grant) = state.grants.get_mut(grant_id) else {
                return false;
            };
            if grant.state != GrantState::Active {
                return false;
            }
            grant.state = end;
            grant.ended_at = Some(SystemTime::now());
            let reason = match end {
                GrantState::Expired => {
                    format!("terminating connection: agentd grant {grant_id} expired")
                }
                GrantState::Released => {
                    format!("terminating connection: agentd grant {grant_id} was released")
                }
                _ => format!("terminating connection: agentd grant {grant_id} was revoked"),
            };
            grant.listener.cut(reason);
            let role = grant.role.take();
            // A fixed PostgreSQL login (no dynamic role): check afterwards that it still
            // works. Not at shutdown: the mark would not outlive the process.
            let check = match &grant.listener {
                Listener::Postgres(pg) if role.is_none() && by != "daemon shutdown" => Some((
                    grant.resource.clone(),
                    grant.permission.clone(),
                    pg.upstream.clone(),
                )),
                _ => None,
            };
            (grant.listener.live_connections(), role, check)
        };
        // Access is already cut; recording cannot undo that, so failures are only logged.
        self.audit_best_effort(&AuditEvent::GrantEnded {
            grant_id: grant_id.to_owned(),
            state: end.as_str().to_owned(),
            by: by.to_owned(),
            live_connections: live,
        });
        info!(grant = %grant_id, state = ?end, live, %by, "grant ended");
        if let Some(role) = role {
            self.spawn_role_drop(grant_id, role);
        }
        if let Some((resource, permission, target)) = check {
            self.spawn_login_check(grant_id, &resource, &permission, target);
        }
        self.persist();
        true
    }

    /// Opens the grant's Unix-socket listener; a failure is logged and the grant keeps its
    /// TCP listener.
    fn open_unix_listener(
        &self,
        listener: &Arc<GrantListener>,
        grant_id: &str,
        port: u16,
    ) -> Option<PathBuf> {
        #[cfg(unix)]
        {
            let dir = self.unix_socket_root.as_ref()?.join(grant_id);
            let shared = self.roles().mode() == crate::principal::Mode::System;
            match pg::spawn_unix(listener.clone(), &dir, port, shared) {
                Ok(_) => Some(dir),
                Err(e) => {
                    warn!(error = %e, dir = %dir.display(), "no Unix-socket listener for this grant");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (listener, grant_id, port);
            None
        }
    }

    fn schedule_expiry(self: &Arc<Self>, grant_id: String, ttl: Duration) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(broker) = broker.upgrade() {
                broker.end_grant(&grant_id, GrantState::Expired, "ttl");
            }
        });
    }
}
