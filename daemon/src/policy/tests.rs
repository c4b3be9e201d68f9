use super::*;
use crate::config::Config;
use agentd_proto::PolicyDecision::{Approval, Auto, Deny};
use std::path::Path;

/// A permission `app/p` (policy approval, max_ttl 1h, default 15m) plus `extra` lines
/// (permission keys, then rule tables).
fn perm(extra: &str) -> Permission {
    let text = format!(
        r#"
[resources.app]
kind = "postgres"
host = "127.0.0.1"
database = "app"
[resources.app.permissions.p]
username = "u"
policy = "approval"
max_ttl = "1h"
{extra}
"#
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    config.permission("app", "p").unwrap().1.clone()
}

/// Local time in the week of Monday 2024-06-03: `at("fri 22:30")`; `at("wed 08:59.59")` is
/// 08:59:59.
fn at(s: &str) -> NaiveDateTime {
    let (day, time) = s.split_once(' ').unwrap();
    let offset = crate::config::parse_weekday(day)
        .unwrap()
        .num_days_from_monday();
    let date = chrono::NaiveDate::from_ymd_opt(2024, 6, 3 + offset).unwrap();
    let (hms, secs) = match time.split_once('.') {
        Some((hm, s)) => (hm, s.parse::<u32>().unwrap()),
        None => (time, 0),
    };
    let t = crate::config::parse_clock_time(hms).unwrap();
    date.and_time(t) + chrono::Duration::seconds(secs.into())
}

const M: u64 = 60;

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * M)
}

const WORK_HOURS: &str = r#"
[[resources.app.permissions.p.rules]]
agents = ["claude-code", "cursor"]
window = { days = ["mon", "tue", "wed", "thu", "fri"], start = "09:00", end = "18:00" }
policy = "auto"
max_ttl = "30m"
"#;

const NIGHT_DENY: &str = r#"
[[resources.app.permissions.p.rules]]
window = { days = ["fri"], start = "22:00", end = "06:00" }
policy = "deny"
"#;

const CURSOR_DENY: &str = r#"
[[resources.app.permissions.p.rules]]
agents = ["Cursor"]
policy = "deny"
"#;

const ANY_AUTO_2H: &str = r#"
[[resources.app.permissions.p.rules]]
policy = "auto"
max_ttl = "2h"
"#;

type Expect = (PolicyDecision, Option<usize>, u64, u64, bool);

type Case = (
    &'static str,
    String,
    &'static str,
    Option<u64>,
    &'static str,
    Expect,
);

/// (what, config, agent, requested minutes, time) → (policy, deciding rule, max_ttl
/// minutes, duration minutes, clamped)
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let both = |a: &str, b: &str| format!("{a}\n{b}");
    let key = |k: &str, rules: &str| format!("{k}\n{rules}");
    vec![
        ("no rules: permission policy, default ttl", String::new(), "claude-code", None, "wed 12:00", (Approval, None, 60, 15, false)),
        ("agent and window match", WORK_HOURS.into(), "claude-code", Some(20), "wed 12:00", (Auto, Some(0), 30, 20, false)),
        ("second listed agent matches", WORK_HOURS.into(), "cursor", Some(20), "wed 12:00", (Auto, Some(0), 30, 20, false)),
        ("agent match is case-insensitive", WORK_HOURS.into(), "Claude-Code", Some(20), "wed 12:00", (Auto, Some(0), 30, 20, false)),
        ("agent match is exact, not prefix", WORK_HOURS.into(), "claude", Some(20), "wed 12:00", (Approval, None, 60, 20, false)),
        ("other agent falls through", WORK_HOURS.into(), "vscode", Some(20), "wed 12:00", (Approval, None, 60, 20, false)),
        ("empty agent type matches only agent-less rules", WORK_HOURS.into(), "", Some(20), "wed 12:00", (Approval, None, 60, 20, false)),
        ("window start is inclusive", WORK_HOURS.into(), "cursor", Some(20), "wed 09:00", (Auto, Some(0), 30, 20, false)),
        ("a second before start is outside", WORK_HOURS.into(), "cursor", Some(20), "wed 08:59.59", (Approval, None, 60, 20, false)),
        ("a second before end is inside", WORK_HOURS.into(), "cursor", Some(20), "wed 17:59.59", (Auto, Some(0), 30, 20, false)),
        ("window end is exclusive", WORK_HOURS.into(), "cursor", Some(20), "wed 18:00", (Approval, None, 60, 20, false)),
        ("day filter: saturday is outside", WORK_HOURS.into(), "cursor", Some(20), "sat 12:00", (Approval, None, 60, 20, false)),
        ("day filter: friday is inside", WORK_HOURS.into(), "cursor", Some(20), "fri 12:00", (Auto, Some(0), 30, 20, false)),
        ("rule max_ttl clamps", WORK_HOURS.into(), "cursor", Some(45), "wed 12:00", (Auto, Some(0), 30, 30, true)),
        ("default ttl capped at the rule's max_ttl", key("default_ttl = \"45m\"", WORK_HOURS), "cursor", None, "wed 12:00", (Auto, Some(0), 30, 30, false)),
        ("default ttl under the rule's max_ttl", key("default_ttl = \"10m\"", WORK_HOURS), "cursor", None, "wed 12:00", (Auto, Some(0), 30, 10, false)),
        ("default ttl capped at the permission's max_ttl", key("default_ttl = \"2h\"", ""), "x", None, "wed 12:00", (Approval, None, 60, 60, false)),
        ("overnight: start day at start", NIGHT_DENY.into(), "x", Some(20), "fri 22:00", (Deny, Some(0), 60, 20, false)),
        ("overnight: just before midnight", NIGHT_DENY.into(), "x", Some(20), "fri 23:59.59", (Deny, Some(0), 60, 20, false)),
        ("overnight: next day at midnight", NIGHT_DENY.into(), "x", Some(20), "sat 00:00", (Deny, Some(0), 60, 20, false)),
        ("overnight: next day just before end", NIGHT_DENY.into(), "x", Some(20), "sat 05:59.59", (Deny, Some(0), 60, 20, false)),
        ("overnight: end is exclusive", NIGHT_DENY.into(), "x", Some(20), "sat 06:00", (Approval, None, 60, 20, false)),
        ("overnight: start day before start", NIGHT_DENY.into(), "x", Some(20), "fri 21:59", (Approval, None, 60, 20, false)),
        ("overnight: friday early morning is thursday's window", NIGHT_DENY.into(), "x", Some(20), "fri 03:00", (Approval, None, 60, 20, false)),
        ("overnight: saturday night is not friday's", NIGHT_DENY.into(), "x", Some(20), "sat 23:00", (Approval, None, 60, 20, false)),
        ("overnight on every day, across sunday to monday", EVERY_NIGHT_AUTO.into(), "x", Some(20), "mon 01:00", (Auto, Some(0), 60, 20, false)),
        ("until midnight (end 00:00)", EVENING_AUTO.into(), "x", Some(20), "tue 23:59.59", (Auto, Some(0), 60, 20, false)),
        ("until midnight: the next day is outside", EVENING_AUTO.into(), "x", Some(20), "wed 00:00", (Approval, None, 60, 20, false)),
        ("deny is clamped, never refused", key("over_max_ttl = \"refuse\"", NIGHT_DENY), "x", Some(90), "fri 23:00", (Deny, Some(0), 60, 60, true)),
        ("first match wins", both(CURSOR_DENY, WORK_HOURS), "cursor", Some(20), "wed 12:00", (Deny, Some(0), 60, 20, false)),
        ("first match wins, other order", both(WORK_HOURS, CURSOR_DENY), "cursor", Some(20), "wed 12:00", (Auto, Some(0), 30, 20, false)),
        ("outside the window the later rule decides", both(WORK_HOURS, CURSOR_DENY), "cursor", Some(20), "sun 12:00", (Deny, Some(1), 60, 20, false)),
        ("earlier non-matching rule is skipped", both(CURSOR_DENY, WORK_HOURS), "claude-code", Some(20), "wed 12:00", (Auto, Some(1), 30, 20, false)),
        ("catch-all after a specific rule", both(WORK_HOURS, ANY_AUTO_2H), "vscode", Some(90), "sun 12:00", (Auto, Some(1), 120, 90, false)),
        ("rule max_ttl may exceed the permission's", ANY_AUTO_2H.into(), "x", Some(150), "sun 12:00", (Auto, Some(0), 120, 120, true)),
        ("permission max_ttl clamps", String::new(), "x", Some(90), "wed 12:00", (Approval, None, 60, 60, true)),
        ("exactly max_ttl is not clamped", key("over_max_ttl = \"refuse\"", ""), "x", Some(60), "wed 12:00", (Approval, None, 60, 60, false)),
    ]
}

const EVERY_NIGHT_AUTO: &str = r#"
[[resources.app.permissions.p.rules]]
window = { start = "22:00", end = "06:00" }
policy = "auto"
"#;

const EVENING_AUTO: &str = r#"
[[resources.app.permissions.p.rules]]
window = { days = ["tue"], start = "18:00", end = "00:00" }
policy = "auto"
"#;

#[test]
fn decisions() {
    for (what, config, agent, requested, time, want) in cases() {
        let p = perm(&config);
        let got = decide(
            &p,
            &Requester::claiming(agent),
            requested.map(mins),
            at(time),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (policy, rule, max, duration, clamped) = want;
        let want = Decision {
            policy,
            max_ttl: mins(max),
            rule,
            duration: mins(duration),
            clamped,
        };
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn refusals() {
    let refuse = |rules: &str| perm(&format!("over_max_ttl = \"refuse\"\n{rules}"));
    let p = refuse(WORK_HOURS);
    assert_eq!(
        decide(
            &p,
            &Requester::claiming("cursor"),
            Some(mins(31)),
            at("wed 12:00")
        ),
        Err(PolicyError::OverMaxTtl {
            requested: mins(31),
            max_ttl: mins(30)
        })
    );
    // Outside the rule, the permission's 1h applies.
    assert!(decide(
        &p,
        &Requester::claiming("cursor"),
        Some(mins(31)),
        at("sat 12:00")
    )
    .is_ok());
    assert_eq!(
        decide(
            &p,
            &Requester::claiming("cursor"),
            Some(mins(61)),
            at("sat 12:00")
        ),
        Err(PolicyError::OverMaxTtl {
            requested: mins(61),
            max_ttl: mins(60)
        })
    );
    // The default is capped, so it is never refused.
    let p = refuse(&format!("default_ttl = \"45m\"\n{WORK_HOURS}"));
    let d = decide(&p, &Requester::claiming("cursor"), None, at("wed 12:00")).unwrap();
    assert_eq!((d.duration, d.clamped), (mins(30), false));

    let msg = PolicyError::OverMaxTtl {
        requested: mins(90),
        max_ttl: mins(60),
    }
    .to_string();
    assert!(msg.contains("1h 30m") && msg.contains("1h"), "{msg}");
}

#[test]
fn zero_duration() {
    let p = perm(WORK_HOURS);
    for agent in ["cursor", "other"] {
        assert_eq!(
            decide(
                &p,
                &Requester::claiming(agent),
                Some(Duration::ZERO),
                at("wed 12:00")
            ),
            Err(PolicyError::ZeroDuration)
        );
    }
    let p = perm(NIGHT_DENY);
    assert_eq!(
        decide(
            &p,
            &Requester::claiming("x"),
            Some(Duration::ZERO),
            at("fri 23:00")
        ),
        Err(PolicyError::ZeroDuration)
    );
}

#[test]
fn explains() {
    let p = perm(&format!(
        "default_ttl = \"10m\"\n{WORK_HOURS}\n{NIGHT_DENY}\n{EVERY_NIGHT_AUTO}\n{ANY_AUTO_2H}"
    ));
    assert_eq!(
        explain(&p),
        vec![
            "claude-code, cursor (claimed) on Mon–Fri 09:00–18:00: auto, max 30m",
            "any agent on Fri 22:00–06:00 (overnight): deny",
            "any agent every day 22:00–06:00 (overnight): auto, max 1h",
            "any agent at any time: auto, max 2h",
            "otherwise: approval, max 1h; longer requests are clamped",
        ]
    );
    assert_eq!(
        describe_rule(&p.rules[2]),
        "any agent every day 22:00–06:00 (overnight): auto, max as permission"
    );
    assert_eq!(
        describe_rule(&p.rules[0]),
        "claude-code, cursor (claimed) on Mon–Fri 09:00–18:00: auto, max 30m"
    );
}

#[test]
fn explains_fallback_only() {
    let text = r#"
[resources.app]
kind = "postgres"
host = "h"
database = "d"
[resources.app.permissions.p]
username = "u"
policy = "auto"
max_ttl = "90m"
over_max_ttl = "refuse"
"#;
    let c = Config::parse(text, Path::new("t.toml")).unwrap();
    let p = &c.resources["app"].permissions["p"];
    assert_eq!(
        explain(p),
        vec!["always: auto, max 1h 30m; longer requests are refused"]
    );
}

#[test]
fn day_lists() {
    let cases: &[(&[u32], &str)] = &[
        (&[0, 1, 2, 3, 4], "Mon–Fri"),
        (&[5, 6], "Sat, Sun"),
        (&[0, 2, 3, 4], "Mon, Wed–Fri"),
        (&[2], "Wed"),
        (&[0, 1, 3, 5, 6], "Mon, Tue, Thu, Sat, Sun"),
    ];
    for (days, want) in cases {
        assert_eq!(day_runs(days), *want);
    }
}

#[test]
fn shadowing() {
    let pairs = |rules: &[&str]| shadowed_rules(&perm(&rules.join("\n")));
    // A windowed rule shadows nothing.
    assert_eq!(pairs(&[WORK_HOURS, WORK_HOURS]), vec![]);
    // Same agents, no window: the second never matches.
    assert_eq!(pairs(&[CURSOR_DENY, CURSOR_DENY]), vec![(1, 0)]);
    // A catch-all shadows everything after it.
    assert_eq!(
        pairs(&[ANY_AUTO_2H, WORK_HOURS, CURSOR_DENY]),
        vec![(1, 0), (2, 0)]
    );
    // `Cursor` covers `cursor` but not `cursor` + `claude-code`.
    let cursor_lower = CURSOR_DENY.replace("Cursor", "cursor");
    assert_eq!(pairs(&[CURSOR_DENY, &cursor_lower]), vec![(1, 0)]);
    let wider = CURSOR_DENY.replace("[\"Cursor\"]", "[\"cursor\", \"claude-code\"]");
    assert_eq!(pairs(&[CURSOR_DENY, &wider]), vec![]);
    assert_eq!(pairs(&[&wider, CURSOR_DENY]), vec![(1, 0)]);
    // A specific rule never shadows a catch-all.
    assert_eq!(pairs(&[CURSOR_DENY, ANY_AUTO_2H]), vec![]);
}

const ALICE_AUTO: &str = r#"
[[resources.app.permissions.p.rules]]
users = ["alice"]
agents = ["claude-code"]
policy = "auto"
"#;

#[test]
fn users_are_matched_against_the_verified_user_only() {
    let p = perm(ALICE_AUTO);
    let decide_for = |agent: &str, user: Option<&str>| {
        let who = Requester {
            agent_type: agent,
            user,
        };
        decide(&p, &who, None, at("wed 12:00")).unwrap().policy
    };
    assert_eq!(decide_for("claude-code", Some("alice")), Auto);
    // Another OS user claiming the same agent type, an unknown user, a user name that
    // differs only in case: the rule does not match, the permission's approval applies.
    assert_eq!(decide_for("claude-code", Some("mallory")), Approval);
    assert_eq!(decide_for("claude-code", None), Approval);
    assert_eq!(decide_for("claude-code", Some("Alice")), Approval);
    // The right user with another agent type: still the agent list decides.
    assert_eq!(decide_for("cursor", Some("alice")), Approval);
    assert_eq!(
        describe_rule(&p.rules[0]),
        "OS user alice, claude-code (claimed) at any time: auto, max as permission"
    );
}

#[test]
fn auto_on_a_claimed_agent_type_alone_is_flagged() {
    assert!(auto_on_claim_only(
        &perm(CURSOR_DENY.replace("deny", "auto").as_str()).rules[0]
    ));
    assert!(!auto_on_claim_only(&perm(ALICE_AUTO).rules[0]));
    assert!(!auto_on_claim_only(&perm(CURSOR_DENY).rules[0]));
    // Auto for any agent is not a trust in a claim (it is its own decision).
    assert!(!auto_on_claim_only(&perm(ANY_AUTO_2H).rules[0]));
}

#[test]
fn users_take_part_in_shadowing() {
    let pairs = |rules: &[&str]| shadowed_rules(&perm(&rules.join("\n")));
    let anyone_claude = ALICE_AUTO.replace("users = [\"alice\"]\n", "");
    let bob = ALICE_AUTO.replace("alice", "bob");
    // A rule for alice does not shadow the same rule for bob or for anyone…
    assert_eq!(pairs(&[ALICE_AUTO, &bob]), vec![]);
    assert_eq!(pairs(&[ALICE_AUTO, &anyone_claude]), vec![]);
    // …but a rule for anyone shadows the one for alice, and alice's shadows alice's.
    assert_eq!(pairs(&[&anyone_claude, ALICE_AUTO]), vec![(1, 0)]);
    assert_eq!(pairs(&[ALICE_AUTO, ALICE_AUTO]), vec![(1, 0)]);
}
