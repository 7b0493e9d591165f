//! A throwaway PostgreSQL server for tests: Debian's PostgreSQL 15 binaries, a fresh
//! cluster in a temporary folder, trust authentication, listening on a unix socket in
//! that folder and on a free 127.0.0.1 port. Stopped and removed on drop.
//!
//! [`TempPostgres::start_tls`] also serves TLS with a certificate for `localhost` and
//! `127.0.0.1` issued by a CA made for that server alone ([`TempPostgres::tls_ca`]).
//!
//! Tuned for speed, not durability (`--no-sync`, `fsync=off`): never point it at data
//! that matters.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where Debian puts PostgreSQL 15's server programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The operating system user that runs the server when the tests run as root
/// (PostgreSQL refuses to run as root).
const SERVER_USER: &str = "postgres";

/// A running test server.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    as_user: bool,
    started_in: std::time::Duration,
    tls_ca: Option<PathBuf>,
}

fn run(as_user: bool, program: &Path, args: &[&str]) -> Result<Output, String> {
    let mut cmd = if as_user {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args);
    // The server inherits the working folder: one `postgres` can enter.
    cmd.current_dir("/");
    cmd.output()
        .map_err(|e| format!("running {}: {e}", program.display()))
}

fn describe_failure(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn unique_dir() -> Result<PathBuf, String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "kiln-pgtest-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

impl TempPostgres {
    /// Makes a cluster and starts the server (about 1.5 s); the error says what failed,
    /// with the server's log when it would not start.
    pub fn start() -> Result<TempPostgres, String> {
        TempPostgres::start_opts(false)
    }

    /// Like [`TempPostgres::start`], and the server also accepts TLS (`ssl=on`) with a
    /// certificate whose CA is at [`TempPostgres::tls_ca`].
    pub fn start_tls() -> Result<TempPostgres, String> {
        TempPostgres::start_opts(true)
    }

    /// The PEM file of the CA that issued the server's TLS certificate.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    fn start_opts(tls: bool) -> Result<TempPostgres, String> {
        let begin = Instant::now();
        let bin = Path::new(BIN_DIR);
        for prog in ["initdb", "pg_ctl", "postgres"] {
            if !bin.join(prog).is_file() {
                return Err(format!(
                    "PostgreSQL 15 is missing ({} not found): install postgresql \
                     (scripts/deps.sh does)",
                    bin.join(prog).display()
                ));
            }
        }
        let as_user = fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .map_err(|e| format!("reading /proc/self to learn the user id: {e}"))?;
        let dir = unique_dir()?;
        // Built before anything can fail, so Drop cleans up whatever exists.
        let mut pg = TempPostgres {
            dir,
            port: 0,
            as_user,
            started_in: std::time::Duration::ZERO,
            tls_ca: None,
        };
        if as_user {
            let out = Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(&pg.dir)
                .output()
                .map_err(|e| format!("running chown: {e}"))?;
            if !out.status.success() {
                return Err(describe_failure(
                    &format!("chown {SERVER_USER}: {}", pg.dir.display()),
                    &out,
                ));
            }
        }
        let data = pg.data_dir();
        let data_text = data.to_string_lossy().into_owned();
        let out = run(
            as_user,
            &bin.join("initdb"),
            &[
                "-D",
                &data_text,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        if !out.status.success() {
            return Err(describe_failure("initdb", &out));
        }
        let mut ssl_opts = String::new();
        if tls {
            ssl_opts = pg.write_tls_files()?;
        }
        // Another process may take the port between probing and binding: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port()?;
            let opts = format!(
                "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=200\
                 {ssl_opts}",
                pg.dir.display(),
                pg.port
            );
            let log = pg.dir.join("server.log");
            let log_text = log.to_string_lossy().into_owned();
            let out = run(
                as_user,
                &bin.join("pg_ctl"),
                &[
                    "-D", &data_text, "-l", &log_text, "-o", &opts, "-w", "-t", "60", "start",
                ],
            )?;
            if out.status.success() {
                pg.started_in = begin.elapsed();
                return Ok(pg);
            }
            let log_tail = fs::read_to_string(&log).unwrap_or_default();
            last = format!(
                "{}; server log {}: {}",
                describe_failure("pg_ctl start", &out),
                log.display(),
                log_tail.trim()
            );
            if !log_tail.contains("could not bind") && !log_tail.contains("in use") {
                break;
            }
        }
        Err(last)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Makes a CA and a server certificate for localhost and 127.0.0.1, writes the CA
    /// beside the cluster and the certificate and key into the data folder (the key 0600
    /// and owned by the server's user, as PostgreSQL demands); returns the server options.
    fn write_tls_files(&mut self) -> Result<String, String> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail("making the test CA key", &e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| fail("test CA parameters", &e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln pgtest CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| fail("self-signing the test CA", &e))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail("making the server key", &e))?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])
            .map_err(|e| fail("server certificate parameters", &e))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let issuer = Issuer::new(ca_params, &ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| fail("signing the server certificate", &e))?;
        let ca_path = self.dir.join("ca.pem");
        let data = self.data_dir();
        let crt = data.join("server.crt");
        let key_path = data.join("server.key");
        for (path, text) in [
            (&ca_path, ca_cert.pem()),
            (&crt, cert.pem()),
            (&key_path, key.serialize_pem()),
        ] {
            fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| format!("chmod 600 {}: {e}", key_path.display()))?;
        if self.as_user {
            for path in [&crt, &key_path] {
                let out = Command::new("chown")
                    .arg(format!("{SERVER_USER}:"))
                    .arg(path)
                    .output()
                    .map_err(|e| format!("running chown: {e}"))?;
                if !out.status.success() {
                    return Err(describe_failure(
                        &format!("chown {SERVER_USER}: {}", path.display()),
                        &out,
                    ));
                }
            }
        }
        self.tls_ca = Some(ca_path);
        Ok(format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            crt.display(),
            key_path.display()
        ))
    }

    /// URL of the `postgres` database as superuser `postgres` over TCP.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates an empty database `name` (letters, digits, `_`) and returns its URL.
    pub fn database(&self, name: &str) -> Result<String, String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("database name {name:?}: use a-z, 0-9 and _"));
        }
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls)
            .map_err(|e| format!("connecting to {}: {e}", self.url()))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("creating database {name}: {e}"))?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long `start` took.
    pub fn started_in(&self) -> std::time::Duration {
        self.started_in
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        if data.join("postmaster.pid").exists() {
            let data_text = data.to_string_lossy().into_owned();
            // Immediate: the data is thrown away, so no checkpoint is worth waiting for.
            let _ = run(
                self.as_user,
                &Path::new(BIN_DIR).join("pg_ctl"),
                &["-D", &data_text, "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
