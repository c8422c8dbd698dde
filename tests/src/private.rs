//! Services of a test's own: an Apache Kafka broker, a three-node Kafka cluster and a PostgreSQL
//! server that one test may stop, kill and restart without disturbing the shared services
//! (`KAFKA_BROKERS`, `DATABASE_URL`) that other tests use at the same time.
//!
//! Each runs on a free port of 127.0.0.1 with its data in a directory of its own under the temp
//! directory, and is stopped when the value is dropped; the directory is removed then, unless the
//! test is panicking (it is kept, and its path printed, for inspection). Only processes started here
//! are ever signalled, by their process id.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use uuid::Uuid;

/// Where [`free_port`] looks: below Linux's default range of ephemeral ports (32768-60999), which
/// every outgoing connection of the machine draws from. A port the system handed out (bound to
/// port 0) could be taken by any client's connection between the pick and the server's bind; a
/// port below that range can only be taken by another listener.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that nothing listens on right now, for a server that cannot listen on port
/// 0 and say which port it got (a Kafka node, whose quorum names its peers' ports beforehand).
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1_000 {
        let random = Uuid::now_v7().as_u128() as u64;
        let span = u64::from(PORTS.end - PORTS.start);
        let port = PORTS.start + u16::try_from(random % span).unwrap_or_default();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 in {PORTS:?} after 1,000 tries")
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

/// Runs a command to completion; returns its standard output, or fails with all of its output
/// unless it succeeded.
fn run(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {command:?}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// `bash scripts/kafka.sh ARGS`: the one place that knows how to run an Apache Kafka node.
fn kafka_command<'a>(args: impl IntoIterator<Item = &'a str>) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh"))
        .args(args);
    command
}

/// Runs `command` with [`run`] off the async runtime.
async fn run_blocking(mut command: Command, what: &'static str) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || run(&mut command, what)).await?
}

/// `kafka.sh stop [--kill] DIR...`: every node signalled first, then all waited for.
fn stop_command(nodes: &[&KafkaNode], kill: bool) -> Command {
    let flag = kill.then_some("--kill");
    kafka_command(
        ["stop"]
            .into_iter()
            .chain(flag)
            .chain(nodes.iter().map(|node| node.dir())),
    )
}

/// SIGTERM (a controlled shutdown; SIGKILL after 30 s) or, with `kill`, SIGKILL to `nodes` at
/// once, and waits until all of them exited.
async fn stop_nodes(nodes: &[&KafkaNode], kill: bool) -> anyhow::Result<()> {
    run_blocking(stop_command(nodes, kill), "stopping Kafka nodes").await?;
    Ok(())
}

/// Starts `nodes` (each on its own port and data) and waits until all of them answer, asking each
/// at its own address, and every other running node of `all` is registered.
async fn start_nodes(nodes: &[&KafkaNode], all: &[KafkaNode]) -> anyhow::Result<()> {
    for node in nodes {
        let mut start = kafka_command(["start", node.dir()]);
        start.env("KAFKA_HEAP", KAFKA_HEAP);
        run_blocking(start, "starting a Kafka node").await?;
    }
    let bootstrap = bootstrap_of(nodes);
    let running: Vec<&KafkaNode> = all.iter().filter(|node| node.is_running()).collect();
    let count = running.len().to_string();
    let wait = ["wait", &bootstrap, &count, "120"]
        .into_iter()
        .chain(running.iter().map(|node| node.dir()));
    run_blocking(kafka_command(wait), "waiting for Kafka").await?;
    Ok(())
}

/// The heap of every node a test starts.
const KAFKA_HEAP: &str = "384m";

/// One Apache Kafka node (KRaft, broker and controller in one process) in a directory of its own.
#[derive(Debug)]
struct KafkaNode {
    id: u32,
    port: u16,
    dir: PathBuf,
}

impl KafkaNode {
    fn dir(&self) -> &str {
        self.dir.to_str().unwrap_or_default()
    }

    fn is_running(&self) -> bool {
        std::fs::read_to_string(self.dir.join("kafka.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    fn log(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }
}

/// Creates `count` nodes of one fresh cluster on free ports under `root`, formatted, not started.
async fn init_nodes(root: &Path, count: u32) -> anyhow::Result<Vec<KafkaNode>> {
    let cluster_id =
        run_blocking(kafka_command(["cluster-id"]), "making a Kafka cluster id").await?;
    let cluster_id = cluster_id.trim().to_owned();
    let mut ports = Vec::new();
    for _ in 0..count {
        ports.push((free_port()?, free_port()?));
    }
    let voters = ports
        .iter()
        .zip(1..)
        .map(|((_, controller), id)| format!("{id}@127.0.0.1:{controller}"))
        .collect::<Vec<_>>()
        .join(",");
    let replication = count.min(3).to_string();
    let mut nodes = Vec::new();
    for ((port, controller), id) in ports.into_iter().zip(1..) {
        let node = KafkaNode {
            id,
            port,
            dir: root.join(format!("node-{id}")),
        };
        let init = kafka_command([
            "init",
            node.dir(),
            &id.to_string(),
            &port.to_string(),
            &controller.to_string(),
            &voters,
            &cluster_id,
            &replication,
        ]);
        run_blocking(init, "formatting a Kafka node").await?;
        nodes.push(node);
    }
    Ok(nodes)
}

fn bootstrap_of(nodes: &[&KafkaNode]) -> String {
    nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// SIGKILL to `nodes` without a runtime, for `Drop`.
fn kill_now(nodes: &[&KafkaNode]) {
    let _ = run(&mut stop_command(nodes, true), "killing Kafka nodes");
}

/// An Apache Kafka broker of the test's own (one KRaft node on free ports, its data in a directory
/// of its own) so that stopping it never disturbs the shared broker. Its data survives
/// [`stop`](Self::stop) and [`start_again`](Self::start_again). Killed on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    node: KafkaNode,
    // Declared last: removed after the broker was killed.
    _dir: ScratchDir,
}

impl PrivateBroker {
    /// Starts a broker and waits until it answers a cluster-metadata request.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = ScratchDir::new("outbox-kafka")?;
        let mut nodes = init_nodes(&dir.0, 1).await?;
        let node = nodes.pop().context("no node was made")?;
        let mut broker = Self { node, _dir: dir };
        broker.start_again().await?;
        Ok(broker)
    }

    /// `host:port` to give clients as bootstrap servers.
    pub fn brokers(&self) -> String {
        bootstrap_of(&[&self.node])
    }

    /// Where the broker's output goes (all its runs, appended).
    pub fn log(&self) -> PathBuf {
        self.node.log()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// Starts the broker (again) on the same port and data directory; waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.node.is_running() {
            bail!("the private broker is already running");
        }
        start_nodes(&[&self.node], std::slice::from_ref(&self.node)).await
    }

    /// Stops the broker (SIGTERM: a controlled shutdown; SIGKILL after 30 s) and waits until it
    /// exited. Its data stays. Clients see the broker go away, which is the outage to simulate.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.node.is_running() {
            bail!("the private broker is not running");
        }
        stop_nodes(&[&self.node], false).await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        kill_now(&[&self.node]);
    }
}

/// One three-node cluster at a time in a test process: three JVMs per test on two cores are
/// enough, and the broker-fault tests measure the relay, not a starved machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A three-node Apache Kafka cluster of the test's own (KRaft, each node broker and controller,
/// replication factor 3, `min.insync.replicas=2`) on free ports, whose nodes a test may kill, stop
/// and start by id (1, 2, 3). Only one exists at a time per test process (others wait); killed on
/// drop.
#[derive(Debug)]
pub struct PrivateCluster {
    nodes: Vec<KafkaNode>,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
    // Declared last: removed after the nodes were killed.
    _dir: ScratchDir,
}

impl PrivateCluster {
    /// Starts the three nodes and waits until all of them are registered.
    pub async fn start() -> anyhow::Result<Self> {
        let guard = ONE_CLUSTER_AT_A_TIME.lock().await;
        let dir = ScratchDir::new("outbox-kafka-cluster")?;
        let cluster = Self {
            nodes: init_nodes(&dir.0, 3).await?,
            _one_at_a_time: guard,
            _dir: dir,
        };
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Bootstrap servers: every node.
    pub fn brokers(&self) -> String {
        bootstrap_of(&self.all())
    }

    fn all(&self) -> Vec<&KafkaNode> {
        self.nodes.iter().collect()
    }

    fn nodes(&self, ids: &[u32]) -> anyhow::Result<Vec<&KafkaNode>> {
        ids.iter()
            .map(|&id| {
                self.nodes
                    .iter()
                    .find(|node| node.id == id)
                    .with_context(|| format!("the cluster has no node {id} (1, 2, 3)"))
            })
            .collect()
    }

    /// The log of node `id`.
    pub fn log(&self, id: u32) -> anyhow::Result<PathBuf> {
        Ok(self.nodes(&[id])?[0].log())
    }

    /// SIGKILL to node `id`: no controlled shutdown, no chance to hand leadership over.
    pub async fn kill(&self, id: u32) -> anyhow::Result<()> {
        stop_nodes(&self.nodes(&[id])?, true).await
    }

    /// SIGTERM to node `id` (a controlled shutdown) and waits until it exited.
    pub async fn stop(&self, id: u32) -> anyhow::Result<()> {
        self.stop_nodes(&[id]).await
    }

    /// SIGTERM to the nodes `ids` at once (none waits for a quorum the others left) and waits
    /// until all of them exited.
    pub async fn stop_nodes(&self, ids: &[u32]) -> anyhow::Result<()> {
        stop_nodes(&self.nodes(ids)?, false).await
    }

    /// SIGTERM to every node at once, and waits until all of them exited.
    pub async fn stop_all(&self) -> anyhow::Result<()> {
        stop_nodes(&self.all(), false).await
    }

    /// Starts node `id` again (same port, same data) and waits until it answers itself and every
    /// running node is registered.
    pub async fn start_node(&self, id: u32) -> anyhow::Result<()> {
        start_nodes(&self.nodes(&[id])?, &self.nodes).await
    }

    /// Starts every stopped node and waits until all three are registered.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        start_nodes(&self.all(), &self.nodes).await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        kill_now(&self.all());
    }
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
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with settings of the test's own, lines written to `postgresql.conf`
    /// before the first start, e.g. `"wal_level = logical"` for WAL capture.
    pub async fn start_with(settings: &[&str]) -> anyhow::Result<Self> {
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
        let mut conf_text = format!(
            "\n# outbox-tests: a private server\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n",
            server.port,
            server.root.0.display()
        );
        for setting in settings {
            conf_text.push_str(setting);
            conf_text.push('\n');
        }
        let conf = server.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&conf_text);
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
