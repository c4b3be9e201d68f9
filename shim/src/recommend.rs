//! `recommend_access`: a deterministic suggestion of the least-privileged (resource,
//! permission, duration) for a task description. No model, no network: word rules over the
//! task and the resources' names, tags and descriptions.
//!
//! 1. The task's verbs say what kind of access it needs: reading (`read`, `select`,
//!    `report`, `count`, `analyse`, …), writing data (`insert`, `update`, `delete`,
//!    `backfill`, …) or changing the schema (`migrate`, `alter`, `create`, `drop`, …). With
//!    no such verb it assumes reading (least privilege) and says so.
//! 2. Each resource scores by the task words it shares with its name parts (3 points), tags
//!    (2) and description (1); the best score wins, ties by name. With no match and a
//!    single resource, that one; otherwise no recommendation.
//! 3. Each permission gets a level from its name and description: read (1), write (2),
//!    schema/admin (3); unknown names count as write. The lowest level that covers the
//!    need wins, skipping permissions the policy denies to this agent now; ties prefer
//!    `auto` over `approval`, then the name.
//! 4. Duration: 15 minutes for reading, 30 for writing or schema changes, capped by the
//!    permission's current maximum.

use agentd_proto::{PermissionInfo, PolicyDecision, ResourceInfo};
use serde::Serialize;

/// What a task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Reading data.
    Read = 1,
    /// Changing data.
    Write = 2,
    /// Changing the schema.
    Schema = 3,
}

const READ_VERBS: &[&str] = &[
    "read",
    "select",
    "report",
    "reporting",
    "count",
    "analyse",
    "analyze",
    "analysis",
    "query",
    "look",
    "inspect",
    "list",
    "show",
    "check",
    "investigate",
    "find",
    "summarise",
    "summarize",
    "explore",
    "export",
    "sum",
    "average",
    "aggregate",
    "view",
    "search",
    "audit",
    "compare",
    "dashboard",
    "metrics",
    "stats",
    "statistics",
    "debug",
];
const WRITE_VERBS: &[&str] = &[
    "insert", "update", "delete", "write", "modify", "backfill", "upsert", "fix", "correct",
    "remove", "import", "seed", "change", "edit", "cleanup", "purge", "truncate",
];
const SCHEMA_VERBS: &[&str] = &[
    "migrate",
    "migration",
    "migrations",
    "alter",
    "create",
    "drop",
    "ddl",
    "schema",
    "index",
    "rename",
    "grant",
    "revoke",
];
/// Words too common to say anything about which resource is meant.
const STOPWORDS: &[&str] = &[
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "from", "with", "by", "at", "is",
    "are", "be", "all", "this", "that", "it", "my", "our", "we", "i", "db", "database", "data",
    "table", "tables", "postgres", "sql", "some", "last", "week", "please",
];

/// Lower-case words of `text` (letters and digits; `-`, `_`, punctuation split).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .collect()
}

/// Equal, or equal once a plural `s` is dropped (`order` matches `orders`).
fn same(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix('s') == Some(b) || b.strip_suffix('s') == Some(a)
}

fn contains(list: &[String], w: &str) -> bool {
    list.iter().any(|x| same(x, w))
}

/// The task's need and the word that decided it (`None`: no verb found, reading assumed).
pub fn classify_task(task: &str) -> (Need, Option<String>) {
    let ws = words(task);
    let find = |list: &[&str]| ws.iter().find(|w| list.contains(&w.as_str())).cloned();
    if let Some(w) = find(SCHEMA_VERBS) {
        return (Need::Schema, Some(w));
    }
    if let Some(w) = find(WRITE_VERBS) {
        return (Need::Write, Some(w));
    }
    (Need::Read, find(READ_VERBS))
}

/// A permission's level from its name and description: 1 read, 2 write, 3 schema/admin.
pub fn permission_level(p: &PermissionInfo) -> Need {
    let name = words(&p.name);
    let desc = words(&p.description);
    let has = |list: &[&str]| name.iter().chain(&desc).any(|w| list.contains(&w.as_str()));
    let name_has = |list: &[&str]| name.iter().any(|w| list.contains(&w.as_str()));
    if name_has(&[
        "admin",
        "owner",
        "ddl",
        "migrate",
        "migrator",
        "superuser",
        "dba",
    ]) {
        return Need::Schema;
    }
    if name_has(&["write", "rw", "readwrite", "editor"]) {
        return Need::Write;
    }
    if name_has(&[
        "read",
        "ro",
        "readonly",
        "reader",
        "select",
        "report",
        "reporting",
        "analytics",
    ]) {
        return Need::Read;
    }
    if has(&["alter", "create", "drop", "ddl", "owner"]) {
        Need::Schema
    } else if has(&["insert", "update", "delete", "write"]) {
        Need::Write
    } else if has(&["select", "read", "only"]) {
        Need::Read
    } else {
        Need::Write
    }
}

/// A recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recommendation {
    /// Resource name.
    pub resource: String,
    /// Permission name.
    pub permission: String,
    /// Suggested duration, e.g. `15m`.
    pub duration: String,
    /// The same in seconds.
    pub duration_seconds: u64,
    /// What the task needs.
    pub need: Need,
    /// What the policy says for this agent now (`auto`, `approval`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_now: Option<PolicyDecision>,
    /// Why, in one or two sentences.
    pub reason: String,
}

fn score(resource: &ResourceInfo, task_words: &[String]) -> (u32, Vec<String>) {
    let name = words(&resource.name);
    let tags: Vec<String> = resource.tags.iter().flat_map(|t| words(t)).collect();
    let desc = words(&resource.description);
    let mut total = 0;
    let mut hits = Vec::new();
    for w in task_words {
        if STOPWORDS.contains(&w.as_str()) || hits.contains(w) {
            continue;
        }
        let points = if contains(&name, w) {
            3
        } else if contains(&tags, w) {
            2
        } else if contains(&desc, w) {
            1
        } else {
            0
        };
        if points > 0 {
            total += points;
            hits.push(w.clone());
        }
    }
    (total, hits)
}

fn fmt_minutes(seconds: u64) -> String {
    if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// The recommendation for `task` over `resources`, or why there is none (a message telling
/// the agent what to do instead).
///
/// # Errors
/// No resource fits the task's words, or no permission of the chosen resource covers the
/// need (the message names what exists).
pub fn recommend(task: &str, resources: &[ResourceInfo]) -> Result<Recommendation, String> {
    let task_words = words(task);
    let (need, verb) = classify_task(task);
    let mut scored: Vec<(u32, Vec<String>, &ResourceInfo)> = resources
        .iter()
        .map(|r| {
            let (s, hits) = score(r, &task_words);
            (s, hits, r)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
    let (resource, why_resource) = match scored.first() {
        Some((s, hits, r)) if *s > 0 => (
            *r,
            format!("the task mentions {} (matching {})", hits.join(", "), r.name),
        ),
        Some((_, _, r)) if resources.len() == 1 => {
            (*r, format!("{} is the only resource", r.name))
        }
        Some(_) => {
            return Err(format!(
                "no resource's name, tags or description matches the task; pick one of {} with list_resources or describe_resource",
                resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
        None => return Err("agentd has no resources configured; ask the human to add one".into()),
    };
    let mut candidates: Vec<(&PermissionInfo, Need)> = resource
        .permissions
        .iter()
        .filter(|p| p.policy_now.unwrap_or(p.policy) != PolicyDecision::Deny)
        .map(|p| (p, permission_level(p)))
        .filter(|(_, level)| *level >= need)
        .collect();
    candidates.sort_by(|a, b| {
        let auto = |p: &PermissionInfo| p.policy_now.unwrap_or(p.policy) != PolicyDecision::Auto;
        a.1.cmp(&b.1)
            .then_with(|| auto(a.0).cmp(&auto(b.0)))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let Some((permission, level)) = candidates.first().copied() else {
        return Err(format!(
            "no permission on {} that the policy allows you covers a {} task; its permissions: {}. Ask the human, do not work around it",
            resource.name,
            match need {
                Need::Read => "read",
                Need::Write => "write",
                Need::Schema => "schema-changing",
            },
            resource.permissions.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        ));
    };
    let wanted: u64 = if need == Need::Read { 15 * 60 } else { 30 * 60 };
    let max = permission
        .max_ttl_now_seconds
        .unwrap_or(permission.max_ttl_seconds)
        .max(1);
    let seconds = wanted.min(max);
    let why_need = match (&verb, need) {
        (Some(v), Need::Read) => format!("\"{v}\" needs only reading"),
        (Some(v), Need::Write) => format!("\"{v}\" changes data"),
        (Some(v), Need::Schema) => format!("\"{v}\" changes the schema"),
        (None, _) => "no verb says it must change anything, so reading is assumed".to_owned(),
    };
    let why_level = if level == need {
        format!("{} is the least privilege that allows it", permission.name)
    } else {
        format!(
            "{} is the least privileged permission that covers it",
            permission.name
        )
    };
    Ok(Recommendation {
        resource: resource.name.clone(),
        permission: permission.name.clone(),
        duration: fmt_minutes(seconds),
        duration_seconds: seconds,
        need,
        policy_now: permission.policy_now,
        reason: format!(
            "{why_resource}; {why_need}; {why_level}; {} is enough for one task (request again if needed)",
            fmt_minutes(seconds)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(name: &str, description: &str, policy: PolicyDecision) -> PermissionInfo {
        PermissionInfo {
            name: name.into(),
            description: description.into(),
            policy,
            max_ttl_seconds: 3600,
            default_ttl_seconds: 900,
            policy_now: Some(policy),
            max_ttl_now_seconds: Some(3600),
            policy_explained: vec![],
            your_grants: vec![],
            allows: vec![],
        }
    }

    fn resources() -> Vec<ResourceInfo> {
        use PolicyDecision::*;
        vec![
            ResourceInfo {
                name: "app-db".into(),
                kind: "postgres".into(),
                description: "Orders and customers".into(),
                tags: vec!["production".into(), "shop".into()],
                database: "app".into(),
                base_url: None,
                permissions: vec![
                    perm("read_only", "SELECT on all tables", Auto),
                    perm("read_write", "INSERT, UPDATE, DELETE", Approval),
                    perm("migrator", "owner of the schema", Approval),
                ],
            },
            ResourceInfo {
                name: "analytics".into(),
                kind: "postgres".into(),
                description: "Events warehouse for dashboards".into(),
                tags: vec!["metrics".into()],
                database: "dw".into(),
                base_url: None,
                permissions: vec![
                    perm("reader", "", Approval),
                    perm("loader", "writes event batches", Deny),
                ],
            },
        ]
    }

    #[test]
    fn recommends_least_privilege_by_table() {
        // (task, resource, permission, duration)
        let table = [
            (
                "count last week's orders for the report",
                "app-db",
                "read_only",
                "15m",
            ),
            (
                "SELECT the customers who signed up today",
                "app-db",
                "read_only",
                "15m",
            ),
            (
                "analyse signup events on the dashboards",
                "analytics",
                "reader",
                "15m",
            ),
            (
                "update the shipping address of order 42",
                "app-db",
                "read_write",
                "30m",
            ),
            ("delete duplicate customers", "app-db", "read_write", "30m"),
            (
                "migrate the orders table: alter column total",
                "app-db",
                "migrator",
                "30m",
            ),
            ("look at the shop orders", "app-db", "read_only", "15m"),
            ("orders", "app-db", "read_only", "15m"),
        ];
        let rs = resources();
        for (task, resource, permission, duration) in table {
            let r = recommend(task, &rs).unwrap_or_else(|e| panic!("{task}: {e}"));
            assert_eq!(
                (
                    r.resource.as_str(),
                    r.permission.as_str(),
                    r.duration.as_str()
                ),
                (resource, permission, duration),
                "{task}: {}",
                r.reason
            );
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn refuses_when_nothing_fits() {
        let rs = resources();
        // The only write permission on analytics is denied by policy.
        let e = recommend("insert events into the warehouse", &rs).unwrap_err();
        assert!(e.contains("analytics"), "{e}");
        // No resource matches and there are several.
        let e = recommend("read the weather", &rs).unwrap_err();
        assert!(e.contains("list_resources"), "{e}");
        assert!(recommend("read", &[]).is_err());
    }

    #[test]
    fn single_resource_and_duration_cap() {
        let mut rs = resources();
        rs.truncate(1);
        rs[0].permissions[0].max_ttl_now_seconds = Some(600);
        let r = recommend("read the weather", &rs).unwrap();
        assert_eq!(
            (r.permission.as_str(), r.duration_seconds),
            ("read_only", 600)
        );
        assert!(r.reason.contains("only resource"), "{}", r.reason);
    }

    #[test]
    fn classifies_permissions() {
        use PolicyDecision::Auto;
        assert_eq!(permission_level(&perm("read_only", "", Auto)), Need::Read);
        assert_eq!(permission_level(&perm("ro", "", Auto)), Need::Read);
        assert_eq!(permission_level(&perm("rw", "", Auto)), Need::Write);
        assert_eq!(permission_level(&perm("admin", "", Auto)), Need::Schema);
        assert_eq!(
            permission_level(&perm("x", "SELECT only", Auto)),
            Need::Read
        );
        assert_eq!(permission_level(&perm("mystery", "", Auto)), Need::Write);
    }
}
