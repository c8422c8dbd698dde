//! Operating the relay: `config check`, the Prometheus metrics scraped from a running relay, and the
//! health and readiness probes.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::Message;
use outbox_tests::private::PrivateBroker;
use outbox_tests::{ANY_PORT, Fixture, RelayProcess, TestDb, create_topic, http_get, init_logs};
use prometheus_parse::{Sample, Scrape, Value};
use tokio::process::Command;
use uuid::Uuid;

use crate::relay_program;

#[tokio::test(flavor = "multi_thread")]
async fn config_check_shows_each_value_and_where_it_came_from() -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("relay-{}.toml", Uuid::now_v7().simple()));
    std::fs::write(
        &file,
        "[relay]\nlanes = 16\nbatch_size = 100\npoll_interval = \"3s\"\n\
         [kafka.properties]\n\"compression.type\" = \"zstd\"\n\"sasl.password\" = \"hunter2\"\n",
    )?;
    let path = file.to_str().expect("utf-8 temp path");
    let output = Command::new(relay_program())
        .args([
            "config",
            "check",
            "--config",
            path,
            "--lanes",
            "8",
            "--brokers",
            "k:9092",
        ])
        .env("OUTBOX_BATCH_SIZE", "200")
        .env("DATABASE_URL", "postgres://app:s3cret@db:5432/app")
        .env_remove("KAFKA_BROKERS")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: BTreeMap<&str, (&str, &str)> = stdout
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(char::is_whitespace)?;
            let (value, origin) = rest.trim().rsplit_once("  (")?;
            Some((key, (value.trim(), origin.trim_end_matches(')'))))
        })
        .collect();
    let origin_in_file = |key: &str| format!("{key} in {path}");
    assert_eq!(lines["relay.lanes"], ("8", "--lanes"), "flag over file");
    assert_eq!(
        lines["relay.batch_size"],
        ("200", "OUTBOX_BATCH_SIZE"),
        "env over file"
    );
    assert_eq!(
        lines["relay.poll_interval"],
        ("3s", origin_in_file("relay.poll_interval").as_str()),
        "file over default"
    );
    assert_eq!(lines["relay.lease"], ("25s", "default"));
    assert_eq!(lines["kafka.properties.compression.type"].0, "zstd");
    assert_eq!(lines["kafka.properties.sasl.password"].0, "***");
    assert_eq!(lines["database.url"].1, "DATABASE_URL");
    assert!(
        !stdout.contains("s3cret") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");

    std::fs::write(&file, "[relay]\nlanes = 12\n")?;
    let output = Command::new(relay_program())
        .args(["config", "check", "--config", path])
        .args(["--database-url", "postgres://db/app", "--brokers", "k:9092"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("invalid relay.lanes `12` in the config file"),
        "{stderr}"
    );
    assert!(stderr.contains("power of two"), "{stderr}");
    std::fs::remove_file(&file)?;
    Ok(())
}

/// One scrape of `/metrics`, parsed.
struct Metrics(Vec<Sample>);

impl Metrics {
    async fn scrape(address: &str) -> anyhow::Result<Self> {
        let (status, body) = http_get(address, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        let scrape = Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))?;
        Ok(Self(scrape.samples))
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|sample| {
                sample.metric == name
                    && labels
                        .iter()
                        .all(|(label, value)| sample.labels.get(label) == Some(*value))
            })
            .and_then(|sample| match &sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
                Value::Histogram(_) | Value::Summary(_) => None,
            })
    }

    /// The observation count of histogram `name`.
    fn histogram_count(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|sample| sample.metric == name)
            .and_then(|sample| match &sample.value {
                Value::Histogram(buckets) => buckets.last().map(|bucket| bucket.count),
                _ => None,
            })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_while_relaying_and_the_oldest_age_falls_to_zero() -> anyhow::Result<()> {
    init_logs();
    const MESSAGES: usize = 1_000;
    let db = TestDb::create().await?;
    let topic = create_topic(4).await?;
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|n| {
            Message::builder(&topic)
                .key(format!("key-{}", n % 10))
                .json(&n)
        })
        .collect::<Result<_, _>>()?;
    db.enqueue_committed(&messages).await?;

    // One message per batch keeps the backlog there for several seconds after the listener is up.
    let relay = RelayProcess::spawn(
        relay_program(),
        &db,
        &["--metrics-address", ANY_PORT, "--batch-size", "1"],
    )?;
    let address = relay.metrics_address().await?;
    let during = Metrics::scrape(&address).await?;
    let backlog = during.value("outbox_backlog_messages", &[("topic", &topic)]);
    let oldest = during.value("outbox_oldest_message_age_seconds", &[("topic", &topic)]);
    assert!(
        backlog.is_some_and(|n| n > 0.0),
        "a backlog while relaying: {backlog:?}"
    );
    assert!(
        oldest.is_some_and(|age| age > 0.0),
        "an oldest age while relaying: {oldest:?}"
    );

    db.wait_until_drained(Duration::from_secs(120)).await?;
    let published = |metrics: &Metrics| {
        metrics
            .value("outbox_messages_published_total", &[("topic", &topic)])
            .unwrap_or_default()
    };
    // The counters are updated right after the rows are deleted; give the last batch a moment.
    let mut after = Metrics::scrape(&address).await?;
    for _ in 0..50 {
        if published(&after) >= MESSAGES as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = Metrics::scrape(&address).await?;
    }
    assert_eq!(
        published(&after),
        MESSAGES as f64,
        "every message counted once"
    );
    assert!(published(&during) < published(&after), "the counter moved");
    assert_eq!(
        after.value("outbox_backlog_messages", &[("topic", &topic)]),
        Some(0.0)
    );
    assert_eq!(
        after.value("outbox_oldest_message_age_seconds", &[("topic", &topic)]),
        Some(0.0),
        "the oldest age falls to 0 once drained"
    );
    assert_eq!(after.value("outbox_dead_letters", &[]), Some(0.0));
    assert_eq!(after.value("outbox_lanes_owned", &[]), Some(64.0));
    assert_eq!(
        after.value("outbox_lane_changes_total", &[("change", "acquired")]),
        Some(64.0)
    );
    assert_eq!(
        after.histogram_count("outbox_publish_latency_seconds"),
        Some(MESSAGES as f64),
        "one latency observation per message"
    );
    let batches = after
        .histogram_count("outbox_window_size")
        .unwrap_or_default();
    assert!(batches >= MESSAGES as f64, "batches of one: {batches}");

    let (status, body) = http_get(&address, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("lanes: ok (64 owned)"), "{body}");
    relay.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_unready_when_the_broker_stops_and_ready_again_when_it_is_back()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let mut broker = PrivateBroker::start().await?;
    let relay = RelayProcess::spawn_with(
        relay_program(),
        &db.url,
        &broker.brokers(),
        &["--metrics-address", ANY_PORT],
    )?;
    let address = relay.metrics_address().await?;
    let ready = |want: u16| relay.wait_for_readiness(&address, want, Duration::from_secs(60));
    let body = ready(200).await?;
    assert!(
        body.contains("broker: ok") && body.contains("database: ok"),
        "{body}"
    );

    broker.stop().await?;
    let body = ready(503).await?;
    assert!(body.contains("broker: unreachable"), "{body}");
    assert!(
        body.contains("database: ok"),
        "only the broker is named: {body}"
    );
    let (status, _) = http_get(&address, "/healthz").await?;
    assert_eq!(status, 200, "the process is alive all the same");
    let metrics = Metrics::scrape(&address).await?;
    assert_eq!(
        metrics.value("outbox_ready", &[("check", "broker")]),
        Some(0.0)
    );

    broker.start_again().await?;
    ready(200).await?;
    relay.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_enqueuing_transaction_shows_as_horizon_lag_and_in_status_until_it_ends()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(2).await?;
    // A service that enqueued and now waits on a slow remote call, its transaction open.
    let mut stalled = outbox_tests::connect(&db).await?;
    sqlx::raw_sql("SET application_name = 'orders-service'; BEGIN")
        .execute(&mut stalled)
        .await?;
    let held = Message::builder(&topic).key("a").json(&"held")?;
    outbox_postgres::PgOutbox::new()
        .enqueue(&mut stalled, &held)
        .await?;
    let stalled_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut stalled)
        .await?;
    // Another key, committed: it waits too, since it was numbered after the open one.
    db.enqueue_committed(&[Message::builder(&topic).key("b").json(&"waiting")?])
        .await?;

    let relay = RelayProcess::spawn(relay_program(), &db, &["--metrics-address", ANY_PORT])?;
    let address = relay.metrics_address().await?;
    let mut lag = 0.0;
    for _ in 0..1200 {
        let metrics = Metrics::scrape(&address).await?;
        lag = metrics
            .value("outbox_horizon_lag_seconds", &[])
            .unwrap_or_default();
        if lag >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lag >= 1.0,
        "the horizon lag grows while the writer is open: {lag}"
    );
    assert_eq!(
        db.outbox_count().await?,
        1,
        "the committed message waits behind the open writer's (which is not visible yet)"
    );

    let (status, stdout, stderr) = outbox_tests::run_relay_program_output(
        relay_program(),
        &["status", "--database-url", &db.url],
    )
    .await?;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("Open enqueuing transactions: 1"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&stalled_pid.to_string()))
        .unwrap_or_else(|| panic!("no line for pid {stalled_pid}: {stdout}"));
    assert!(line.contains("orders-service"), "{line}");
    assert!(line.contains("idle in transaction"), "{line}");

    sqlx::raw_sql("COMMIT").execute(&mut stalled).await?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let mut metrics = Metrics::scrape(&address).await?;
    for _ in 0..600 {
        if metrics.value("outbox_horizon_lag_seconds", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = Metrics::scrape(&address).await?;
    }
    assert_eq!(metrics.value("outbox_horizon_lag_seconds", &[]), Some(0.0));
    relay.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_whose_partition_count_changes_is_logged_and_counted() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;

    let Fixture { db, topic } = Fixture::new(2).await?;
    db.enqueue_committed(&[Message::builder(&topic).key("k").json(&1)?])
        .await?;
    // Statistics and metadata refreshed every half second and second, instead of 10 s and 5 min.
    let relay = RelayProcess::spawn(
        relay_program(),
        &db,
        &[
            "--metrics-address",
            ANY_PORT,
            "-X",
            "statistics.interval.ms=500",
            "-X",
            "topic.metadata.refresh.interval.ms=1000",
        ],
    )?;
    let address = relay.metrics_address().await?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let partitions =
        |metrics: &Metrics| metrics.value("outbox_topic_partitions", &[("topic", &topic)]);
    let wait_for = |want: f64| {
        let address = address.clone();
        let topic = topic.clone();
        async move {
            for _ in 0..1200 {
                let metrics = Metrics::scrape(&address).await?;
                if metrics.value("outbox_topic_partitions", &[("topic", &topic)]) == Some(want) {
                    return anyhow::Ok(metrics);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::bail!("the relay never saw {want} partitions of {topic}")
        }
    };
    let before = wait_for(2.0).await?;
    assert_eq!(partitions(&before), Some(2.0));
    assert_eq!(
        before.value("outbox_topic_partition_changes_total", &[("topic", &topic)]),
        None,
        "nothing changed yet"
    );

    let admin: AdminClient<DefaultClientContext> = outbox_tests::kafka_config()?.create()?;
    let added = admin
        .create_partitions([&NewPartitions::new(&topic, 4)], &AdminOptions::new())
        .await?;
    anyhow::ensure!(
        added.iter().all(Result::is_ok),
        "adding partitions failed: {added:?}"
    );
    let after = wait_for(4.0).await?;
    assert_eq!(
        after.value("outbox_topic_partition_changes_total", &[("topic", &topic)]),
        Some(1.0)
    );
    let relay_log = relay.log.clone();
    relay.terminate().await?;
    let log = std::fs::read_to_string(&relay_log)?;
    assert!(
        log.contains("partition count changed") && log.contains(&topic),
        "a warning names the topic:\n{log}"
    );
    Ok(())
}
