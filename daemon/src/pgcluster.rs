//! Throwaway PostgreSQL clusters for `agentd demo` and the end-to-end tests.
//!
//! [`Cluster::start`] finds the machine's PostgreSQL server binaries, runs `initdb` in a
//! temporary directory (as the `postgres` OS user when we are root, since PostgreSQL refuses
//! to run as root), turns on `ssl` with a freshly generated CA and server certificate,
//! requires `scram-sha-256` for every login — TCP and local (Unix-socket) alike, no `trust`
//! line — and starts the server on a free loopback port. The superuser `postgres` gets a
//! random password ([`Cluster::superuser_password`], given to `initdb` through a 0600
//! `--pwfile` removed right after); the cluster's own `psql` calls pass it in the child's
//! `PGPASSWORD`, never in argv. Dropping the [`Cluster`] stops the server and deletes the
//! directory.

use anyhow::{anyhow, bail, Context as _};
use secrecy::{ExposeSecret as _, SecretString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A running throwaway cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    run_as: Option<String>,
    /// Loopback TCP port the server listens on.
    pub port: u16,
    /// Directory of the server's Unix socket (SCRAM, like TCP).
    pub socket_dir: PathBuf,
    /// PEM file of the CA that signed the server certificate (for `verify-full`).
    pub ca_file: PathBuf,
    /// The server log file.
    pub log_file: PathBuf,
    superuser_password: SecretString,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish()
    }
}

/// Where the PostgreSQL server binaries are: `$AGENTD_PG_BINDIR`, the newest
/// `/usr/lib/postgresql/*/bin`, `pg_config --bindir`, or `initdb` on `PATH`.
///
/// # Errors
/// None found: the message names the package to install.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("AGENTD_PG_BINDIR").map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("AGENTD_PG_BINDIR={} has no initdb/pg_ctl", dir.display());
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; install them: \
         `sudo apt-get install postgresql` (Debian/Ubuntu), `sudo dnf install postgresql-server` (Fedora), \
         `brew install postgresql@15` (macOS), or set AGENTD_PG_BINDIR"
    )
}

/// The `psql` client: next to the server binaries, else on `PATH`.
pub fn psql_path() -> PathBuf {
    find_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        agentd_proto::socket::current_uid() == 0
    }
    #[cfg(not(unix))]
    {
        false
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn check(output: Output, what: &str) -> anyhow::Result<Output> {
    if output.status.success() {
        return Ok(output);
    }
    bail!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Cluster {
    /// Creates and starts a cluster (blocking; a few seconds).
    ///
    /// # Errors
    /// Missing binaries, `initdb`/`pg_ctl` failures (with their output), or file errors.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_noting(|_| Ok(()))
    }

    /// Like [`Cluster::start`], calling `note(dir)` with the cluster's directory as soon as
    /// it exists, before anything runs in it (the demo records it for a later sweep).
    ///
    /// # Errors
    /// As [`Cluster::start`], or `note`'s error (the directory is removed then).
    pub fn start_noting(note: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("agentd-pg-").tempdir()?;
        note(dir.path())?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        if let Some(user) = &run_as {
            chown_tree(dir.path(), user)?;
        }
        let cluster = Cluster {
            port: free_port()?,
            ca_file: dir.path().join("ca.crt"),
            log_file: dir.path().join("postgres.log"),
            socket_dir,
            bin_dir,
            run_as,
            dir,
            superuser_password: SecretString::from(random_hex(24)),
        };
        cluster.initdb(&data_dir)?;
        cluster.write_tls_files(&data_dir)?;
        cluster.write_config(&data_dir)?;
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&cluster.log_file))?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for a server binary, run as the `postgres` user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// The superuser's password (user `postgres`, Unix socket or TCP).
    pub fn superuser_password(&self) -> &SecretString {
        &self.superuser_password
    }

    /// `initdb` with SCRAM for local and host logins; the superuser password goes through
    /// a 0600 file owned by the server user, removed when initdb is done.
    fn initdb(&self, data_dir: &Path) -> anyhow::Result<()> {
        let pwfile = self.dir.path().join("superuser.pw");
        crate::fsutil::write_private_file(
            &pwfile,
            self.superuser_password.expose_secret().as_bytes(),
        )?;
        if let Some(user) = &self.run_as {
            chown_tree(&pwfile, user)?;
        }
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(data_dir)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-U",
                "postgres",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb");
        let _ = std::fs::remove_file(&pwfile);
        check(out?, "initdb")?;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) -> anyhow::Result<()> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(args);
        if let Some(log) = log {
            cmd.arg(log);
        }
        cmd.arg("-D").arg(self.data_dir());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl")?;
        check(
            out,
            &format!("pg_ctl {}", args.first().copied().unwrap_or_default()),
        )
        .map_err(|e| {
            anyhow!(
                "{e}\nserver log {}:\n{}",
                self.log_file.display(),
                std::fs::read_to_string(&self.log_file).unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// A CA and a server certificate ([`localhost_ca_and_cert`]), written as `ca.crt`
    /// (outside the data dir) and `server.crt` / `server.key` (0600, owned by the server user).
    fn write_tls_files(&self, data_dir: &Path) -> anyhow::Result<()> {
        let (ca, cert, key) = localhost_ca_and_cert("agentd throwaway CA")?;
        std::fs::write(&self.ca_file, ca.pem())?;
        let crt = data_dir.join("server.crt");
        let key_file = data_dir.join("server.key");
        std::fs::write(&crt, cert.pem())?;
        crate::fsutil::write_private_file(&key_file, key.serialize_pem().as_bytes())?;
        if let Some(user) = &self.run_as {
            chown_tree(&crt, user)?;
            chown_tree(&key_file, user)?;
        }
        Ok(())
    }

    fn write_config(&self, data_dir: &Path) -> anyhow::Result<()> {
        let conf = format!(
            "\n# agentd throwaway cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{sock}'\nssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            port = self.port,
            sock = self.socket_dir.display()
        );
        let mut text = std::fs::read_to_string(data_dir.join("postgresql.conf"))?;
        text.push_str(&conf);
        std::fs::write(data_dir.join("postgresql.conf"), text)?;
        let hba = "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n";
        std::fs::write(data_dir.join("pg_hba.conf"), hba)?;
        Ok(())
    }

    /// A `psql -X -q -v ON_ERROR_STOP=1` command connected as the superuser to `database`
    /// over the cluster's Unix socket, its password in the child's `PGPASSWORD` (not argv;
    /// std keeps a copy of the environment until the command is dropped). Callers add the
    /// output flags and the SQL (`-c` or `-f -`).
    pub fn superuser_psql(&self, database: &str) -> Command {
        let mut cmd = Command::new(psql_path());
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", self.superuser_password.expose_secret());
        cmd
    }

    /// Runs SQL as the superuser over the Unix socket with `psql -v ON_ERROR_STOP=1 -At`;
    /// returns stdout. The SQL goes through stdin, never argv, so a password in it does not
    /// show in the process list.
    ///
    /// # Errors
    /// psql's stderr when it fails.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut child = self
            .superuser_psql(database)
            .args(["-At", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, sql.as_bytes()).context("writing SQL to psql")?;
        }
        let out = check(child.wait_with_output()?, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where the cluster's files live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Restarts the server (fast shutdown, then start), e.g. after `ALTER SYSTEM` of a
    /// setting that needs a restart such as `max_connections`.
    ///
    /// # Errors
    /// pg_ctl's failure, with the server log.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(
            &["restart", "-m", "fast", "-w", "-t", "60", "-l"],
            Some(&self.log_file),
        )
    }

    /// Stops the server (fast shutdown).
    ///
    /// # Errors
    /// pg_ctl's failure.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"], None)
    }

    /// Stops the server if it runs (fast shutdown; `postmaster.pid` present) and removes
    /// the cluster's directory. Safe to call again.
    ///
    /// # Errors
    /// pg_ctl's failure, or the directory cannot be removed.
    pub fn stop_and_remove(&self) -> anyhow::Result<()> {
        if self.data_dir().join("postmaster.pid").exists() {
            self.stop()?;
        }
        match std::fs::remove_dir_all(self.dir.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.dir.path().display()))
            }
            _ => Ok(()),
        }
    }

    /// Starts the server again after [`Cluster::stop`] (same data, port and certificates);
    /// waits until it accepts connections.
    ///
    /// # Errors
    /// pg_ctl's failure.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.log_file))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"], None);
        }
    }
}

/// Stops the server of a cluster directory a dead process left (`DIR/data`, immediate
/// shutdown, as `postgres` when we are root). Only when `postmaster.pid` names a live
/// process whose working directory is that data directory (Linux `/proc`), so a stale pid
/// file after a reboot never signals an unrelated process; otherwise nothing runs and
/// that is success.
///
/// # Errors
/// No server binaries, or pg_ctl's failure.
pub fn stop_stale(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("data");
    let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return Ok(());
    };
    let pid = pid_file.lines().next().unwrap_or_default().trim();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let data_real = std::fs::canonicalize(&data).ok();
    if pid.is_empty() || cwd.is_none() || cwd != data_real {
        return Ok(());
    }
    let pg_ctl = find_bin_dir()?.join("pg_ctl");
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        Command::new(pg_ctl)
    };
    let out = cmd
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .context("running pg_ctl")?;
    check(out, "pg_ctl stop")?;
    Ok(())
}

/// `bytes` random bytes as lowercase hex (2 characters per byte).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A throwaway CA named `ca_name` and a server certificate it signed for `localhost` and
/// `127.0.0.1`: `(ca, server certificate, server key)`. Shared by the test clusters, the
/// demo's HTTPS echo upstream and the HTTP benchmark's upstream.
///
/// # Errors
/// Key generation or signing (rcgen).
pub fn localhost_ca_and_cert(
    ca_name: &str,
) -> anyhow::Result<(rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((ca, cert, key))
}

/// `chown -R user:user path`.
fn chown_tree(path: &Path, user: &str) -> anyhow::Result<()> {
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .output()
        .context("running chown")?;
    check(out, "chown")?;
    Ok(())
}
