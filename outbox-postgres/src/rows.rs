//! Converting messages to and from their rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::{Message, StoredMessage};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

/// A row that cannot become a message: it is moved to the dead letters with this reason.
#[derive(Debug)]
pub struct CorruptRow {
    /// The row's `seq` (`-1` when that column itself cannot be read).
    pub seq: i64,
    /// Why the row cannot become a message.
    pub reason: String,
}

/// Decodes a row selected with [`crate::queries::MESSAGE_COLUMNS`]: reads its columns, then
/// checks them ([`StoredColumns::into_stored`]).
pub(crate) fn decode(row: &PgRow) -> Result<StoredMessage, CorruptRow> {
    let seq: i64 = row.try_get("seq").map_err(|e| CorruptRow {
        seq: -1,
        reason: format!("unreadable seq: {e}"),
    })?;
    let field = |e: sqlx::Error| CorruptRow {
        seq,
        reason: format!("unreadable column: {e}"),
    };
    StoredColumns {
        seq,
        id: row.try_get::<Uuid, _>("id").map_err(field)?,
        topic: row.try_get("topic").map_err(field)?,
        key: row.try_get("key").map_err(field)?,
        event_type: row.try_get("event_type").map_err(field)?,
        source: row.try_get("source").map_err(field)?,
        content_type: row.try_get("content_type").map_err(field)?,
        payload: row.try_get("payload").map_err(field)?,
        headers: row.try_get("headers").map_err(field)?,
        created_at: row
            .try_get::<DateTime<Utc>, _>("created_at")
            .map_err(field)?,
        attempts: row.try_get("attempts").map_err(field)?,
    }
    .into_stored()
}

/// The columns of one outbox row, as read from the database and not yet checked.
#[derive(Debug, Clone)]
pub struct StoredColumns {
    /// `seq`.
    pub seq: i64,
    /// `id`.
    pub id: Uuid,
    /// `topic`.
    pub topic: String,
    /// `key`.
    pub key: Option<Vec<u8>>,
    /// `event_type`.
    pub event_type: Option<String>,
    /// `source`.
    pub source: Option<String>,
    /// `content_type`.
    pub content_type: String,
    /// `payload`.
    pub payload: Vec<u8>,
    /// `headers`, any JSON value (a JSON object of strings is valid).
    pub headers: serde_json::Value,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
    /// `attempts`.
    pub attempts: i32,
}

impl StoredColumns {
    /// The message these columns hold, checked as enqueue checks it.
    ///
    /// # Errors
    /// [`CorruptRow`] when the headers are not a JSON object of strings, the topic is not a valid
    /// topic name, the message breaks a rule of [`Message::validate`], or `attempts` is negative.
    pub(crate) fn into_stored(self) -> Result<StoredMessage, CorruptRow> {
        let seq = self.seq;
        let corrupt = |reason: String| CorruptRow { seq, reason };
        let headers = decode_headers(self.headers).map_err(corrupt)?;
        outbox_core::message::validate_topic(&self.topic)
            .map_err(|e| corrupt(format!("unroutable: {e}")))?;
        let message = Message {
            id: self.id,
            topic: self.topic,
            key: self.key,
            event_type: self.event_type,
            source: self.source,
            content_type: self.content_type,
            payload: self.payload,
            headers,
            created_at: self.created_at,
        };
        // Rows written without the library (plain SQL, a trigger) are checked as enqueue checks: a
        // reserved header would make the record's `ce_id` a forgery.
        message
            .validate()
            .map_err(|e| corrupt(format!("unpublishable: {e}")))?;
        let attempts = self.attempts;
        Ok(StoredMessage {
            seq,
            attempts: u32::try_from(attempts)
                .map_err(|_| corrupt(format!("negative attempts {attempts}")))?,
            message,
        })
    }
}

fn decode_headers(value: serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err(format!("headers are not a JSON object: {value}"));
    };
    map.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => Ok((name, text)),
            other => Err(format!("header `{name}` is not a string: {other}")),
        })
        .collect()
}

/// Column arrays of a batch of messages, for one `UNNEST` insert.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub ids: Vec<Uuid>,
    pub slots: Vec<i32>,
    pub topics: Vec<String>,
    pub keys: Vec<Option<Vec<u8>>>,
    pub event_types: Vec<Option<String>>,
    pub sources: Vec<Option<String>>,
    pub content_types: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
    pub headers: Vec<serde_json::Value>,
    pub created_at: Vec<DateTime<Utc>>,
}

impl Columns {
    /// Binds the message columns, in their order, as the first ten parameters of `query`.
    pub(crate) fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.slots)
            .bind(self.topics)
            .bind(self.keys)
            .bind(self.event_types)
            .bind(self.sources)
            .bind(self.content_types)
            .bind(self.payloads)
            .bind(self.headers)
            .bind(self.created_at)
    }

    /// The columns of `messages`; each one without a `traceparent` gets the trace context of the
    /// current span, if it has one (see [`outbox_core::trace`]).
    pub(crate) fn of(messages: &[Message]) -> Self {
        Self::with_trace(messages, &outbox_core::trace::current_context_headers())
    }

    /// The columns of `messages` as they are (for messages that already went through a writer).
    pub(crate) fn untraced(messages: &[Message]) -> Self {
        Self::with_trace(messages, &BTreeMap::new())
    }

    fn with_trace(messages: &[Message], trace: &BTreeMap<String, String>) -> Self {
        let mut columns = Columns::default();
        for message in messages {
            let traced = !message
                .headers
                .contains_key(outbox_core::trace::TRACEPARENT);
            let trace_headers = trace.iter().filter(|_| traced);
            let slot = outbox_core::lane::slot_for(message.key.as_deref(), &message.id);
            columns.ids.push(message.id);
            columns.slots.push(slot as i32);
            columns.topics.push(message.topic.clone());
            columns.keys.push(message.key.clone());
            columns.event_types.push(message.event_type.clone());
            columns.sources.push(message.source.clone());
            columns.content_types.push(message.content_type.clone());
            columns.payloads.push(message.payload.clone());
            columns.headers.push(serde_json::Value::Object(
                trace_headers
                    .chain(&message.headers)
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ));
            columns.created_at.push(message.created_at);
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_must_be_an_object_of_strings() {
        assert!(decode_headers(serde_json::json!({"a": "b"})).is_ok());
        assert!(
            decode_headers(serde_json::json!([1]))
                .expect_err("array")
                .contains("not a JSON object")
        );
        assert!(
            decode_headers(serde_json::json!({"a": 1}))
                .expect_err("number")
                .contains("`a`")
        );
    }

    /// The columns of a valid row on `orders`.
    fn columns() -> StoredColumns {
        StoredColumns {
            seq: 7,
            id: Uuid::now_v7(),
            topic: "orders".into(),
            key: Some(b"order-1".to_vec()),
            event_type: Some("OrderPlaced".into()),
            source: None,
            content_type: "application/json".into(),
            payload: b"{}".to_vec(),
            headers: serde_json::json!({"tenant": "acme"}),
            created_at: Utc::now(),
            attempts: 2,
        }
    }

    #[test]
    fn valid_columns_become_the_stored_message() {
        let columns = columns();
        let stored = columns.clone().into_stored().expect("valid");
        assert_eq!((stored.seq, stored.attempts), (7, 2));
        assert_eq!(stored.message.id, columns.id);
        assert_eq!(stored.message.key, columns.key);
        assert_eq!(stored.message.headers["tenant"], "acme");
    }

    #[test]
    fn each_broken_column_is_named_with_the_rows_seq() {
        let mut unroutable = columns();
        unroutable.topic = "has space".into();
        let mut forged = columns();
        forged.headers = serde_json::json!({"ce_id": "x"});
        let mut negative = columns();
        negative.attempts = -1;
        let mut not_object = columns();
        not_object.headers = serde_json::json!("text");
        for (columns, reason) in [
            (unroutable, "unroutable: "),
            (
                forged,
                "unpublishable: invalid message: header `ce_id` is reserved",
            ),
            (negative, "negative attempts -1"),
            (not_object, "headers are not a JSON object"),
        ] {
            let corrupt = columns.into_stored().expect_err(reason);
            assert_eq!(corrupt.seq, 7, "{reason}");
            assert!(corrupt.reason.starts_with(reason), "{}", corrupt.reason);
        }
    }
}
