//! A consumed record: its raw form (kept byte for byte for the dead-letter topic) and its decoded
//! form, [`Received`], with the CloudEvents headers taken apart.

use std::collections::BTreeMap;

use outbox_core::headers::{CE_ID, CE_SOURCE, CE_TIME, CE_TYPE, CONTENT_TYPE};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use uuid::Uuid;

use crate::error::Error;

/// A record as it came from Kafka, owned, headers byte for byte and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record has a header whose name is not UTF-8: its headers could not be read (and are
    /// empty here).
    pub unreadable_header_name: bool,
}

impl RawRecord {
    /// Copies a record out of librdkafka's buffer.
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        // rdkafka panics on a header name that is not UTF-8 (it unwraps the conversion), which any
        // producer can write. Such a record is undecodable, not a reason to bring the consumer
        // down: the panic is caught, and the record goes to the dead letters without its headers.
        let headers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default()
        }));
        let unreadable_header_name = headers.is_err();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: headers.unwrap_or_default(),
            unreadable_header_name,
        }
    }

    /// Decodes the CloudEvents headers.
    ///
    /// # Errors
    /// [`Error::UndecodableRecord`] when there is no `ce_id` header holding a UUID, or when one of
    /// `ce_id`, `ce_type`, `ce_source`, `ce_time` and `content-type` appears more than once.
    pub fn decode(&self) -> Result<Received, Error> {
        let undecodable = |reason: String| Error::UndecodableRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            reason,
        };
        if self.unreadable_header_name {
            return Err(undecodable(
                "a header name is not UTF-8, so its headers cannot be read".into(),
            ));
        }
        let mut id = None;
        let mut received = Received {
            id: Uuid::nil(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            payload: self.payload.clone().unwrap_or_default(),
            event_type: None,
            source: None,
            time: None,
            content_type: None,
            headers: BTreeMap::new(),
        };
        for (key, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned();
            let slot = match key.as_str() {
                CE_ID => &mut id,
                CE_TYPE => &mut received.event_type,
                CE_SOURCE => &mut received.source,
                CE_TIME => &mut received.time,
                CONTENT_TYPE => &mut received.content_type,
                _ => {
                    received.headers.insert(key.clone(), value);
                    continue;
                }
            };
            // A second value would be a forgery (or a broken producer): which one is the message's
            // identity cannot be told, so the record is not guessed at.
            if slot.replace(value).is_some() {
                return Err(undecodable(format!(
                    "header `{key}` appears more than once"
                )));
            }
        }
        let id = id.ok_or_else(|| undecodable("no ce_id header".into()))?;
        received.id = Uuid::parse_str(id.trim())
            .map_err(|e| undecodable(format!("ce_id `{id}` is not a UUID: {e}")))?;
        Ok(received)
    }
}

/// A consumed record, decoded from the CloudEvents headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id (`ce_id`); what the inbox deduplicates on.
    pub id: Uuid,
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value (empty for a record without one).
    pub payload: Vec<u8>,
    /// `ce_type`.
    pub event_type: Option<String>,
    /// `ce_source`.
    pub source: Option<String>,
    /// `ce_time`.
    pub time: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// Every other header as text: `ce_specversion`, the writer's own headers, and the W3C trace
    /// context (`traceparent`, `tracestate`).
    pub headers: BTreeMap<String, String>,
}

impl Received {
    /// Decodes a record.
    ///
    /// # Errors
    /// [`Error::UndecodableRecord`] when it has no `ce_id` header holding a UUID.
    pub fn from_record(record: &BorrowedMessage<'_>) -> Result<Self, Error> {
        RawRecord::from_message(record).decode()
    }

    /// The payload, decoded as JSON.
    ///
    /// # Errors
    /// The JSON error when the payload does not decode as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// A header from [`headers`](Self::headers), e.g. `traceparent`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The key as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|key| std::str::from_utf8(key).ok())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A raw record on `orders`/2@7 with the given headers.
    pub(crate) fn raw(headers: &[(&str, &str)], payload: &str) -> RawRecord {
        RawRecord {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            key: Some(b"order-1".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
            unreadable_header_name: false,
        }
    }

    #[test]
    fn cloudevents_headers_are_taken_apart_and_the_rest_kept_as_text() {
        let id = Uuid::now_v7().to_string();
        let received = raw(
            &[
                ("ce_id", &id),
                ("ce_type", "OrderPlaced"),
                ("ce_specversion", "1.0"),
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=1"),
            ],
            "{}",
        )
        .decode()
        .expect("decodes");
        assert_eq!(received.id.to_string(), id);
        assert_eq!(received.event_type.as_deref(), Some("OrderPlaced"));
        assert_eq!(received.content_type.as_deref(), Some("application/json"));
        assert_eq!(received.header("ce_specversion"), Some("1.0"));
        assert!(received.header("traceparent").is_some());
        assert_eq!(received.header("tracestate"), Some("vendor=1"));
        assert_eq!(received.key_str(), Some("order-1"));
        assert_eq!((received.partition, received.offset), (2, 7));
    }

    #[test]
    fn a_record_without_a_usable_ce_id_is_undecodable() {
        let missing = raw(&[("ce_type", "OrderPlaced")], "{}")
            .decode()
            .expect_err("no id");
        assert!(missing.to_string().contains("no ce_id"), "{missing}");
        let garbled = raw(&[("ce_id", "not-a-uuid")], "{}")
            .decode()
            .expect_err("bad id");
        assert!(garbled.to_string().contains("not a UUID"), "{garbled}");
        assert!(garbled.to_string().contains("orders/2@7"), "{garbled}");
    }

    #[test]
    fn a_record_with_a_fixed_header_twice_is_undecodable_whichever_comes_last() {
        let (real, forged) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        for (name, first, second) in [
            ("ce_id", real.as_str(), forged.as_str()),
            ("ce_type", "OrderPlaced", "OrderCancelled"),
            ("content-type", "application/json", "text/plain"),
        ] {
            let mut headers = vec![("ce_id", real.as_str())];
            if name != "ce_id" {
                headers.push((name, first));
            }
            headers.push((name, second));
            let error = raw(&headers, "{}").decode().expect_err(name);
            assert!(
                error
                    .to_string()
                    .contains(&format!("`{name}` appears more than once")),
                "{name}: {error}"
            );
        }
    }
}
