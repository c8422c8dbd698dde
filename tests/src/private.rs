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

/// A port on 127.0.0.1 that nothing listens on right now (bound to port 0, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
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

/// `scripts/kafka.sh`: the one place that knows how to run an Apache Kafka node.
fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

/// Runs `scripts/kafka.sh` with `args` to completion; fails with its output unless it succeeded.
async fn kafka_sh(args: &[&str], heap: &str, what: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("bash")
        .arg(kafka_script())
        .args(args)
        .env("KAFKA_HEAP", heap)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("{what}: cannot run scripts/kafka.sh"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "{what} failed ({}): scripts/kafka.sh {args:?}\n{text}",
            output.status
        );
    }
    Ok(text)
}

/// One Apache Kafka node (KRaft, broker and controller in one process) in a directory of its own.
#[derive(Debug)]
struct KafkaNode {
    id: u32,
    port: u16,
    dir: PathBuf,
    heap: &'static str,
}

impl KafkaNode {
    fn dir(&self) -> &str {
        self.dir.to_str().unwrap_or_default()
    }

    async fn start(&self) -> anyhow::Result<()> {
        kafka_sh(&["start", self.dir()], self.heap, "starting a Kafka node").await?;
        Ok(())
    }

    /// SIGTERM (a controlled shutdown), or SIGKILL with `kill`; waits until the process is gone.
    async fn stop(&self, kill: bool) -> anyhow::Result<()> {
        let mut args = vec!["stop"];
        if kill {
            args.push("--kill");
        }
        args.push(self.dir());
        kafka_sh(&args, self.heap, "stopping a Kafka node").await?;
        Ok(())
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

    /// SIGKILL without waiting, for `Drop`.
    fn kill_now(&self) {
        let _ = Command::new("bash")
            .arg(kafka_script())
            .args(["stop", "--kill", self.dir()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Creates `count` nodes of one fresh cluster on free ports under `root`, formatted, not started.
async fn init_nodes(root: &Path, count: u32, heap: &'static str) -> anyhow::Result<Vec<KafkaNode>> {
    let cluster_id = kafka_sh(&["cluster-id"], heap, "making a Kafka cluster id").await?;
    let cluster_id = cluster_id
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
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
            heap,
        };
        kafka_sh(
            &[
                "init",
                node.dir(),
                &id.to_string(),
                &port.to_string(),
                &controller.to_string(),
                &voters,
                &cluster_id,
                &replication,
            ],
            heap,
            "formatting a Kafka node",
        )
        .await?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Waits until all of `running` are registered, asking `ask` (a node's own address waits for it).
async fn wait_ready(ask: &[&KafkaNode], running: &[&KafkaNode]) -> anyhow::Result<()> {
    let bootstrap = bootstrap_of(ask);
    let count = running.len().to_string();
    let mut args = vec!["wait", &bootstrap, &count, "120"];
    args.extend(running.iter().map(|node| node.dir()));
    kafka_sh(&args, "128m", "waiting for Kafka").await?;
    Ok(())
}

fn bootstrap_of(nodes: &[&KafkaNode]) -> String {
    nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port))
        .collect::<Vec<_>>()
        .join(",")
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
        let mut nodes = init_nodes(&dir.0, 1, "384m").await?;
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
        self.node.start().await?;
        wait_ready(&[&self.node], &[&self.node]).await
    }

    /// Stops the broker (SIGTERM: a controlled shutdown; SIGKILL after 30 s) and waits until it
    /// exited. Its data stays. Clients see the broker go away, which is the outage to simulate.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.node.is_running() {
            bail!("the private broker is not running");
        }
        self.node.stop(false).await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.node.kill_now();
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
        let nodes = init_nodes(&dir.0, 3, "384m").await?;
        let cluster = Self {
            nodes,
            _one_at_a_time: guard,
            _dir: dir,
        };
        for node in &cluster.nodes {
            node.start().await?;
        }
        let all: Vec<&KafkaNode> = cluster.nodes.iter().collect();
        wait_ready(&all, &all).await?;
        Ok(cluster)
    }

    /// Bootstrap servers: every node.
    pub fn brokers(&self) -> String {
        bootstrap_of(&self.nodes.iter().collect::<Vec<_>>())
    }

    fn node(&self, id: u32) -> anyhow::Result<&KafkaNode> {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .with_context(|| format!("the cluster has no node {id} (1, 2, 3)"))
    }

    /// The log of node `id`.
    pub fn log(&self, id: u32) -> anyhow::Result<PathBuf> {
        Ok(self.node(id)?.log())
    }

    /// SIGKILL to node `id`: no controlled shutdown, no chance to hand leadership over.
    pub async fn kill(&self, id: u32) -> anyhow::Result<()> {
        self.node(id)?.stop(true).await
    }

    /// SIGTERM to node `id` (a controlled shutdown) and waits until it exited.
    pub async fn stop(&self, id: u32) -> anyhow::Result<()> {
        self.node(id)?.stop(false).await
    }

    /// SIGTERM to the nodes `ids` at once (none waits for a quorum the others left) and waits
    /// until all of them exited.
    pub async fn stop_nodes(&self, ids: &[u32]) -> anyhow::Result<()> {
        let mut args = vec!["stop"];
        for &id in ids {
            args.push(self.node(id)?.dir());
        }
        kafka_sh(&args, "128m", "stopping cluster nodes").await?;
        Ok(())
    }

    /// SIGTERM to every node at once, and waits until all of them exited.
    pub async fn stop_all(&self) -> anyhow::Result<()> {
        self.stop_nodes(&[1, 2, 3]).await
    }

    /// Starts node `id` again (same port, same data) and waits until it answers itself and every
    /// running node is registered.
    pub async fn start_node(&self, id: u32) -> anyhow::Result<()> {
        let node = self.node(id)?;
        node.start().await?;
        let running: Vec<&KafkaNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
        wait_ready(&[node], &running).await
    }

    /// Starts every stopped node and waits until all three are registered.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.start().await?;
        }
        let all: Vec<&KafkaNode> = self.nodes.iter().collect();
        wait_ready(&all, &all).await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill_now();
        }
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
