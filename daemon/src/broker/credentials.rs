//! The broker's side of credentials: the login a grant's listener uses (keychain, command
//! or a dynamic role created for the grant), dropping dynamic roles when grants end, and
//! sweeping orphaned ones at start. Every role step is in the audit log.

use super::{Broker, RequestRecord};
use crate::audit::AuditEvent;
use crate::config::{CredentialSource, Permission, Resource};
use crate::credentials::command::RenewableLogin;
use crate::credentials::dynamic::RoleManager;
use crate::credentials::pgadmin::AdminSession;
use crate::credentials::{self, CredentialError, Login};
use agentd_proto::GrantState;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// A grant's dynamic role and the manager that made it.
#[derive(Debug)]
pub(super) struct GrantRole {
    pub(super) name: String,
    pub(super) manager: Arc<RoleManager>,
}

impl Broker {
    /// The upstream login for a new grant, its dynamic role when the permission has one
    /// (created and recorded in the audit log before this returns), and for a command
    /// login with an `expires_at` the [`RenewableLogin`] its sessions renew it through.
    pub(super) async fn obtain_login(
        &self,
        request: &RequestRecord,
        resource: &Resource,
        permission: &Permission,
        grant_id: &str,
        expires_at: SystemTime,
    ) -> Result<(Login, Option<GrantRole>, Option<Arc<RenewableLogin>>), CredentialError> {
        let (rname, pname) = (&request.spec.resource, &request.spec.permission);
        let settings = &self.config().daemon;
        match &permission.credential {
            CredentialSource::Keyring { .. } => {
                let password =
                    credentials::fetch_secret_async(settings, &permission.credential, rname, pname)
                        .await?
                        .ok_or_else(|| CredentialError::Internal("no keychain entry".into()))?;
                let login = Login {
                    username: permission.username.clone(),
                    password,
                };
                Ok((login, None, None))
            }
            CredentialSource::Command {
                argv,
                timeout_seconds,
            } => {
                let key = format!("{rname}/{pname}");
                let timeout = Duration::from_secs(*timeout_seconds);
                // An http credential is often a bare token: no user name needed.
                let default_user = match resource.kind {
                    crate::config::ResourceKind::Http if permission.username.is_empty() => "-",
                    _ => permission.username.as_str(),
                };
                let fetched_at = SystemTime::now();
                let fetched = self.commands.get(&key, argv, timeout, default_user).await?;
                let login = fetched.login.clone();
                let renewable = RenewableLogin::new(
                    Arc::clone(&self.commands),
                    key,
                    argv.clone(),
                    timeout,
                    default_user.to_owned(),
                    fetched,
                    fetched_at,
                )
                .map(Arc::new);
                Ok((login, None, renewable))
            }
            CredentialSource::Dynamic(_) => {
                let manager = self
                    .role_manager(rname, pname, resource, permission)
                    .await?;
                let login = manager.create(grant_id, expires_at).await?;
                let role = GrantRole {
                    name: login.username.clone(),
                    manager: Arc::new(manager),
                };
                let recorded = self.audit_sync(&AuditEvent::RoleCreated {
                    grant_id: grant_id.to_owned(),
                    resource: rname.clone(),
                    permission: pname.clone(),
                    role: role.name.clone(),
                    valid_until: super::views::unix(expires_at),
                });
                if recorded.is_err() {
                    self.spawn_role_drop(grant_id, role);
                    return Err(CredentialError::Dynamic(
                        "the audit log cannot be written, so the role was dropped again".into(),
                    ));
                }
                info!(grant = %grant_id, role = %role.name, "dynamic role created");
                Ok((login, Some(role), None))
            }
        }
    }

    /// A [`RoleManager`] for a dynamic permission, with the admin password from the
    /// keychain.
    async fn role_manager(
        &self,
        rname: &str,
        pname: &str,
        resource: &Resource,
        permission: &Permission,
    ) -> Result<RoleManager, CredentialError> {
        let CredentialSource::Dynamic(spec) = &permission.credential else {
            return Err(CredentialError::Internal("not a dynamic permission".into()));
        };
        let settings = &self.config().daemon;
        let admin_password =
            credentials::fetch_secret_async(settings, &permission.credential, rname, pname)
                .await?
                .ok_or_else(|| CredentialError::Internal("no admin keychain entry".into()))?;
        RoleManager::new(
            rname,
            resource,
            spec,
            admin_password,
            settings.connect_timeout,
            &self.owner_tag,
        )
    }

    /// Drops a grant's role in the background (terminate its sessions, revocation
    /// statements) and records the outcome; [`Broker::await_role_drops`] waits for it.
    pub(super) fn spawn_role_drop(&self, grant_id: &str, role: GrantRole) {
        let audit = self.audit.clone();
        let grant_id = grant_id.to_owned();
        let key = grant_id.clone();
        let task = tokio::spawn(async move {
            let report = role.manager.drop_role(&role.name).await;
            match &report.error {
                None => info!(grant = %grant_id, role = %role.name,
                              terminated = report.terminated_sessions, "dynamic role dropped"),
                Some(e) => warn!(grant = %grant_id, role = %role.name, error = %e,
                                 "dynamic role NOT dropped; the next daemon start sweeps it"),
            }
            let event = AuditEvent::RoleDropped {
                grant_id,
                role: role.name,
                dropped: report.dropped,
                terminated_sessions: report.terminated_sessions,
                error: report.error,
            };
            if let Err(e) = audit.append(&event, crate::audit::Durability::Sync) {
                tracing::error!(error = %e, "audit log write failed");
            }
        });
        self.role_drops_lock().push((key, task));
    }

    /// Waits for the background role drops of `grant_ids` (all of them with `None`).
    pub async fn await_role_drops(&self, grant_ids: Option<&[String]>) {
        let tasks: Vec<_> = {
            let mut drops = self.role_drops_lock();
            drops.retain(|(_, t)| !t.is_finished());
            let (mine, rest) = std::mem::take(&mut *drops)
                .into_iter()
                .partition(|(id, _)| grant_ids.is_none_or(|ids| ids.contains(id)));
            *drops = rest;
            mine
        };
        for (_, task) in tasks {
            let _ = task.await;
        }
    }

    pub(super) fn role_drops_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, tokio::task::JoinHandle<()>)>> {
        self.role_drops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At start: for every dynamic permission, drops the roles this data directory created
    /// that no active grant owns (a previous daemon crashed or was killed). Failures are
    /// logged and recorded, never fatal.
    pub async fn sweep_dynamic_roles(&self) {
        let live: Vec<String> = {
            let state = self.state();
            state
                .grants
                .values()
                .filter(|g| g.state == GrantState::Active)
                .filter_map(|g| g.role.as_ref().map(|r| r.name.clone()))
                .collect()
        };
        // One sweep per (resource, admin login): permissions sharing an admin share roles.
        let mut swept: Vec<(String, String)> = Vec::new();
        for (rname, resource) in &self.config().resources {
            for (pname, permission) in &resource.permissions {
                let CredentialSource::Dynamic(spec) = &permission.credential else {
                    continue;
                };
                let key = (rname.clone(), spec.admin_username.clone());
                if swept.contains(&key) {
                    continue;
                }
                swept.push(key);
                let outcome = match self.role_manager(rname, pname, resource, permission).await {
                    Ok(manager) => manager.sweep(&live).await,
                    Err(e) => Err(e),
                };
                let (dropped, failed, error) = match outcome {
                    Ok(report) => (
                        report.dropped,
                        report
                            .failed
                            .into_iter()
                            .map(|(role, e)| format!("{role}: {e}"))
                            .collect::<Vec<_>>(),
                        None,
                    ),
                    Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
                };
                if let Some(e) = &error {
                    warn!(resource = %rname, permission = %pname, error = %e, "orphan role sweep failed");
                } else {
                    info!(resource = %rname, permission = %pname, dropped = dropped.len(),
                          failed = failed.len(), "orphan role sweep");
                }
                self.audit_best_effort(&AuditEvent::RolesSwept {
                    resource: rname.clone(),
                    permission: pname.clone(),
                    dropped,
                    failed,
                    error,
                });
            }
        }
    }

    /// At shutdown, after every grant was ended: waits up to [`ROLE_DROP_GRACE`] for their
    /// dynamic roles to be dropped (the next start sweeps any left).
    pub(super) async fn await_role_drops_at_shutdown(&self) {
        if tokio::time::timeout(ROLE_DROP_GRACE, self.await_role_drops(None))
            .await
            .is_err()
        {
            warn!("dynamic roles still being dropped at shutdown; the next start sweeps leftovers");
        }
    }
}

impl Broker {
    /// After a grant on a fixed login (keychain or command source) ends: logs in upstream
    /// with the grant's login, off the hot path, to see whether the stored secret still
    /// works. Dynamic SQL inside the grant (a `DO` block, `EXECUTE` in a function) can change
    /// the role's password where the wire guard cannot see it; this is where it shows. A
    /// refused login (SQLSTATE class 28) records `credential_tampered` and marks the
    /// permission so new grants are refused until the admin sets the secret again; any other
    /// failure (upstream down) proves nothing and is only logged. Revoke and release wait
    /// for the check (it shares [`Broker::await_role_drops`]); expiry does not.
    pub(super) fn spawn_login_check(
        &self,
        grant_id: &str,
        resource: &str,
        permission: &str,
        target: crate::listener::postgres::upstream::UpstreamTarget,
    ) {
        let audit = self.audit.clone();
        let tampered = self.tampered.clone();
        let (grant_id, resource, permission) = (
            grant_id.to_owned(),
            resource.to_owned(),
            permission.to_owned(),
        );
        let key = grant_id.clone();
        let task = tokio::spawn(async move {
            let error = match AdminSession::connect(&target).await {
                Ok(session) => {
                    session.close().await;
                    return;
                }
                Err(e) if e.sqlstate.starts_with("28") => e.to_string(),
                Err(e) => {
                    warn!(grant = %grant_id, error = %e, "could not check the stored login after the grant");
                    return;
                }
            };
            warn!(grant = %grant_id, %resource, %permission, %error,
                  "the stored login no longer authenticates; new grants on this permission are refused until the secret is set again");
            tampered.lock().unwrap_or_else(|p| p.into_inner()).insert(
                (resource.clone(), permission.clone()),
                agentd_proto::TamperedView {
                    resource: resource.clone(),
                    permission: permission.clone(),
                    grant_id: grant_id.clone(),
                    error: error.clone(),
                    since: super::views::unix(SystemTime::now()),
                },
            );
            let event = AuditEvent::CredentialTampered {
                grant_id,
                resource,
                permission,
                error,
            };
            if let Err(e) = audit.append(&event, crate::audit::Durability::Sync) {
                tracing::error!(error = %e, "audit log write failed");
            }
        });
        self.role_drops_lock().push((key, task));
    }

    /// Before a grant on a permission marked tampered: whether its (freshly obtained) login
    /// works again (the admin set the secret); then the mark is cleared. `Err` carries the
    /// message for the agent.
    pub(super) async fn check_not_tampered(
        &self,
        resource: &str,
        permission: &str,
        target: &crate::listener::postgres::upstream::UpstreamTarget,
    ) -> Result<(), String> {
        let key = (resource.to_owned(), permission.to_owned());
        let marked = self
            .tampered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let Some(mark) = marked else {
            return Ok(());
        };
        match AdminSession::connect(target).await {
            Ok(session) => {
                session.close().await;
                self.tampered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                info!(%resource, %permission, "stored login works again; grants allowed");
                Ok(())
            }
            Err(_) => Err(format!(
                "agentd refuses new grants on {resource}/{permission}: its stored login stopped working after grant {} (the role's password was probably changed from inside that grant). Tell the admin to set the secret again (`agentd secret set {resource} {permission}`) and, if the password was changed, to reset it on the server; do not retry until then",
                mark.grant_id
            )),
        }
    }
}

/// Longest the shutdown waits for dynamic roles to be dropped (20 seconds).
pub const ROLE_DROP_GRACE: Duration = Duration::from_secs(20);
