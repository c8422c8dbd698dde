//! Converting messages to and from their rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::{Message, StoredMessage};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

/// A row that cannot become a message: it is moved to the dead letters with this reason.
#[derive(Debug)]
pub(crate) struct CorruptRow {
    pub seq: i64,
    pub reason: String,
}

/// Decodes a row selected with [`crate::queries::MESSAGE_COLUMNS`].
pub(crate) fn decode(row: &PgRow) -> Result<StoredMessage, CorruptRow> {
    let seq: i64 = row.try_get("seq").map_err(|e| CorruptRow {
        seq: -1,
        reason: format!("unreadable seq: {e}"),
    })?;
    let corrupt = |reason: String| CorruptRow { seq, reason };
    let field = |e: sqlx::Error| corrupt(format!("unreadable column: {e}"));
    let headers: serde_json::Value = row.try_get("headers").map_err(field)?;
    let headers = decode_headers(headers).map_err(corrupt)?;
    let topic: String = row.try_get("topic").map_err(field)?;
    outbox_core::message::validate_topic(&topic)
        .map_err(|e| corrupt(format!("unroutable: {e}")))?;
    let attempts: i32 = row.try_get("attempts").map_err(field)?;
    let message = Message {
        id: row.try_get::<Uuid, _>("id").map_err(field)?,
        topic,
        key: row.try_get("key").map_err(field)?,
        event_type: row.try_get("event_type").map_err(field)?,
        source: row.try_get("source").map_err(field)?,
        content_type: row.try_get("content_type").map_err(field)?,
        payload: row.try_get("payload").map_err(field)?,
        headers,
        created_at: row
            .try_get::<DateTime<Utc>, _>("created_at")
            .map_err(field)?,
    };
    // Rows written without the library (plain SQL, a trigger) are checked as enqueue checks: a
    // reserved header would make the record's `ce_id` a forgery.
    message
        .validate()
        .map_err(|e| corrupt(format!("unpublishable: {e}")))?;
    Ok(StoredMessage {
        seq,
        attempts: u32::try_from(attempts)
            .map_err(|_| corrupt(format!("negative attempts {attempts}")))?,
        message,
    })
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
}
