//! Services of a test's own: a Kafka-protocol broker and a PostgreSQL server that one test may stop
//! and restart without disturbing the shared services (`KAFKA_BROKERS`, `DATABASE_URL`) that other
//! tests use at the same time.
//!
//! Each runs on a free port of 127.0.0.1 with its data in a directory of its own under the temp
//! directory, and is stopped when the value is dropped; the directory is removed then, unless the
//! test is panicking (it is kept, and its path printed, for inspection). Only processes started here
//! are ever signalled, by their process id.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use uuid::Uuid;

/// A port on 127.0.0.1 that nothing listens on right now (bound to port 0, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn port_answers(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("<cannot read {}: {error}>", path.display()),
    }
}

/// A fresh directory under the temp directory, removed on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping {} for inspection", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (e.g. `INT`, `TERM`) to a process this module started.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Runs a command to completion; fails with its output unless it succeeded.
fn run(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {command:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}): {command:?}\n{text}", output.status);
    }
    Ok(text)
}

/// A `tansu` broker of the test's own, on a free port, keeping its data in SQLite in a directory
/// of its own so that it survives [`stop`](Self::stop) and [`start_again`](Self::start_again).
/// Killed on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    program: PathBuf,
    port: u16,
    child: Option<Child>,
    // Declared last: removed after the broker was killed.
    dir: ScratchDir,
}

impl PrivateBroker {
    /// Starts a broker and waits until it answers and its SQLite schema is indexed.
    pub async fn start() -> anyhow::Result<Self> {
        let program = find_tansu()?;
        let dir = ScratchDir::new("outbox-tansu")?;
        let mut broker = Self {
            program,
            port: free_port()?,
            child: None,
            dir,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// `host:port` to give clients as bootstrap servers.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the broker's output goes (all its runs, appended).
    pub fn log(&self) -> PathBuf {
        self.dir.0.join("tansu.log")
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Starts the broker (again) on the same port and data directory; waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the private broker is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .context("opening the broker's log")?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.program)
            .current_dir(&self.dir.0)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            // tansu resolves a sqlite:// path against its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_answers(self.port) {
            if !self.is_running() {
                bail!(
                    "the private broker exited at start-up (port {}):\n{}",
                    self.port,
                    log_tail(&self.log(), 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the private broker does not answer on port {} after 60 s:\n{}",
                    self.port,
                    log_tail(&self.log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.index_headers().await
    }

    /// Adds the index tansu 0.6's SQLite schema lacks (see `scripts/index-tansu-headers.py`).
    async fn index_headers(&self) -> anyhow::Result<()> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/index-tansu-headers.py");
        let database = self.dir.0.join("tansu.db");
        let output = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&database)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running python3 to index the private broker's header table")?;
        if !output.status.success() {
            bail!(
                "indexing the private broker's header table failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Stops the broker and waits (up to 15 s, then SIGKILL) until it exited. Its data stays.
    ///
    /// The signal is SIGINT, not SIGTERM: on SIGTERM tansu 0.6 shuts its storage down at once but
    /// keeps its connections open for up to 5 s more, answering every request with
    /// UNKNOWN_SERVER_ERROR; on SIGINT it shuts the storage down and exits at once. Clients see the
    /// broker go away, which is the outage to simulate.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the private broker is not running");
        };
        if child.try_wait()?.is_none() {
            signal(child.id(), "INT")?;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                tracing::warn!("the private broker ignored SIGINT for 15 s; killed it");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tansu` from PATH, else from `$HOME/.cargo/bin`.
fn find_tansu() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("tansu"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .context(
            "the `tansu` broker is not installed (neither on PATH nor in $HOME/.cargo/bin); \
             `scripts/services.sh` installs it",
        )
}

/// A PostgreSQL server of the test's own: a fresh cluster (`initdb`) on a free port, trust
/// authentication, its unix socket inside its own directory. Stopped on drop.
///
/// As root, the server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    port: u16,
    data: PathBuf,
    as_postgres: bool,
    running: bool,
    // Declared last: removed after the server stopped.
    root: ScratchDir,
}

impl PrivatePostgres {
    /// Creates the cluster and starts the server; waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = find_postgres_bin()?;
        let root = ScratchDir::new("outbox-pg")?;
        let as_postgres = is_root()?;
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&root.0),
                "handing the private cluster's directory to the postgres user",
            )?;
        }
        let mut server = Self {
            bin,
            port: free_port()?,
            data: root.0.join("data"),
            as_postgres,
            running: false,
            root,
        };
        let initdb = server.bin.join("initdb");
        let data = server.data.clone();
        let mut command = server.command(&initdb);
        command.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        tokio::task::spawn_blocking(move || run(&mut command, "initdb of the private cluster"))
            .await??;
        let settings = format!(
            "\n# outbox-tests: a private server\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n",
            server.port,
            server.root.0.display()
        );
        let conf = server.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        server.start_again().await?;
        Ok(server)
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `database` on the server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> PathBuf {
        self.root.0.join("postgres.log")
    }

    /// Starts the (stopped) server; returns once it accepts connections.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(
            &["-w", "-t", "60", "start"],
            "starting the private PostgreSQL",
        )
        .await?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`: open sessions are ended at once).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(
            &["-w", "-t", "60", "-m", "fast", "stop"],
            "stopping the private PostgreSQL",
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// Stops the server (fast), leaves it down for `down`, starts it again.
    pub async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        self.stop().await?;
        tokio::time::sleep(down).await;
        self.start_again().await
    }

    async fn pg_ctl(&self, args: &[&str], what: &'static str) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = self.command(&pg_ctl);
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log())
            .args(args)
            // pg_ctl start leaves the server running with these pipes open; do not wait on them.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let log = self.log();
        tokio::task::spawn_blocking(move || {
            let status = command
                .stdin(Stdio::null())
                .status()
                .with_context(|| format!("{what}: cannot run {command:?}"))?;
            if !status.success() {
                bail!("{what} failed ({status}):\n{}", log_tail(&log, 20));
            }
            Ok(())
        })
        .await?
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // The postgres user may not be allowed into the test's working directory.
        command.current_dir(&self.root.0);
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let pg_ctl = self.bin.join("pg_ctl");
            let _ = self
                .command(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn is_root() -> anyhow::Result<bool> {
    let uid = run(Command::new("id").arg("-u"), "asking for the user id")?;
    Ok(uid.trim() == "0")
}

/// The `bin` directory of the highest PostgreSQL version under /usr/lib/postgresql.
fn find_postgres_bin() -> anyhow::Result<PathBuf> {
    const ROOT: &str = "/usr/lib/postgresql";
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).with_context(|| {
        format!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under {ROOT}/*/bin; \
             install the postgresql package (scripts/services.sh does)"
        )
    })
}
