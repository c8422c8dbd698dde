//! The relay engine with a publisher of your own: messages appended to a JSON-lines file instead
//! of Kafka, read from the PostgreSQL outbox by the library's store.
//!
//! Delivery guarantee: every committed message is appended at least once, and the messages of one
//! key in enqueue order — as long as the publisher keeps the contract of `engine::Publisher`: hand
//! messages over in the order given, check the fence before each one (a relay that lost its lanes
//! must not write), and answer every message with its outcome, in order, within its send timeout.
//! Needs PostgreSQL at `DATABASE_URL` (`eval "$(scripts/services.sh)"`); run with
//! `cargo run -p outbox-examples --bin custom-publisher`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::engine::{
    Acknowledgements, Fence, PublishError, PublishErrorKind, Publisher, StoredMessage,
};
use outbox::postgres::{PgOutbox, PgPool, PgRelayStore, PgRelayStoreConfig};
use outbox::{CancellationToken, Message, Relay, RelayConfig};

/// How long an acknowledgement (the file's `fsync`) may take; within a fifth of the store's lease.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Appends each message as one JSON line; a message is acknowledged once the file is synced.
struct JsonLines {
    file: Arc<Mutex<std::fs::File>>,
}

impl Publisher for JsonLines {
    async fn send(&self, messages: &[StoredMessage], fence: &Fence) -> Acknowledgements {
        let mut outcomes = Vec::with_capacity(messages.len());
        if let Ok(mut file) = self.file.lock() {
            // After a failure nothing later is written: a key's successor never lands before it.
            let mut failed = None;
            for stored in messages {
                // Once the fence has closed, this message is the lane's next owner's to write.
                if failed.is_none() && !fence.is_valid() {
                    failed = Some(PublishErrorKind::Fenced);
                }
                if let Some(kind) = failed {
                    outcomes.push(Err(kind));
                    continue;
                }
                let m = &stored.message;
                let line = serde_json::json!({
                    "id": m.id, "topic": m.topic, "type": m.event_type,
                    "key": m.key.as_deref().map(String::from_utf8_lossy),
                    "payload": String::from_utf8_lossy(&m.payload),
                });
                let written = writeln!(file, "{line}").map_err(|_| PublishErrorKind::Unavailable);
                failed = written.err();
                outcomes.push(written);
            }
        }
        outcomes.resize(messages.len(), Err(PublishErrorKind::Unavailable));
        let file = self.file.clone();
        Box::pin(async move {
            let synced = tokio::task::spawn_blocking(move || match file.lock() {
                Ok(file) => file.sync_data().is_ok(),
                Err(_) => false,
            });
            let synced = matches!(
                tokio::time::timeout(SEND_TIMEOUT, synced).await,
                Ok(Ok(true))
            );
            outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    Ok(()) if synced => Ok(()),
                    Ok(()) => Err(PublishError::new(
                        PublishErrorKind::Unavailable,
                        "not synced",
                    )),
                    Err(kind) => Err(PublishError::new(kind, "not written")),
                })
                .collect()
        })
    }

    fn send_timeout(&self) -> Option<Duration> {
        Some(SEND_TIMEOUT)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    outbox::postgres::migrate(&mut *pool.acquire().await?, &Default::default()).await?;
    let path = PathBuf::from(format!("custom-publisher-{}.jsonl", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;

    let topic = format!("custom-{}", std::process::id());
    let mut tx = pool.begin().await?;
    for (key, step) in [("a", 1), ("b", 1), ("a", 2)] {
        let message = Message::builder(&topic)
            .key(key)
            .event_type("Step")
            .json(&step)?;
        PgOutbox::new().enqueue(&mut tx, &message).await?;
    }
    tx.commit().await?;

    let store = PgRelayStore::new(pool, PgRelayStoreConfig::default());
    let publisher = JsonLines {
        file: Arc::new(Mutex::new(file)),
    };
    let relay = Relay::new(store, publisher, RelayConfig::default())?;
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    let mut lines = String::new();
    while lines.matches(&topic).count() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = std::fs::read_to_string(&path)?;
    }
    stop.cancel();
    println!(
        "{} published to {}:\n{lines}",
        running.await?.published,
        path.display()
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
