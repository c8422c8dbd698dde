//! Writes the seed inputs of every target to `fuzz/corpus/<target>/seed-*`, built with the
//! libraries' own encoders where there is one (WAL envelopes, a published record's headers).
//! Files already there are overwritten; others (inputs the fuzzer found) are left alone.
//!
//! `cargo run -p outbox-fuzz --example write_seeds`

use std::fs;
use std::path::Path;

use chrono::{DateTime, Utc};
use outbox_core::Message;
use outbox_fuzz::HEADER_NAMES;
use outbox_fuzz::input::Writer;
use outbox_kafka::fuzzing::record_headers;
use outbox_postgres::wal::envelope;
use outbox_relay::settings::ALL;
use uuid::Uuid;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in [
        ("config_file", config_file()),
        ("producer_properties", producer_properties()),
        ("setting_values", setting_values()),
        ("stored_row", stored_row()),
        ("consumed_record", consumed_record()),
        ("wal_envelope", wal_envelope()),
    ] {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        for (name, data) in seeds {
            fs::write(dir.join(format!("seed-{name}")), data)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn text(seeds: &[(&'static str, &str)]) -> Seeds {
    seeds
        .iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .collect()
}

fn config_file() -> Seeds {
    text(&[
        (
            "full",
            "[database]\nurl = \"postgres://relay:s3cret-passw0rd@db:5432/app\"\npool_size = 4\n\
             schema = \"public\"\ntable = \"outbox\"\nconnect_timeout = \"30s\"\n\n\
             [kafka]\nbrokers = \"k1:9092,k2:9092\"\ntopic_template = \"outbox.event.{topic}\"\n\n\
             [relay]\nbatch_size = 500\nwindow = 256\nmax_in_flight = 2000\npoll_interval = \"1s\"\n\
             lanes = 64\nlease = \"25s\"\nretention = \"7d\"\nshutdown_grace = \"10s\"\n\n\
             [retry]\nmax_attempts = 10\ninitial_backoff = \"200ms\"\nmax_backoff = \"60s\"\n\n\
             [metrics]\naddress = \"127.0.0.1:9464\"\n\n\
             [kafka.properties]\n\"compression.type\" = \"zstd\"\n\"linger.ms\" = 10\n\
             \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.password\" = \"correct-horse-battery\"\n",
        ),
        (
            "minimal",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n",
        ),
        (
            "wal",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [relay]\ncapture = \"wal\"\n[wal]\nslot = \"outbox_orders\"\nprefix = \"outbox\"\n",
        ),
        (
            "unterminated-password",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [kafka.properties]\n\"sasl.password\" = \"correct-horse-battery\n",
        ),
        (
            "password-line-with-junk",
            "[kafka.properties]\n\"sasl.password\" = \"correct-horse-battery\" oops\n",
        ),
        ("unknown-key", "[relay]\nlane = 32\n"),
        ("array", "[relay]\nlanes = [1, 2]\n"),
        (
            "lanes-not-power-of-two",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [relay]\nlanes = 48\n",
        ),
        (
            "timeout-past-lease",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [kafka.properties]\n\"message.timeout.ms\" = 60000\n",
        ),
        (
            "bootstrap-servers",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [kafka.properties]\n\"bootstrap.servers\" = \"elsewhere:9092\"\n",
        ),
        (
            "backoffs-crossed",
            "[database]\nurl = \"postgres://localhost/app\"\n[kafka]\nbrokers = \"localhost:9092\"\n\
             [retry]\ninitial_backoff = \"2m\"\nmax_backoff = \"1m\"\n",
        ),
    ])
}

fn producer_properties() -> Seeds {
    text(&[
        ("compression", "-Xcompression.type=zstd\0-Xlinger.ms=5"),
        (
            "sasl",
            "-Xsecurity.protocol=SASL_SSL\0-Xsasl.mechanism=SCRAM-SHA-512\0\
             -Xsasl.username=relay\0-Xsasl.password=correct-horse-battery",
        ),
        (
            "flag-over-file",
            "file:sasl.password=from-the-file-secret\0file:linger.ms=20\0\
             -Xsasl.password=from-the-flag-secret\0- Xlinger.ms=1\0-X linger.ms =5",
        ),
        (
            "timeout-within-lease",
            "-Xmessage.timeout.ms=4000\0OUTBOX_LEASE=25s",
        ),
        ("timeout-past-lease", "-Xdelivery.timeout.ms=60000"),
        ("timeout-not-a-number", "file:message.timeout.ms=soon"),
        ("bootstrap-servers", "-Xbootstrap.servers=elsewhere:9092"),
        ("no-equals", "-Xsasl.password correct-horse-battery"),
        ("empty-name", "-X =correct-horse-battery"),
        (
            "environment",
            "DATABASE_URL=postgres://app:s3cret-passw0rd@db/app\0KAFKA_BROKERS=a:1,b:2\0\
             OUTBOX_LANES=16\0OUTBOX_METRICS_ADDRESS=0.0.0.0:9464",
        ),
        ("environment-invalid", "OUTBOX_LANES=3\0-Xlinger.ms=5"),
    ])
}

fn setting_values() -> Seeds {
    let index = |key: &str| -> u8 {
        let index = ALL.iter().position(|spec| spec.key == key);
        u8::try_from(index.unwrap_or_else(|| panic!("no row {key}"))).unwrap_or(0)
    };
    let mut seeds: Seeds = ALL
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            let default = spec.default?;
            let mut data = vec![u8::try_from(i).ok()?];
            data.extend_from_slice(default.as_bytes());
            Some((spec.key, data))
        })
        .collect();
    for (name, key, text) in [
        (
            "url",
            "database.url",
            "postgres://app:s3cret-passw0rd@db:5432/app?sslmode=require",
        ),
        (
            "url-wrong-scheme",
            "database.url",
            "mysql://app:s3cret-passw0rd@db/app",
        ),
        (
            "url-password-query",
            "database.url",
            "postgresql:///app?host=/run/postgresql&password=s3cret-passw0rd",
        ),
        ("brokers", "kafka.brokers", "k1:9092, k2:9092"),
        ("brokers-no-port", "kafka.brokers", "k1"),
        ("template", "kafka.topic_template", "svc-{topic}-v1"),
        ("template-twice", "kafka.topic_template", "{topic}{topic}"),
        ("lanes-48", "relay.lanes", "48"),
        ("lease-compound", "relay.lease", "1m 30s"),
        ("lease-negative", "relay.lease", "-1s"),
        ("retention-days", "relay.retention", "7days"),
        ("batch-zero", "relay.batch_size", "0"),
        (
            "attempts-huge",
            "retry.max_attempts",
            "99999999999999999999",
        ),
        ("backoff-past-max", "retry.initial_backoff", "2m"),
        ("capture-wal", "relay.capture", "wal"),
        ("slot-invalid", "wal.slot", "Orders-Slot"),
        ("prefix-space", "wal.prefix", "out box"),
        ("metrics", "metrics.address", "[::1]:9464"),
        ("metrics-hostname", "metrics.address", "localhost:9464"),
        ("schema-quoted", "database.schema", "\"Public\""),
        ("pool-101", "database.pool_size", "101"),
    ] {
        let mut data = vec![index(key)];
        data.extend_from_slice(text.as_bytes());
        seeds.push((name, data));
    }
    seeds
}

/// The fields of a stored row.
#[derive(Clone)]
struct Row {
    topic: &'static str,
    key: Option<&'static [u8]>,
    event_type: Option<&'static str>,
    content_type: &'static str,
    headers: &'static str,
    attempts: i32,
}

const ROW: Row = Row {
    topic: "orders",
    key: Some(b"order-7"),
    event_type: Some("OrderPlaced"),
    content_type: "application/json",
    headers: r#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant": "acme"}"#,
    attempts: 0,
};

fn row(row: Row) -> Vec<u8> {
    Writer::new()
        .int(41i64.to_le_bytes())
        .uuid(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001))
        .text(row.topic)
        .optional_bytes(row.key)
        .optional_text(row.event_type)
        .optional_text(Some("/orders"))
        .text(row.content_type)
        .bytes(br#"{"id": 7, "total_cents": 1250}"#)
        .text(row.headers)
        .int(1_700_000_000_123_456i64.to_le_bytes())
        .int(row.attempts.to_le_bytes())
        .finish()
}

fn stored_row() -> Seeds {
    vec![
        ("valid", row(ROW)),
        (
            "no-key-no-type",
            row(Row {
                key: None,
                event_type: None,
                headers: "{}",
                ..ROW
            }),
        ),
        ("retried", row(Row { attempts: 3, ..ROW })),
        (
            "headers-array",
            row(Row {
                headers: "[\"a\"]",
                ..ROW
            }),
        ),
        (
            "header-number",
            row(Row {
                headers: r#"{"tenant": 7}"#,
                ..ROW
            }),
        ),
        (
            "header-null",
            row(Row {
                headers: "null",
                ..ROW
            }),
        ),
        (
            "header-forged-id",
            row(Row {
                headers: r#"{"CE_ID": "x"}"#,
                ..ROW
            }),
        ),
        (
            "header-nul",
            row(Row {
                headers: r#"{"tenant": "a\u0000b"}"#,
                ..ROW
            }),
        ),
        (
            "topic-space",
            row(Row {
                topic: "has space",
                ..ROW
            }),
        ),
        ("topic-dotdot", row(Row { topic: "..", ..ROW })),
        (
            "content-type-blank",
            row(Row {
                content_type: " ",
                ..ROW
            }),
        ),
        (
            "negative-attempts",
            row(Row {
                attempts: -1,
                ..ROW
            }),
        ),
        (
            "type-nul",
            row(Row {
                event_type: Some("Order\0Placed"),
                ..ROW
            }),
        ),
    ]
}

fn message() -> Message {
    Message::builder("orders")
        .id(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002))
        .key("order-7")
        .event_type("OrderPlaced")
        .source("/orders")
        .header("traceparent", TRACEPARENT)
        .header("tenant", "acme")
        .json(&serde_json::json!({"id": 7, "total_cents": 1250}))
        .map(|mut message| {
            message.created_at =
                DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
            message
        })
        .unwrap_or_else(|error| panic!("a valid message: {error}"))
}

/// A consumed record's fields.
fn record(headers: &[(String, Option<Vec<u8>>)], payload: Option<&[u8]>) -> Vec<u8> {
    let mut writer = Writer::new()
        .flag(false)
        .text("orders")
        .int(2i32.to_le_bytes())
        .int(7i64.to_le_bytes())
        .optional_bytes(Some(b"order-7"))
        .optional_bytes(payload)
        .byte(u8::try_from(headers.len()).unwrap_or(u8::MAX));
    for (name, value) in headers {
        writer = match HEADER_NAMES.iter().position(|known| known == name) {
            Some(index) => writer.byte(u8::try_from(index).unwrap_or(u8::MAX)),
            None => writer.byte(u8::MAX).text(name),
        };
        writer = writer.optional_bytes(value.as_deref());
    }
    writer.finish()
}

/// A message's fields, for the round trip.
fn published(message: &Message) -> Vec<u8> {
    let mut writer = Writer::new()
        .flag(true)
        .uuid(message.id)
        .text(&message.topic)
        .optional_bytes(message.key.as_deref())
        .optional_text(message.event_type.as_deref())
        .optional_text(message.source.as_deref())
        .text(&message.content_type)
        .bytes(&message.payload)
        .byte(u8::try_from(message.headers.len()).unwrap_or(u8::MAX));
    for (name, value) in &message.headers {
        writer = writer.text(name).text(value);
    }
    writer
        .int(message.created_at.timestamp_micros().to_le_bytes())
        .finish()
}

fn consumed_record() -> Seeds {
    let message = message();
    let published_headers = record_headers(&message);
    let header = |name: &str, value: &str| (name.to_owned(), Some(value.as_bytes().to_vec()));
    let id = message.id.to_string();
    let payload: &[u8] = br#"{"id": 7}"#;
    let mut bare = message.clone();
    bare.key = None;
    bare.event_type = None;
    bare.source = None;
    bare.headers.clear();
    bare.payload.clear();
    let mut forged = message.clone();
    forged.headers.insert("Ce_Id".into(), id.clone());
    vec![
        (
            "published",
            record(&published_headers, Some(&message.payload)),
        ),
        ("minimal", record(&[header("ce_id", &id)], None)),
        (
            "id-with-blanks-and-null-header",
            record(
                &[
                    header("ce_id", &format!(" {id} ")),
                    ("tracestate".into(), None),
                ],
                Some(payload),
            ),
        ),
        (
            "no-id",
            record(&[header("ce_type", "OrderPlaced")], Some(payload)),
        ),
        (
            "id-not-uuid",
            record(&[header("ce_id", "order-7")], Some(payload)),
        ),
        (
            "type-twice",
            record(
                &[
                    header("ce_id", &id),
                    header("ce_type", "OrderPlaced"),
                    header("ce_type", "OrderCancelled"),
                ],
                Some(payload),
            ),
        ),
        (
            "id-twice",
            record(
                &[
                    header("ce_id", &id),
                    header("ce_id", &Uuid::nil().to_string()),
                ],
                None,
            ),
        ),
        ("round-trip", published(&message)),
        ("round-trip-bare", published(&bare)),
        ("round-trip-forged-header", published(&forged)),
    ]
}

fn wal_envelope() -> Seeds {
    let encode = |message: &Message| {
        envelope::encode(message).unwrap_or_else(|error| panic!("encodes: {error}"))
    };
    let message = message();
    let full = encode(&message);
    let mut bare = message.clone();
    bare.key = None;
    bare.event_type = None;
    bare.source = None;
    bare.headers.clear();
    bare.payload.clear();
    let mut version_2 = full.clone();
    version_2[0] = 2;
    let mut trailing = full.clone();
    trailing.push(0);
    let mut bad_topic = full.clone();
    // The topic's first byte: after version, id and created_at, and its 2-byte length.
    bad_topic[1 + 16 + 8 + 2] = 0xff;
    let mut out_of_range = full.clone();
    out_of_range[17..25].copy_from_slice(&i64::MAX.to_be_bytes());
    let mut twice = message.clone();
    twice.headers.clear();
    twice.headers.insert("a".into(), "1".into());
    let mut repeated = encode(&twice);
    let at = repeated
        .windows(3)
        .position(|window| window == [0, 1, b'a'])
        .unwrap_or_else(|| panic!("the header"));
    let one = repeated[at..at + 2 + 1 + 4 + 1].to_vec();
    repeated[at - 1] = 2;
    repeated.splice(at..at, one);
    vec![
        ("full", full.clone()),
        ("bare", encode(&bare)),
        ("truncated", full[..full.len() / 2].to_vec()),
        ("version-2", version_2),
        ("trailing-byte", trailing),
        ("topic-not-utf8", bad_topic),
        ("created-at-out-of-range", out_of_range),
        ("header-twice", repeated),
    ]
}
