//! Kafka records: consumed from any producer, and the ones the publisher writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike};
use outbox_core::Message;
use outbox_core::headers::{
    CE_ID, CE_SOURCE, CE_SPECVERSION, CE_TIME, CE_TYPE, CONTENT_TYPE, DEFAULT_SOURCE, DEFAULT_TYPE,
    SPEC_VERSION, TRACEPARENT,
};
use outbox_kafka::Error;
use outbox_kafka::fuzzing::{RecordHeaders, decode_record, record_headers};
use uuid::Uuid;

use crate::Outcome;
use crate::input::Fields;

/// Header names a consumed record's header may take by index (any other index: a text follows).
pub const NAMES: &[&str] = &[
    CE_ID,
    CE_TYPE,
    CE_SOURCE,
    CE_TIME,
    CONTENT_TYPE,
    CE_SPECVERSION,
    TRACEPARENT,
];

/// The headers a record may hold at most once.
const SINGLE: &[&str] = &[CE_ID, CE_TYPE, CE_SOURCE, CE_TIME, CONTENT_TYPE];

/// Reads a flag from `data` ([`crate::input`]), then:
///
/// * unset: a consumed record — topic, partition (i32), offset (i64), key (optional), value
///   (optional), a header count (one byte) and per header a name (a byte indexing [`NAMES`], else a
///   text) and a value (optional) — and decodes it as the consumer does. It decodes exactly as the
///   CloudEvents binding says: the id from the one `ce_id` header holding a UUID, `ce_type`,
///   `ce_source`, `ce_time` and `content-type` at most once each, every other header kept by name;
///   a refused record is named by topic, partition and offset.
/// * set: a message — id, topic, key (optional), event type (optional), source (optional), content
///   type, payload, a header count (one byte) and per header a name and a value, created_at (i64
///   microseconds since the Unix epoch). A valid message's record, as the publisher builds its
///   headers, decodes to its id, type, source, content type, time, key, payload and headers.
pub fn consumed_record(data: &[u8]) -> Outcome {
    let mut fields = Fields::new(data);
    if fields.flag() {
        published(&mut fields)
    } else {
        consumed(&mut fields)
    }
}

fn consumed(fields: &mut Fields<'_>) -> Outcome {
    let topic = fields.text();
    let partition: i32 = fields.int();
    let offset: i64 = fields.int();
    let key = fields.optional_bytes();
    let payload = fields.optional_bytes();
    let count = fields.byte();
    let headers: RecordHeaders = (0..count)
        .map(|_| {
            let name = match NAMES.get(usize::from(fields.byte())) {
                Some(name) => (*name).to_owned(),
                None => fields.text(),
            };
            (name, fields.optional_bytes().map(<[u8]>::to_vec))
        })
        .collect();

    // What the binding makes of the headers.
    let text = |value: &Option<Vec<u8>>| {
        String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
    };
    let mut single: BTreeMap<&str, String> = BTreeMap::new();
    let mut others = BTreeMap::new();
    let mut repeated = None;
    for (name, value) in &headers {
        match SINGLE.iter().find(|single| **single == name) {
            Some(known) => {
                if single.insert(known, text(value)).is_some() && repeated.is_none() {
                    repeated = Some(name.as_str());
                }
            }
            None => {
                others.insert(name.clone(), text(value));
            }
        }
    }
    let expected = match (repeated, single.get(CE_ID)) {
        (Some(name), _) => Err(format!("header `{name}` appears more than once")),
        (None, None) => Err("no ce_id header".to_owned()),
        (None, Some(id)) => Uuid::parse_str(id.trim()).map_err(|_| "is not a UUID".to_owned()),
    };

    let result = decode_record(&topic, partition, offset, key, payload, &headers);
    match (&result, expected) {
        (Ok(received), Ok(id)) => {
            assert_eq!(received.id, id);
            assert_eq!(
                (received.topic.as_str(), received.partition, received.offset),
                (topic.as_str(), partition, offset)
            );
            assert_eq!(received.key.as_deref(), key);
            assert_eq!(received.payload, payload.unwrap_or_default());
            assert_eq!(received.event_type.as_ref(), single.get(CE_TYPE));
            assert_eq!(received.source.as_ref(), single.get(CE_SOURCE));
            assert_eq!(received.time.as_ref(), single.get(CE_TIME));
            assert_eq!(received.content_type.as_ref(), single.get(CONTENT_TYPE));
            assert_eq!(received.headers, others);
        }
        (
            Err(Error::UndecodableRecord {
                topic: named,
                partition: p,
                offset: o,
                reason,
            }),
            Err(why),
        ) => {
            assert_eq!((named, *p, *o), (&topic, partition, offset));
            assert!(reason.contains(&why), "`{reason}` does not say `{why}`");
        }
        (Ok(received), Err(why)) => panic!("a record that {why} decoded: {received:?}"),
        (Err(error), Ok(_)) => panic!("a decodable record was refused: {error}"),
        (Err(error), Err(_)) => panic!("a record was refused with another error: {error}"),
    }
    Outcome::of(&result)
}

fn published(fields: &mut Fields<'_>) -> Outcome {
    let id = fields.uuid();
    let topic = fields.text();
    let key = fields.optional_bytes().map(<[u8]>::to_vec);
    let event_type = fields.optional_text();
    let source = fields.optional_text();
    let content_type = fields.text();
    let payload = fields.bytes().to_vec();
    let count = fields.byte();
    let headers = (0..count).map(|_| (fields.text(), fields.text())).collect();
    let created_at = DateTime::from_timestamp_micros(fields.int()).unwrap_or_default();
    let message = Message {
        id,
        topic,
        key,
        event_type,
        source,
        content_type,
        payload,
        headers,
        created_at,
    };
    if message.validate().is_err() {
        // Enqueue refuses it: no record is ever made of it.
        return Outcome::Refused;
    }

    let headers = record_headers(&message);
    let received = match decode_record(
        &message.topic,
        3,
        42,
        message.key.as_deref(),
        Some(&message.payload),
        &headers,
    ) {
        Ok(received) => received,
        Err(error) => panic!("a published message's record does not decode: {error}"),
    };
    assert_eq!(received.id, message.id);
    assert_eq!(
        received.event_type.as_deref(),
        Some(message.event_type.as_deref().unwrap_or(DEFAULT_TYPE))
    );
    assert_eq!(
        received.source.as_deref(),
        Some(message.source.as_deref().unwrap_or(DEFAULT_SOURCE))
    );
    assert_eq!(
        received.content_type.as_deref(),
        Some(message.content_type.as_str())
    );
    assert_eq!(received.key, message.key);
    assert_eq!(received.payload, message.payload);
    let mut user = received.headers.clone();
    assert_eq!(user.remove(CE_SPECVERSION).as_deref(), Some(SPEC_VERSION));
    assert_eq!(user, message.headers, "the user headers changed");
    let Some(time) = &received.time else {
        panic!("a published record has no ce_time");
    };
    // RFC 3339 has four-digit years only.
    if (1..=9999).contains(&message.created_at.year()) {
        match DateTime::parse_from_rfc3339(time) {
            Ok(parsed) => assert_eq!(
                parsed.timestamp_micros(),
                message.created_at.timestamp_micros(),
                "ce_time is not the creation time"
            ),
            Err(error) => panic!("ce_time `{time}` is not RFC 3339: {error}"),
        }
    }
    Outcome::Accepted
}
