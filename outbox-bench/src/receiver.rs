//! The latency part's consumer: reads the whole topic on a thread of its own and records when
//! each message (by its `ce_id` header) arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use outbox_kafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::observe::Clock;

/// A consumer of the whole topic on a thread of its own, recording when each `ce_id` arrived.
pub struct Receiver {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// When each message arrived.
    pub receipts: Clock,
    received: Arc<AtomicU64>,
}

impl Receiver {
    /// Starts consuming every partition of `topic` from the beginning.
    ///
    /// # Errors
    /// When the consumer cannot be created or assigned.
    pub fn start(kafka: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        Self::start_with(kafka, topic, partitions, "ce_id")
    }

    /// Starts consuming every partition of `topic` from the beginning, the message's id in the
    /// header `header` (`ce_id` for the relay, `id` for Debezium; quotes around it are ignored).
    ///
    /// # Errors
    /// When the consumer cannot be created or assigned.
    pub fn start_with(
        kafka: &ClientConfig,
        topic: &str,
        partitions: i32,
        header: &'static str,
    ) -> anyhow::Result<Self> {
        let mut config = kafka.clone();
        config
            .set("group.id", format!("bench-{}", Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let receipts = Clock::default();
        let received = Arc::new(AtomicU64::new(0));
        let (flag, clock, count) = (stop.clone(), receipts.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Some(polled) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let at = Instant::now();
                let message = polled.context("consuming the latency topic failed")?;
                let id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == header))
                    .and_then(|h| h.value)
                    .and_then(|value| {
                        let start = usize::from(value.first() == Some(&b'"'));
                        let end = value.len()
                            - usize::from(value.len() > start && value.last() == Some(&b'"'));
                        Uuid::try_parse_ascii(&value[start..end]).ok()
                    });
                if let Some(id) = id {
                    clock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((id, at));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        Ok(Self {
            stop,
            thread,
            receipts,
            received,
        })
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the consumer's thread.
    ///
    /// # Errors
    /// When consuming failed or the thread panicked.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }
}
