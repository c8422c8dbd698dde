//! Outbox rows: written by the library, or by plain SQL and triggers in any language.

use std::collections::BTreeMap;

use chrono::DateTime;
use outbox_core::Message;
use outbox_postgres::fuzzing::{StoredColumns, stored_row as check};

use crate::Outcome;
use crate::input::Fields;

/// The beginnings of the reasons a corrupt row is parked with.
const REASONS: &[&str] = &[
    "headers are not a JSON object",
    "header `",
    "unroutable: ",
    "unpublishable: ",
    "negative attempts ",
];

/// Reads the columns of an outbox row from `data` ([`crate::input`]): `seq` (i64), `id`, `topic`,
/// `key` (optional), `event_type` (optional), `source` (optional), `content_type`, `payload`,
/// `headers` (JSON text; text that is no JSON is taken as a JSON string), `created_at` (i64
/// microseconds since the Unix epoch) and `attempts` (i32); then checks them as the store does.
///
/// A row becomes a message exactly when its headers are a JSON object of strings, `attempts` is
/// not negative and the message passes [`Message::validate`]; the message is the row's columns.
/// A corrupt row keeps its `seq` and a reason the dead letters can show.
pub fn stored_row(data: &[u8]) -> Outcome {
    let columns = columns(&mut Fields::new(data));
    let headers = match &columns.headers {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
            .collect::<Option<BTreeMap<_, _>>>(),
        _ => None,
    };
    let expected = Message {
        id: columns.id,
        topic: columns.topic.clone(),
        key: columns.key.clone(),
        event_type: columns.event_type.clone(),
        source: columns.source.clone(),
        content_type: columns.content_type.clone(),
        payload: columns.payload.clone(),
        headers: headers.clone().unwrap_or_default(),
        created_at: columns.created_at,
    };
    let valid = headers.is_some() && columns.attempts >= 0 && expected.validate().is_ok();
    let (seq, attempts) = (columns.seq, columns.attempts);
    let result = check(columns);
    match &result {
        Ok(stored) => {
            assert!(valid, "a row that breaks a rule became a message");
            assert!(
                stored.message.validate().is_ok(),
                "a stored message fails validate()"
            );
            assert_eq!(stored.message, expected, "the message is not the row's");
            assert_eq!(stored.seq, seq);
            assert_eq!(i64::from(stored.attempts), i64::from(attempts));
        }
        Err(corrupt) => {
            assert!(!valid, "a valid row is corrupt: {}", corrupt.reason);
            assert_eq!(corrupt.seq, seq, "a corrupt row lost its seq");
            assert!(
                REASONS
                    .iter()
                    .any(|start| corrupt.reason.starts_with(start)),
                "an unexpected reason: {}",
                corrupt.reason
            );
        }
    }
    Outcome::of(&result)
}

fn columns(fields: &mut Fields<'_>) -> StoredColumns {
    let seq = fields.int();
    let id = fields.uuid();
    let topic = fields.text();
    let key = fields.optional_bytes().map(<[u8]>::to_vec);
    let event_type = fields.optional_text();
    let source = fields.optional_text();
    let content_type = fields.text();
    let payload = fields.bytes().to_vec();
    let headers = fields.bytes();
    let headers = serde_json::from_slice(headers).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(headers).into_owned())
    });
    // Microseconds outside what a DateTime holds (a row could not be read as one) read as the epoch.
    let created_at = DateTime::from_timestamp_micros(fields.int()).unwrap_or_default();
    let attempts = fields.int();
    StoredColumns {
        seq,
        id,
        topic,
        key,
        event_type,
        source,
        content_type,
        payload,
        headers,
        created_at,
        attempts,
    }
}
