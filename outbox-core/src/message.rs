//! The message a service writes to the outbox.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::Error;
use crate::headers;

/// The content type of payloads built with [`MessageBuilder::json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// One event to publish: what the service writes to the outbox inside its transaction.
///
/// Build one with [`Message::builder`]. The id is a UUIDv7 (time-ordered) unless set explicitly; it
/// travels as the `ce_id` header and is what inboxes deduplicate on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id of the message; consumers deduplicate on it.
    pub id: Uuid,
    /// Kafka topic the message is published to.
    pub topic: String,
    /// Ordering and partitioning key. Messages with the same key are published in enqueue order.
    pub key: Option<Vec<u8>>,
    /// CloudEvents `type`, e.g. `OrderPlaced`.
    pub event_type: Option<String>,
    /// CloudEvents `source`, e.g. `/orders-service`.
    pub source: Option<String>,
    /// MIME type of the payload.
    pub content_type: String,
    /// The payload bytes, published as the record value.
    pub payload: Vec<u8>,
    /// User headers, published as Kafka headers next to the CloudEvents ones.
    pub headers: BTreeMap<String, String>,
    /// When the message was built.
    pub created_at: DateTime<Utc>,
}

impl Message {
    /// Starts a message for `topic`.
    pub fn builder(topic: impl Into<String>) -> MessageBuilder {
        MessageBuilder {
            id: None,
            topic: topic.into(),
            key: None,
            event_type: None,
            source: None,
            headers: BTreeMap::new(),
        }
    }
}

/// Builds a [`Message`]; finish with [`json`](Self::json) or [`bytes`](Self::bytes).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until json() or bytes() is called"]
pub struct MessageBuilder {
    id: Option<Uuid>,
    topic: String,
    key: Option<Vec<u8>>,
    event_type: Option<String>,
    source: Option<String>,
    headers: BTreeMap<String, String>,
}

impl MessageBuilder {
    /// Sets the ordering key (the Kafka record key). Default: none, which spreads messages evenly and
    /// gives them no order relative to each other.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the message id. Default: a fresh UUIDv7. Set it to make retries of the same business
    /// operation produce the same id, so inboxes treat them as one.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the CloudEvents `type` (published as `ce_type`). Default: none.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the CloudEvents `source` (published as `ce_source`). Default: none.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a user header. Names the relay writes itself (`ce_*`, `content-type`, in any case) and
    /// NUL characters are refused when the message is built.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Finishes the message with `value` serialized as JSON.
    ///
    /// # Errors
    /// [`Error::Serialize`] when `value` cannot be serialized, [`Error::InvalidMessage`] when the
    /// message breaks a rule of [`Message::validate`].
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Message, Error> {
        let payload = serde_json::to_vec(value).map_err(Error::Serialize)?;
        self.bytes(payload, JSON_CONTENT_TYPE)
    }

    /// Finishes the message with raw payload bytes of the given content type.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when the message breaks a rule of [`Message::validate`].
    pub fn bytes(
        self,
        payload: impl Into<Vec<u8>>,
        content_type: impl Into<String>,
    ) -> Result<Message, Error> {
        let content_type = content_type.into();
        let message = Message {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            topic: self.topic,
            key: self.key,
            event_type: self.event_type,
            source: self.source,
            content_type,
            payload: payload.into(),
            headers: self.headers,
            created_at: Utc::now(),
        };
        message.validate()?;
        Ok(message)
    }
}

impl Message {
    /// Roughly what the message occupies in memory and on the wire: payload, key, headers and the
    /// fixed attributes. What enqueue limits and the relay's in-flight byte budget count.
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let fixed = self.topic.len()
            + self.event_type.as_ref().map_or(0, String::len)
            + self.source.as_ref().map_or(0, String::len)
            + self.content_type.len()
            + 64;
        (self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + headers + fixed) as u64
    }

    /// Checks what the builder checks, for a message whose public fields were set or changed by
    /// hand: a valid topic, a content type, header names that are neither empty nor reserved
    /// (`ce_*`, `content-type`, in any case: the relay writes those from the message's own fields,
    /// and a second `ce_id` would make consumers deduplicate the message as another), and no NUL
    /// character in any text (PostgreSQL text cannot hold one, so the insert would fail the
    /// caller's business transaction). Enqueuing checks again; a row that fails it is a corrupt row.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] naming the first field that breaks a rule.
    pub fn validate(&self) -> Result<(), Error> {
        validate_topic(&self.topic)?;
        if self.content_type.trim().is_empty() {
            return Err(Error::InvalidMessage("content type is empty".into()));
        }
        let texts = [
            ("event type", self.event_type.as_deref()),
            ("source", self.source.as_deref()),
            ("content type", Some(self.content_type.as_str())),
        ];
        for (what, text) in texts {
            if text.is_some_and(|t| t.contains('\0')) {
                return Err(Error::InvalidMessage(format!(
                    "the {what} contains a NUL character"
                )));
            }
        }
        for (name, value) in &self.headers {
            if name.is_empty() {
                return Err(Error::InvalidMessage("a header name is empty".into()));
            }
            if headers::is_reserved(name) {
                return Err(Error::InvalidMessage(format!(
                    "header `{name}` is reserved: the relay sets it from the message's own fields"
                )));
            }
            if name.contains('\0') || value.contains('\0') {
                return Err(Error::InvalidMessage(format!(
                    "header `{}` contains a NUL character",
                    name.escape_debug()
                )));
            }
        }
        Ok(())
    }
}

/// Checks a topic name against Kafka's rules ([`crate::topic_name`]): 1 to 249 characters of
/// `[a-zA-Z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`Error::InvalidMessage`] naming the rule that was broken.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    match crate::topic_name::refusal(topic) {
        Some(why) => Err(Error::InvalidMessage(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_messages_carry_payload_key_and_fresh_v7_ids() {
        let a = Message::builder("orders")
            .key("order-1")
            .event_type("OrderPlaced")
            .json(&serde_json::json!({"total": 42}))
            .expect("valid message");
        let b = Message::builder("orders")
            .bytes(b"x".to_vec(), "text/plain")
            .expect("valid");
        assert_eq!(a.payload, br#"{"total":42}"#);
        assert_eq!(a.content_type, JSON_CONTENT_TYPE);
        assert_eq!(a.key.as_deref(), Some(&b"order-1"[..]));
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id, "v7 ids grow with time");
    }

    #[test]
    fn invalid_topics_and_reserved_headers_are_refused() {
        for topic in ["", ".", "has space", "ümlaut", &"x".repeat(250)] {
            let err = Message::builder(topic)
                .bytes(vec![], "a/b")
                .expect_err(topic);
            assert!(matches!(err, Error::InvalidMessage(_)), "{topic}: {err}");
        }
        let err = Message::builder("t")
            .header("ce_id", "x")
            .bytes(vec![], "a/b")
            .expect_err("ce_id");
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = Message::builder("t")
            .bytes(vec![], " ")
            .expect_err("content type");
        assert!(err.to_string().contains("content type"), "{err}");
    }

    #[test]
    fn reserved_names_are_refused_in_any_case_and_when_set_by_hand() {
        for name in ["ce_id", "CE_ID", "Ce_Type", "content-type", "Content-Type"] {
            let err = Message::builder("t")
                .header(name, "x")
                .bytes(vec![], "a/b")
                .expect_err(name);
            assert!(err.to_string().contains("reserved"), "{name}: {err}");
        }
        let mut forged = Message::builder("t").bytes(vec![], "a/b").expect("valid");
        forged
            .headers
            .insert("ce_id".into(), Uuid::now_v7().to_string());
        let err = forged.validate().expect_err("forged ce_id");
        assert!(err.to_string().contains("`ce_id` is reserved"), "{err}");
    }

    #[test]
    fn nul_characters_are_refused_with_the_field_named() {
        let cases = [
            (
                Message::builder("t").event_type("Order\0Placed"),
                "event type",
            ),
            (Message::builder("t").source("/a\0b"), "source"),
            (Message::builder("t").header("h", "x\0y"), "header `h`"),
            (Message::builder("t").header("h\0", "x"), "header `h\\0`"),
        ];
        for (builder, field) in cases {
            let err = builder.bytes(vec![], "a/b").expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
            assert!(err.to_string().contains("NUL"), "{field}: {err}");
        }
        let err = Message::builder("t")
            .bytes(vec![], "a/\0b")
            .expect_err("content type");
        assert!(err.to_string().contains("content type"), "{err}");
    }
}
