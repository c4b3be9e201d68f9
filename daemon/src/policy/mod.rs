//! The policy decision: which (permission, requester, duration, local time) is
//! auto-approved, needs a human's approval, or is denied, and for how long.
//!
//! Pure and clock-free: [`decide`] takes the local time as a parameter; the caller reads
//! `chrono::Local::now().naive_local()`.
//!
//! How a decision is made:
//! 1. The permission's `rules` are tried in order. A rule matches when its `users` list is
//!    empty or holds the requester's OS user name (exact; the daemon's lookup of the peer
//!    uid, see [`Requester`]), its `agents` list is empty or holds the agent type (exact,
//!    case-insensitive; claimed by the client), and its `window` is absent or contains the
//!    local time. The first match decides the policy and the `max_ttl` (the
//!    rule's own, else the permission's).
//! 2. No match: the permission's own `policy` and `max_ttl`.
//! 3. Duration: the requested one, else the permission's default TTL capped at the deciding
//!    `max_ttl`. A zero duration is an error. Above `max_ttl` it is clamped (`clamped =
//!    true`) or refused, per the permission's `over_max_ttl` — except that a `deny`
//!    decision is always returned as such (clamped), so the broker can record the denial.
//!
//! Windows: `start` inclusive, `end` exclusive, local time. An overnight window
//! (`end < start`) belongs to the day it starts on: `days = ["fri"]`, `22:00`–`06:00`
//! covers Friday 22:00 to Saturday 06:00, and not Friday 00:00–06:00.

use crate::config::{OverMaxTtl, Permission, Rule, TimeWindow};
use agentd_proto::PolicyDecision;
use chrono::{Datelike as _, NaiveDateTime, Weekday};
use std::time::Duration;

/// Requests for `auto` access longer than this draw a warning from `agentd config check`.
pub const LONG_AUTO_TTL: Duration = Duration::from_secs(8 * 3600);

/// Who asks, as far as the policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester<'a> {
    /// The agent type the client *claims* (`claude-code`); anything local can say anything.
    pub agent_type: &'a str,
    /// The requesting process's OS user name as the daemon looked it up (peer uid →
    /// password database, [`crate::principal::Principal::user`]); `None` when unknown, which
    /// matches no rule that lists `users`.
    pub user: Option<&'a str>,
}

impl<'a> Requester<'a> {
    /// A requester known only by its claimed agent type (no verified user).
    pub fn claiming(agent_type: &'a str) -> Self {
        Requester {
            agent_type,
            user: None,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `auto`, `approval` or `deny`.
    pub policy: PolicyDecision,
    /// The longest grant allowed by whatever decided (the rule's `max_ttl`, else the
    /// permission's).
    pub max_ttl: Duration,
    /// Index into `permission.rules` of the rule that decided; `None` when no rule matched
    /// and the permission's own policy applies.
    pub rule: Option<usize>,
    /// The grant's duration: requested or defaulted, never above `max_ttl`, never zero.
    pub duration: Duration,
    /// Whether the requested duration was cut down to `max_ttl`.
    pub clamped: bool,
}

/// Why a request gets no decision at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The request is longer than `max_ttl` and the permission says
    /// `over_max_ttl = "refuse"`.
    #[error("requested duration {} is longer than the maximum {} for this permission; ask for at most {}", fmt(*requested), fmt(*max_ttl), fmt(*max_ttl))]
    OverMaxTtl {
        /// What was asked for.
        requested: Duration,
        /// The deciding `max_ttl`.
        max_ttl: Duration,
    },
    /// The requested (or default) duration is zero.
    #[error("duration must be at least 1 second")]
    ZeroDuration,
}

/// Decides a request for `permission` by `who` (claimed agent type, verified OS user) for
/// `requested` (or the default TTL when `None`) at local time `now`. See the module docs
/// for the rules.
///
/// # Errors
/// [`PolicyError::ZeroDuration`] for a zero duration; [`PolicyError::OverMaxTtl`] when the
/// duration exceeds the deciding `max_ttl`, the permission has `over_max_ttl = "refuse"`,
/// and the decision is not `deny`.
pub fn decide(
    permission: &Permission,
    who: &Requester<'_>,
    requested: Option<Duration>,
    now: NaiveDateTime,
) -> Result<Decision, PolicyError> {
    let matched = permission
        .rules
        .iter()
        .position(|r| rule_matches(r, who, now));
    let (policy, max_ttl) = match matched.map(|i| &permission.rules[i]) {
        Some(rule) => (rule.policy, rule.max_ttl.unwrap_or(permission.max_ttl)),
        None => (permission.policy, permission.max_ttl),
    };
    let wanted = requested.unwrap_or_else(|| permission.effective_default_ttl().min(max_ttl));
    if wanted.is_zero() {
        return Err(PolicyError::ZeroDuration);
    }
    let over = wanted > max_ttl;
    if over && permission.over_max_ttl == OverMaxTtl::Refuse && policy != PolicyDecision::Deny {
        return Err(PolicyError::OverMaxTtl {
            requested: wanted,
            max_ttl,
        });
    }
    Ok(Decision {
        policy,
        max_ttl,
        rule: matched,
        duration: wanted.min(max_ttl),
        clamped: over,
    })
}

/// Whether `rule` applies to `who` at local time `now`.
pub fn rule_matches(rule: &Rule, who: &Requester<'_>, now: NaiveDateTime) -> bool {
    let user_ok = rule.users.is_empty()
        || who
            .user
            .is_some_and(|user| rule.users.iter().any(|u| u == user));
    let agent_ok = rule.agents.is_empty()
        || rule
            .agents
            .iter()
            .any(|a| a.eq_ignore_ascii_case(who.agent_type));
    user_ok && agent_ok && rule.window.as_ref().is_none_or(|w| window_contains(w, now))
}

/// Whether `rule` auto-approves on a claimed agent type alone: `policy = "auto"`, an
/// `agents` list, and no `users` list the daemon verifies. Any local process that names
/// one of those agent types gets the access without a human, so `agentd config check`
/// warns about it.
pub fn auto_on_claim_only(rule: &Rule) -> bool {
    rule.policy == PolicyDecision::Auto && !rule.agents.is_empty() && rule.users.is_empty()
}

/// Whether local time `now` is inside `window` (see [`TimeWindow`] for overnight windows).
pub fn window_contains(window: &TimeWindow, now: NaiveDateTime) -> bool {
    let on = |day: Weekday| window.days.is_empty() || window.days.contains(&day);
    let (day, t) = (now.weekday(), now.time());
    if window.is_overnight() {
        (t >= window.start && on(day)) || (t < window.end && on(day.pred()))
    } else {
        t >= window.start && t < window.end && on(day)
    }
}

/// Pairs `(shadowed, by)`: rule `shadowed` can never match because the earlier rule `by`
/// has no window and its users and agents cover all of `shadowed`'s (empty = any).
pub fn shadowed_rules(permission: &Permission) -> Vec<(usize, usize)> {
    let list_covers = |earlier: &[String], later: &[String], same: fn(&str, &str) -> bool| {
        earlier.is_empty()
            || (!later.is_empty()
                && later
                    .iter()
                    .all(|l| earlier.iter().any(|e| same(e.as_str(), l.as_str()))))
    };
    let covers = |earlier: &Rule, later: &Rule| {
        earlier.window.is_none()
            && list_covers(&earlier.users, &later.users, |a, b| a == b)
            && list_covers(&earlier.agents, &later.agents, |a, b| {
                a.eq_ignore_ascii_case(b)
            })
    };
    let rules = &permission.rules;
    (0..rules.len())
        .filter_map(|j| {
            (0..j)
                .find(|&i| covers(&rules[i], &rules[j]))
                .map(|i| (j, i))
        })
        .collect()
}

/// One plain-English line for a rule, without the permission's fallback `max_ttl` (a rule
/// without its own `max_ttl` says "max as permission"), e.g. `OS user alice, agent
/// claude-code, cursor (claimed) on Mon–Fri 09:00–18:00: auto, max 30m`.
pub fn describe_rule(rule: &Rule) -> String {
    let max = match rule.max_ttl {
        Some(d) => fmt(d),
        None => "as permission".to_owned(),
    };
    describe(rule, &max)
}

/// Plain-English lines for a permission's whole policy: one per rule (in order, with the
/// `max_ttl` that applies), then the fallback, e.g.
/// `otherwise: approval, max 1h; longer requests are clamped`.
pub fn explain(permission: &Permission) -> Vec<String> {
    let mut lines: Vec<String> = permission
        .rules
        .iter()
        .map(|r| describe(r, &fmt(r.max_ttl.unwrap_or(permission.max_ttl))))
        .collect();
    let lead = if lines.is_empty() {
        "always"
    } else {
        "otherwise"
    };
    let longer = match permission.over_max_ttl {
        OverMaxTtl::Clamp => "clamped",
        OverMaxTtl::Refuse => "refused",
    };
    lines.push(format!(
        "{lead}: {}; longer requests are {longer}",
        outcome(permission.policy, &fmt(permission.max_ttl))
    ));
    lines
}

fn describe(rule: &Rule, max: &str) -> String {
    let agents = if rule.agents.is_empty() {
        "any agent".to_owned()
    } else {
        format!("{} (claimed)", rule.agents.join(", "))
    };
    let who = if rule.users.is_empty() {
        agents
    } else {
        let noun = if rule.users.len() == 1 {
            "user"
        } else {
            "users"
        };
        format!("OS {noun} {}, {agents}", rule.users.join(", "))
    };
    let when = match &rule.window {
        None => "at any time".to_owned(),
        Some(w) => describe_window(w),
    };
    format!("{who} {when}: {}", outcome(rule.policy, max))
}

fn outcome(policy: PolicyDecision, max: &str) -> String {
    match policy {
        PolicyDecision::Auto => format!("auto, max {max}"),
        PolicyDecision::Approval => format!("approval, max {max}"),
        PolicyDecision::Deny => "deny".to_owned(),
    }
}

/// `on Mon–Fri 09:00–18:00`, `every day 22:00–06:00 (overnight)`.
fn describe_window(w: &TimeWindow) -> String {
    let mut days: Vec<u32> = w.days.iter().map(|d| d.num_days_from_monday()).collect();
    days.sort_unstable();
    days.dedup();
    let days = if days.is_empty() || days.len() == 7 {
        "every day".to_owned()
    } else {
        format!("on {}", day_runs(&days))
    };
    let overnight = if w.is_overnight() { " (overnight)" } else { "" };
    format!(
        "{days} {}–{}{overnight}",
        w.start.format("%H:%M"),
        w.end.format("%H:%M")
    )
}

/// Sorted, deduplicated day numbers (Mon = 0) as `Mon–Fri`, `Sat, Sun`, `Mon, Wed–Fri`.
fn day_runs(days: &[u32]) -> String {
    let name = |n: u32| {
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            .get(n as usize)
            .copied()
            .unwrap_or("?")
    };
    let mut parts = Vec::new();
    let mut i = 0;
    while i < days.len() {
        let mut j = i;
        while j + 1 < days.len() && days[j + 1] == days[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => parts.push(name(days[i]).to_owned()),
            1 => {
                parts.push(name(days[i]).to_owned());
                parts.push(name(days[j]).to_owned());
            }
            _ => parts.push(format!("{}–{}", name(days[i]), name(days[j]))),
        }
        i = j + 1;
    }
    parts.join(", ")
}

/// `30m`, `1h`, `1h 30m`.
fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;
