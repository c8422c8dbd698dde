//! The Kafka record of a message: CloudEvents Kafka binding, binary mode.
//!
//! | record part | from |
//! | --- | --- |
//! | key | the message key |
//! | value | the payload bytes |
//! | timestamp | the publish time (the creation time would let retention delete an old backlog on arrival) |
//! | `ce_id` | the message id (what inboxes deduplicate on) |
//! | `ce_type`, `ce_source` | the event type and source (defaults when unset, as CloudEvents requires both) |
//! | `ce_specversion` | `1.0` |
//! | `ce_time` | the creation time, RFC 3339 |
//! | `content-type` | the payload's MIME type |
//! | other headers | the message's headers as given, `traceparent`/`tracestate` among them |

use outbox_core::Message;
use outbox_core::headers::{
    CE_ID, CE_SOURCE, CE_SPECVERSION, CE_TIME, CE_TYPE, CONTENT_TYPE, DEFAULT_SOURCE, DEFAULT_TYPE,
    SPEC_VERSION,
};
use rdkafka::message::{Header, OwnedHeaders};

/// The headers of `message`'s record.
pub fn headers(message: &Message) -> OwnedHeaders {
    let id = message.id.to_string();
    let time = message
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut headers = OwnedHeaders::new_with_capacity(6 + message.headers.len());
    let fixed = [
        (CE_ID, id.as_str()),
        (
            CE_TYPE,
            message.event_type.as_deref().unwrap_or(DEFAULT_TYPE),
        ),
        (
            CE_SOURCE,
            message.source.as_deref().unwrap_or(DEFAULT_SOURCE),
        ),
        (CE_SPECVERSION, SPEC_VERSION),
        (CE_TIME, time.as_str()),
        (CONTENT_TYPE, message.content_type.as_str()),
    ];
    for (key, value) in fixed {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: Some(value.as_bytes()),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn records_carry_cloudevents_headers_and_user_headers() {
        let message = Message::builder("orders")
            .event_type("OrderPlaced")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .json(&1)
            .expect("valid");
        let headers = headers(&message);
        let map: std::collections::HashMap<String, String> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(map["ce_id"], message.id.to_string());
        assert_eq!(map["ce_type"], "OrderPlaced");
        assert_eq!(map["ce_source"], DEFAULT_SOURCE);
        assert_eq!(map["ce_specversion"], "1.0");
        assert_eq!(map["content-type"], "application/json");
        assert!(map["ce_time"].ends_with('Z'));
        assert!(map["traceparent"].starts_with("00-0af7"));
    }
}
