//! What an agent may discover: the configured resources with each permission's policy (as
//! it applies to the asking agent type right now) and the caller's own active grants.

use super::{views, Broker, GrantRecord};
use crate::policy;
use crate::principal::Principal;
use agentd_proto::{GrantState, HeldGrant, PermissionInfo, ResourceInfo, Response};

impl Broker {
    /// The configured resources for [`agentd_proto::Request::ListResources`]. With
    /// `agent_type`, each permission carries `policy_now` / `max_ttl_now_seconds` (the policy
    /// decision for that agent type and `caller`'s OS user at the current local time) and the ids of `caller`'s
    /// active grants on it.
    pub fn list_resources(&self, agent_type: Option<&str>, caller: &Principal) -> Response {
        let now_local = chrono::Local::now().naive_local();
        let state = self.state();
        let mine: Vec<&GrantRecord> = state
            .grant_order
            .iter()
            .filter_map(|id| state.grants.get(id))
            .filter(|g| g.state == GrantState::Active && held_by(g, caller))
            .collect();
        let config = self.config();
        let resources = config
            .resources
            .iter()
            .map(|(name, r)| ResourceInfo {
                name: name.clone(),
                kind: r.kind.as_str().to_owned(),
                description: r.description.clone(),
                tags: r.tags.clone(),
                database: r.database.clone(),
                base_url: r.base_url.clone(),
                permissions: r
                    .permissions
                    .iter()
                    .map(|(pname, p)| {
                        let now = agent_type.and_then(|agent_type| {
                            let who = policy::Requester {
                                agent_type,
                                user: Some(&caller.user),
                            };
                            policy::decide(p, &who, None, now_local).ok()
                        });
                        PermissionInfo {
                            name: pname.clone(),
                            description: p.description.clone(),
                            policy: p.policy,
                            max_ttl_seconds: p.max_ttl.as_secs(),
                            default_ttl_seconds: p.effective_default_ttl().as_secs(),
                            policy_now: now.map(|d| d.policy),
                            max_ttl_now_seconds: now.map(|d| d.max_ttl.as_secs()),
                            policy_explained: policy::explain(p),
                            your_grants: mine
                                .iter()
                                .filter(|g| &g.resource == name && &g.permission == pname)
                                .map(|g| g.id.clone())
                                .collect(),
                            allows: p.allow.iter().map(|a| a.describe()).collect(),
                        }
                    })
                    .collect(),
            })
            .collect();
        Response::Resources { resources }
    }

    /// `caller`'s own active grants with their handles, for
    /// [`agentd_proto::Request::ListGrants`]. A grant belongs to the peer process (pid and
    /// uid, start time) that requested it; a caller whose pid is unknown holds none.
    pub fn list_grants(&self, caller: &Principal) -> Response {
        let state = self.state();
        let grants = state
            .grant_order
            .iter()
            .filter_map(|id| state.grants.get(id))
            .filter(|g| g.state == GrantState::Active && held_by(g, caller))
            .map(|g| HeldGrant {
                grant: views::view_grant(g),
                handle: views::handle_for(g),
            })
            .collect();
        Response::Grants { grants }
    }
}

/// True when `g` was requested by the process instance `caller` (see [`Principal::owns`]).
fn held_by(g: &GrantRecord, caller: &Principal) -> bool {
    caller.owns(&g.owner)
}
