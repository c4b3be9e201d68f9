//! Principals: who is on the other end of the control socket and what they may do.
//!
//! Everything here comes from the operating system, never from a field a client sends
//! about itself: the peer's uid, gid and pid from the socket (`SO_PEERCRED` on Linux,
//! `LOCAL_PEERCRED` on macOS, via `interprocess`), the process's start time and
//! controlling terminal from `/proc/PID/stat` (Linux), the user name from the password
//! database.
//!
//! The model, decided once for every verb and listener:
//! - A [`Peer`] is the kernel's account of a connection.
//! - [`Roles::classify`] turns it into a [`Principal`] with a [`Role`], or refuses it:
//!   - **user mode** (the daemon runs as the user): only the daemon's own uid is served;
//!     it is both client and admin (human verbs still need a controlling terminal, which a
//!     same-user agent can fake: user mode does not hold against a shell agent).
//!   - **system mode** (the daemon runs as its own OS user): uid 0 and members of
//!     `[daemon] admin_group` are admins; users and groups listed in `[daemon] clients` are
//!     clients; anyone else is refused.
//! - An [`Owner`] is the requesting instance recorded on each access request and grant:
//!   uid, pid and the process's start time (so a reused pid is another owner). Only the
//!   owner sees a grant's token, awaits, cancels or releases it; admins see every request
//!   and grant but never a token.

use std::fmt;

/// How the daemon is deployed; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The daemon runs as the user it serves (`agentd demo`, quick start).
    #[default]
    User,
    /// The daemon runs as its own OS user; people and agents are clients on its socket.
    System,
}

impl Mode {
    /// `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::User => "user",
            Mode::System => "system",
        }
    }
}

/// The kernel's account of a control-socket peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id of the peer.
    pub uid: u32,
    /// Effective group id of the peer, when the platform reports it.
    pub gid: Option<u32>,
    /// Process id of the peer, when the platform reports it.
    pub pid: Option<u32>,
}

impl Peer {
    /// The peer of the current process (for in-process callers such as tests and the demo).
    #[cfg(unix)]
    pub fn this_process() -> Self {
        Self {
            uid: agentd_proto::socket::current_uid(),
            gid: None,
            pid: Some(std::process::id()),
        }
    }
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May list resources, request access and use, await, cancel and release its own
    /// requests and grants.
    Client,
    /// Everything a client may, plus approve, deny, revoke any grant, see every request and
    /// grant (never a token), manage secrets and read the audit log.
    Admin,
}

impl Role {
    /// `client` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// A classified peer: who it is (from the OS) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Effective uid.
    pub uid: u32,
    /// Process id; `None` where the platform does not report it (such a peer owns nothing).
    pub pid: Option<u32>,
    /// Start time of the process (`/proc/PID/stat` field 22, clock ticks since boot);
    /// distinguishes a reused pid. `None` off Linux.
    pub start_time: Option<u64>,
    /// The user name of `uid` from the password database, or `uid N` when it has none.
    pub user: String,
    /// The process's controlling terminal as the daemon reads it (`/dev/pts/3`), if any.
    pub tty: Option<String>,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The owner record for a request this principal makes; `None` when its pid is unknown
    /// (it can then own nothing).
    pub fn as_owner(&self) -> Option<Owner> {
        Some(Owner {
            uid: self.uid,
            pid: self.pid?,
            start_time: self.start_time,
            user: self.user.clone(),
        })
    }

    /// True when this principal is the instance that made a request owned by `owner`:
    /// same uid, same pid, same process start time.
    pub fn owns(&self, owner: &Owner) -> bool {
        self.pid == Some(owner.pid) && self.uid == owner.uid && self.start_time == owner.start_time
    }

    /// `user NAME (uid U pid P)` for records and messages; every part from the OS.
    pub fn describe(&self) -> String {
        let pid = self.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
        format!("user {} (uid {} pid {pid})", self.user, self.uid)
    }
}

/// The requesting instance recorded on access requests and grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// Effective uid of the requester.
    pub uid: u32,
    /// Process id of the requester.
    pub pid: u32,
    /// Process start time (see [`Principal::start_time`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// User name of `uid` at request time.
    pub user: String,
}

impl Owner {
    /// The protocol's view of this owner (user, uid, pid; the start time stays inside).
    pub fn requester(&self) -> agentd_proto::Requester {
        agentd_proto::Requester {
            user: self.user.clone(),
            uid: self.uid,
            pid: self.pid,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {} (uid {} pid {})", self.user, self.uid, self.pid)
    }
}

/// Why a peer is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// User mode serves only the daemon's own uid.
    #[error("this agentd daemon serves only the user that started it (uid {daemon_uid}); you are uid {uid}")]
    OtherUser {
        /// The peer's uid.
        uid: u32,
        /// The daemon's uid.
        daemon_uid: u32,
    },
    /// System mode serves admins and the configured clients only.
    #[error("user {user} (uid {uid}) is not a client of this agentd daemon; an admin can add it to [daemon] clients")]
    NotAClient {
        /// The peer's user name.
        user: String,
        /// The peer's uid.
        uid: u32,
    },
}

/// Who is served and as what, from `[daemon] mode`, `clients` and `admin_group`.
#[derive(Debug, Clone)]
pub struct Roles {
    mode: Mode,
    daemon_uid: u32,
    clients: Vec<String>,
    admin_group: Option<String>,
}

impl Roles {
    /// Roles for a daemon running as `daemon_uid` in `mode`. `clients` are user or group
    /// names; `admin_group` a group whose members are admins (system mode).
    pub fn new(
        mode: Mode,
        daemon_uid: u32,
        clients: Vec<String>,
        admin_group: Option<String>,
    ) -> Self {
        Self {
            mode,
            daemon_uid,
            clients,
            admin_group,
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Classifies `peer`. Group membership and names are read from the system databases
    /// at every call, so a change to `/etc/group` applies to the next connection.
    ///
    /// # Errors
    /// [`Refusal`] when the peer is not served; its text is safe to send to the peer.
    pub fn classify(&self, peer: Peer) -> Result<Principal, Refusal> {
        let user = user_name(peer.uid);
        let role = match self.mode {
            Mode::User if peer.uid == self.daemon_uid => Role::Admin,
            Mode::User => {
                return Err(Refusal::OtherUser {
                    uid: peer.uid,
                    daemon_uid: self.daemon_uid,
                })
            }
            Mode::System => {
                let name = user.as_deref();
                if peer.uid == 0
                    || self
                        .admin_group
                        .as_deref()
                        .is_some_and(|g| in_group(name, peer.gid, g))
                {
                    Role::Admin
                } else if self
                    .clients
                    .iter()
                    .any(|c| name == Some(c.as_str()) || in_group(name, peer.gid, c))
                {
                    Role::Client
                } else {
                    return Err(Refusal::NotAClient {
                        user: user.unwrap_or_else(|| format!("uid {}", peer.uid)),
                        uid: peer.uid,
                    });
                }
            }
        };
        let stat = peer.pid.and_then(proc_stat);
        Ok(Principal {
            uid: peer.uid,
            pid: peer.pid,
            start_time: stat.as_ref().and_then(|s| s.start_time),
            user: user.unwrap_or_else(|| format!("uid {}", peer.uid)),
            tty: stat.and_then(|s| s.tty),
            role,
        })
    }
}

/// The user name of `uid` from the password database.
#[cfg(unix)]
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The user name of `uid` (not available off Unix).
#[cfg(not(unix))]
pub fn user_name(_uid: u32) -> Option<String> {
    None
}

/// True when user `name` (primary gid `gid`) belongs to group `group`: by primary group
/// or as a listed member in the group database.
#[cfg(unix)]
fn in_group(name: Option<&str>, gid: Option<u32>, group: &str) -> bool {
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if gid == Some(g.gid.as_raw()) {
        return true;
    }
    let Some(name) = name else {
        return false;
    };
    if g.mem.iter().any(|m| m == name) {
        return true;
    }
    // The primary group in the password database (the socket's gid is the process's
    // effective gid, which may differ).
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .is_some_and(|u| u.gid == g.gid)
}

#[cfg(not(unix))]
fn in_group(_name: Option<&str>, _gid: Option<u32>, _group: &str) -> bool {
    false
}

/// What the daemon reads of a peer process from `/proc/PID/stat` (Linux).
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcStat {
    start_time: Option<u64>,
    tty: Option<String>,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `proc(5)`'s `/proc/PID/stat`: field 7 `tty_nr`, field 22 `starttime`. The
/// `(comm)` field may hold spaces and parentheses, hence the split at the last `)`.
fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let tty_nr: i64 = fields.get(4)?.parse().ok()?;
    Some(ProcStat {
        start_time: fields.get(19).and_then(|s| s.parse().ok()),
        tty: tty_name(tty_nr),
    })
}

/// The device name of a `tty_nr` (Linux `dev_t` encoding: major in bits 8–15, minor in
/// bits 0–7 and 20–31); `None` for 0 (no controlling terminal).
fn tty_name(tty_nr: i64) -> Option<String> {
    if tty_nr <= 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    Some(match major {
        136..=143 => format!("/dev/pts/{}", minor + (major - 136) * 256),
        4 if minor < 64 => format!("/dev/tty{minor}"),
        4 => format!("/dev/ttyS{}", minor - 64),
        5 if minor == 1 => "/dev/console".to_owned(),
        _ => format!("tty {major}:{minor}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tty_and_start_time_from_proc_stat() {
        let stat =
            "4242 (ba) sh)) S 1 4242 4242 34816 4242 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let parsed = parse_proc_stat(stat).unwrap();
        assert_eq!(parsed.tty.as_deref(), Some("/dev/pts/0"));
        assert_eq!(parsed.start_time, Some(987654));
        let no_tty = "7 (x) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_proc_stat(no_tty).unwrap().tty, None);
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(tty_name(34816 + 3), Some("/dev/pts/3".to_owned()));
        assert_eq!(tty_name(0x0401), Some("/dev/tty1".to_owned()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn user_mode_serves_only_the_daemon_uid_as_admin() {
        let me = agentd_proto::socket::current_uid();
        let roles = Roles::new(Mode::User, me, vec![], None);
        let p = roles.classify(Peer::this_process()).unwrap();
        assert_eq!(p.role, Role::Admin);
        assert!(p.start_time.is_some());
        assert!(p.owns(&p.as_owner().unwrap()));
        let other = roles.classify(Peer {
            uid: me + 1,
            gid: None,
            pid: None,
        });
        assert!(matches!(other, Err(Refusal::OtherUser { .. })));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn system_mode_roles_come_from_uid_groups_and_clients() {
        // uid 0 is an admin; `root` as a listed client name makes no difference.
        let roles = Roles::new(Mode::System, 4242, vec!["nobody".into()], None);
        let root = Peer {
            uid: 0,
            gid: Some(0),
            pid: None,
        };
        assert_eq!(roles.classify(root).unwrap().role, Role::Admin);
        let nobody_uid = nix::unistd::User::from_name("nobody")
            .unwrap()
            .map(|u| u.uid.as_raw());
        if let Some(uid) = nobody_uid {
            let p = roles
                .classify(Peer {
                    uid,
                    gid: None,
                    pid: None,
                })
                .unwrap();
            assert_eq!(p.role, Role::Client);
            assert!(p.as_owner().is_none(), "no pid, owns nothing");
            let strict = Roles::new(Mode::System, 4242, vec![], None);
            assert!(matches!(
                strict.classify(Peer {
                    uid,
                    gid: None,
                    pid: None
                }),
                Err(Refusal::NotAClient { .. })
            ));
        }
    }

    #[test]
    fn another_process_instance_does_not_own() {
        let owner = Owner {
            uid: 1000,
            pid: 77,
            start_time: Some(10),
            user: "alice".into(),
        };
        let mut p = Principal {
            uid: 1000,
            pid: Some(77),
            start_time: Some(10),
            user: "alice".into(),
            tty: None,
            role: Role::Client,
        };
        assert!(p.owns(&owner));
        p.start_time = Some(11); // the pid was reused
        assert!(!p.owns(&owner));
        p.start_time = Some(10);
        p.uid = 1001;
        assert!(!p.owns(&owner));
    }
}
