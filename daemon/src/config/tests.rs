//! Config parsing and validation tests.
use super::*;

const GOOD: &str = r#"
[resources.app]
kind = "postgres"
host = "127.0.0.1"
database = "app"
tls = "require"
[resources.app.permissions.ro]
username = "agent_ro"
policy = "auto"
max_ttl = "1h"
default_ttl = "2h"
"#;

#[test]
fn parses_and_clamps_default_ttl() {
    let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
    let (r, p) = c.permission("app", "ro").unwrap();
    assert_eq!(r.port, 5432);
    assert_eq!(p.effective_default_ttl(), Duration::from_secs(3600));
    assert_eq!(p.credential, CredentialSource::Keyring { entry: None });
}

#[test]
fn error_names_file_line_and_field() {
    let bad = GOOD.replace("host = \"127.0.0.1\"\n", "");
    let err = Config::parse(&bad, Path::new("/etc/c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/c.toml"), "{err}");
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("host"), "{err}");

    let bad = GOOD.replace("max_ttl = \"1h\"", "max_ttl = \"soon\"");
    let err = Config::parse(&bad, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 10"), "{err}");
    assert!(
        err.contains("field resources.app.permissions.ro.max_ttl"),
        "{err}"
    );
    assert!(err.contains("invalid duration"), "{err}");

    let bad = GOOD.replace("tls = \"require\"", "tls = \"disable\"");
    let err = Config::parse(&bad, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("resources.app.tls"), "{err}");
    assert!(err.contains("allow_insecure"), "{err}");

    let bad = GOOD.replace("policy = \"auto\"", "polcy = \"auto\"");
    let err = Config::parse(&bad, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("polcy"), "{err}");
}

#[test]
fn new_settings_have_defaults() {
    let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
    assert_eq!(c.daemon.pending_timeout, Duration::from_secs(600));
    assert!(c.daemon.notify);
    assert_eq!(c.daemon.data_dir, None);
    assert!(
        c.daemon.data_dir().ends_with("agentd") || c.daemon.data_dir().ends_with("agentd-data")
    );
    assert_eq!(c.audit, AuditSettings::default());
    assert_eq!(c.audit.max_file_bytes, 64 * 1024 * 1024);
    let (_, p) = c.permission("app", "ro").unwrap();
    assert_eq!(p.over_max_ttl, OverMaxTtl::Clamp);
    assert!(p.rules.is_empty());
}

#[test]
fn parses_daemon_audit_and_rules() {
    let text = format!(
        r#"
[daemon]
data_dir = "/srv/agentd"
pending_timeout = "2m"
notify = false
[audit]
statements = false
max_file_bytes = 4096
fsync = false
{GOOD}
over_max_ttl = "refuse"
[[resources.app.permissions.ro.rules]]
agents = ["claude-code", "Cursor"]
window = {{ days = ["mon", "FRI", "sunday"], start = "22:00", end = "06:00" }}
policy = "deny"
max_ttl = "5m"
[[resources.app.permissions.ro.rules]]
policy = "approval"
"#
    );
    let c = Config::parse(&text, Path::new("c.toml")).unwrap();
    assert_eq!(c.daemon.data_dir(), PathBuf::from("/srv/agentd"));
    assert_eq!(c.audit_dir(), PathBuf::from("/srv/agentd/audit"));
    assert_eq!(c.daemon.pending_timeout, Duration::from_secs(120));
    assert!(!c.daemon.notify);
    assert!(!c.audit.statements && !c.audit.fsync);
    let (_, p) = c.permission("app", "ro").unwrap();
    assert_eq!(p.over_max_ttl, OverMaxTtl::Refuse);
    assert_eq!(p.rules.len(), 2);
    let w = p.rules[0].window.as_ref().unwrap();
    use chrono::Weekday::*;
    assert_eq!(w.days, vec![Mon, Fri, Sun]);
    assert!(w.is_overnight());
    assert_eq!(w.start, chrono::NaiveTime::from_hms_opt(22, 0, 0).unwrap());
    assert_eq!(p.rules[0].max_ttl, Some(Duration::from_secs(300)));
    assert_eq!(p.rules[1].agents, Vec::<String>::new());
    assert_eq!(p.rules[1].window, None);
}

#[test]
fn clock_times() {
    for ok in ["00:00", "9:05", "23:59", "12:30"] {
        assert!(parse_clock_time(ok).is_some(), "{ok}");
    }
    for bad in [
        "25:00", "24:00", "12:60", "12", "12:5", "1200", "", ":30", "-1:00", "12:30:00", "9am",
    ] {
        assert!(parse_clock_time(bad).is_none(), "{bad}");
    }
}

fn err_of(extra: &str) -> String {
    Config::parse(&format!("{GOOD}{extra}"), Path::new("c.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn rule_errors_name_the_field() {
    let rule = |body: &str| format!("[[resources.app.permissions.ro.rules]]\n{body}\n");
    let cases = [
        (
            rule("policy = \"auto\"\nwindow = { start = \"25:00\", end = \"06:00\" }"),
            "resources.app.permissions.ro.rules[0].window.start: invalid time \"25:00\"",
        ),
        (
            format!(
                "{}{}",
                rule("policy = \"auto\""),
                rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"6pm\" }")
            ),
            "resources.app.permissions.ro.rules[1].window.end: invalid time \"6pm\"",
        ),
        (
            rule("policy = \"auto\"\nwindow = { days = [\"mon\", \"funday\"], start = \"09:00\", end = \"17:00\" }"),
            "resources.app.permissions.ro.rules[0].window.days[1]: invalid day \"funday\"",
        ),
        (
            rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"09:00\" }"),
            "resources.app.permissions.ro.rules[0].window.end: start and end must differ",
        ),
        (
            rule("policy = \"auto\"\nagents = [\"claude code\"]"),
            "resources.app.permissions.ro.rules[0].agents[0]: invalid agent type \"claude code\"",
        ),
        (
            rule("policy = \"auto\"\nmax_ttl = \"0s\""),
            "resources.app.permissions.ro.rules[0].max_ttl: must be at least 1s",
        ),
        (
            rule("policy = \"auto\"\nagent = [\"x\"]"),
            "unknown field `agent`",
        ),
        (rule("agents = []"), "missing field `policy`"),
        (
            rule("policy = \"auto\"\nwindow = { start = \"09:00\", end = \"17:00\", tz = \"UTC\" }"),
            "unknown field `tz`",
        ),
        (
            "over_max_ttl = \"truncate\"\n".to_owned(),
            "field resources.app.permissions.ro.over_max_ttl",
        ),
    ];
    for (extra, want) in cases {
        let err = err_of(&extra);
        assert!(err.contains(want), "{extra}\n=> {err}\nwanted {want}");
        assert!(err.contains("c.toml"), "{err}");
    }
}

#[test]
fn credential_sources_parse_and_validate() {
    let base = GOOD.replace("username = \"agent_ro\"\n", "");
    let with = |cred: &str| {
        Config::parse(
            &base.replace("policy = \"auto\"", &format!("{cred}\npolicy = \"auto\"")),
            Path::new("c.toml"),
        )
    };
    let c =
        with(r#"credential = { source = "command", argv = ["op", "read", "op://v/db"] }"#).unwrap();
    let (_, p) = c.permission("app", "ro").unwrap();
    assert_eq!(
        p.credential,
        CredentialSource::Command {
            argv: vec!["op".into(), "read".into(), "op://v/db".into()],
            timeout_seconds: 10
        }
    );
    assert_eq!(p.credential.keychain_entry("app", "ro"), None);
    let c = with(
        r#"credential = { source = "dynamic", admin_username = "adm", grant_roles = ["ro"] }"#,
    )
    .unwrap();
    let (_, p) = c.permission("app", "ro").unwrap();
    let CredentialSource::Dynamic(d) = &p.credential else {
        panic!("{:?}", p.credential)
    };
    assert_eq!(
        (d.connection_limit, d.admin_entry("app").as_str()),
        (10, "app/admin")
    );
    assert_eq!(
        p.credential.keychain_entry("app", "ro").as_deref(),
        Some("app/admin")
    );
    let c = with("username = \"u\"\ncredential = { source = \"keychain\" }").unwrap();
    assert_eq!(
        c.permission("app", "ro")
            .unwrap()
            .1
            .credential
            .keychain_entry("app", "ro")
            .as_deref(),
        Some("app/ro")
    );

    for (cred, want) in [
        (
            "",
            "resources.app.permissions.ro.username: must not be empty",
        ),
        (
            r#"credential = { source = "command", argv = [] }"#,
            "credential.argv: must name a program",
        ),
        (
            r#"credential = { source = "command", argv = ["x"], timeout_seconds = 0 }"#,
            "credential.timeout_seconds: must be between 1 and 300",
        ),
        (
            r#"credential = { source = "command", argv = ["x"], shell = true }"#,
            "unknown field `shell`",
        ),
        (
            r#"username = "u"
credential = { source = "dynamic", admin_username = "adm" }"#,
            "username: not used with source = \"dynamic\"",
        ),
        (
            r#"credential = { source = "dynamic", admin_username = "" }"#,
            "credential.admin_username: must not be empty",
        ),
        (
            r#"credential = { source = "dynamic", admin_username = "a", connection_limit = -2 }"#,
            "credential.connection_limit",
        ),
        (
            r#"credential = { source = "dynamic", admin_username = "a", creation_statements = ["CREATE ROLE x"] }"#,
            "must use {{name}}",
        ),
        (
            r#"credential = { source = "vault" }"#,
            "unknown variant `vault`",
        ),
    ] {
        let err = with(cred).unwrap_err().to_string();
        assert!(err.contains(want), "{cred}\n=> {err}\nwanted {want}");
    }
}

#[test]
fn daemon_and_audit_limits() {
    let with = |head: &str| {
        Config::parse(&format!("{head}\n{GOOD}"), Path::new("c.toml"))
            .unwrap_err()
            .to_string()
    };
    let err = with("[daemon]\npending_timeout = \"500ms\"");
    assert!(
        err.contains("daemon.pending_timeout: must be at least 1s"),
        "{err}"
    );
    let err = with("[daemon]\ndata_dir = \"relative/dir\"");
    assert!(
        err.contains("daemon.data_dir: must be an absolute path"),
        "{err}"
    );
    let err = with("[audit]\nmax_file_bytes = 4095");
    assert!(
        err.contains("audit.max_file_bytes: must be at least 4096"),
        "{err}"
    );
    let err = with("[audit]\nrotate = true");
    assert!(err.contains("unknown field `rotate`"), "{err}");
    let bad = GOOD.replace("default_ttl = \"2h\"", "default_ttl = \"0s\"");
    let err = Config::parse(&bad, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resources.app.permissions.ro.default_ttl: must be at least 1s"),
        "{err}"
    );
}

const HTTP: &str = r#"
[resources.gh]
kind = "http"
base_url = "https://api.github.com"
auth = { scheme = "header", name = "authorization", value = "token {{secret}}" }

[resources.gh.permissions.issues]
credential = { source = "keyring" }
allow = [{ methods = ["GET", "HEAD"], paths = ["/repos/*/*/issues/**"] }]
"#;

#[test]
fn parses_http_resources() {
    let c = Config::parse(HTTP, Path::new("c.toml")).unwrap();
    let (r, p) = c.permission("gh", "issues").unwrap();
    assert_eq!(r.kind, ResourceKind::Http);
    assert_eq!(r.base_url.as_deref(), Some("https://api.github.com"));
    assert!(p.allow[0].allows("GET", "/repos/a/b/issues/1"));
    assert!(!p.allow[0].allows("POST", "/repos/a/b/issues/1"));
    assert!(http::explain_allow(&p.allow).contains("GET, HEAD on /repos/*/*/issues/**"));
    let aws = HTTP.replace(
        r#"{ scheme = "header", name = "authorization", value = "token {{secret}}" }"#,
        r#"{ scheme = "aws_sigv4", service = "s3", region = "eu-west-1" }"#,
    );
    let c = Config::parse(&aws, Path::new("c.toml")).unwrap();
    let (r, _) = c.permission("gh", "issues").unwrap();
    let auth = r.auth.as_ref().unwrap();
    assert_eq!(auth.scheme(), "aws_sigv4");
    assert!(auth
        .token_placement()
        .contains("service s3, region eu-west-1"));
}

#[test]
fn refuses_bad_http_resources() {
    let cases = [
        (
            HTTP.replace("https://api", "http://api"),
            "resources.gh.base_url",
        ),
        (
            HTTP.replace("base_url = \"https://api.github.com\"\n", ""),
            "resources.gh.base_url",
        ),
        (
            HTTP.replace("token {{secret}}", "token"),
            "resources.gh.auth.value",
        ),
        (
            HTTP.replace(
                "allow = [{ methods = [\"GET\", \"HEAD\"], paths = [\"/repos/*/*/issues/**\"] }]",
                "",
            ),
            "resources.gh.permissions.issues.allow",
        ),
        (
            HTTP.replace("\"HEAD\"", "\"CONNECT\""),
            "resources.gh.permissions.issues.allow[0].methods[1]",
        ),
        (
            HTTP.replace("/repos/*/*/issues/**", "/repos/../x"),
            "resources.gh.permissions.issues.allow[0].paths[0]",
        ),
        (
            HTTP.replace("keyring\" }", "dynamic\", admin_username = \"a\" }"),
            "resources.gh.permissions.issues.credential",
        ),
        (
            HTTP.replace("kind = \"http\"", "kind = \"http\"\nhost = \"x\""),
            "resources.gh.host",
        ),
        (
            HTTP.replace(
                r#"{ scheme = "header", name = "authorization", value = "token {{secret}}" }"#,
                r#"{ scheme = "aws_sigv4", service = "s3", region = "EU West" }"#,
            ),
            "resources.gh.auth.region",
        ),
        (
            HTTP.replace(
                r#"{ scheme = "header", name = "authorization", value = "token {{secret}}" }"#,
                r#"{ scheme = "aws_sigv4", service = "", region = "us-east-1" }"#,
            ),
            "resources.gh.auth.service",
        ),
    ];
    for (text, field) in cases {
        let err = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}
