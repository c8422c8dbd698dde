//! The envelope of a message carried in the WAL: what `pg_logical_emit_message` stores and the
//! relay decodes.
//!
//! Version 1, all integers big-endian:
//!
//! | field | encoding |
//! | --- | --- |
//! | version | 1 byte, `1` |
//! | id | 16 bytes (UUID) |
//! | created_at | i64, microseconds since the Unix epoch |
//! | topic | u16 length + UTF-8 |
//! | key | u32 length + bytes, `0xFFFF_FFFF` for none |
//! | event type | u32 length + UTF-8, `0xFFFF_FFFF` for none |
//! | source | u32 length + UTF-8, `0xFFFF_FFFF` for none |
//! | content type | u16 length + UTF-8 |
//! | headers | u32 count, then per header: u16 name length + UTF-8, u32 value length + UTF-8 |
//! | payload | u32 length + bytes, the last field: nothing may follow it |
//!
//! Writers in other languages build the same bytes; `docs/sql-api.md` shows one in SQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::Message;
use uuid::Uuid;

/// The version this library writes and reads.
pub const VERSION: u8 = 1;

const NONE: u32 = u32::MAX;

/// Why logical message content is not an envelope this library can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed outbox envelope: {0}")]
pub struct EnvelopeError(String);

/// Why a message cannot be put in an envelope: a field longer than its length prefix holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {id}: the {field} is too long for the WAL envelope ({len} bytes, at most {max})")]
pub struct TooLong {
    /// The message's id.
    pub id: Uuid,
    /// Which field.
    pub field: &'static str,
    /// Its length.
    pub len: usize,
    /// The most its prefix holds.
    pub max: usize,
}

/// Encodes `message` as a version-1 envelope.
///
/// # Errors
/// [`TooLong`] when a field does not fit its length prefix (a topic or content type over 64 KiB,
/// anything else over 4 GiB).
pub fn encode(message: &Message) -> Result<Vec<u8>, TooLong> {
    let mut out = Vec::with_capacity(64 + message.size() as usize);
    let mut writer = Writer {
        out: &mut out,
        id: message.id,
    };
    writer.out.push(VERSION);
    writer.out.extend_from_slice(message.id.as_bytes());
    writer
        .out
        .extend_from_slice(&message.created_at.timestamp_micros().to_be_bytes());
    writer.short("topic", message.topic.as_bytes())?;
    writer.optional("key", message.key.as_deref())?;
    writer.optional(
        "event type",
        message.event_type.as_ref().map(|t| t.as_bytes()),
    )?;
    writer.optional("source", message.source.as_ref().map(|s| s.as_bytes()))?;
    writer.short("content type", message.content_type.as_bytes())?;
    writer.long("header count", &[], message.headers.len())?;
    for (name, value) in &message.headers {
        writer.short("header name", name.as_bytes())?;
        writer.long("header value", value.as_bytes(), value.len())?;
    }
    writer.long("payload", &message.payload, message.payload.len())?;
    Ok(out)
}

/// Decodes a version-1 envelope. The message is not validated here; the relay checks it as it
/// checks a row.
///
/// # Errors
/// [`EnvelopeError`] naming the first field that is missing, truncated or not UTF-8, an unknown
/// version, or bytes after the payload.
pub fn decode(content: &[u8]) -> Result<Message, EnvelopeError> {
    let mut reader = Reader { rest: content };
    let version = reader.take("version", 1)?[0];
    if version != VERSION {
        return Err(EnvelopeError(format!(
            "version {version}; this relay reads version {VERSION}"
        )));
    }
    let id =
        Uuid::from_slice(reader.take("id", 16)?).map_err(|e| EnvelopeError(format!("id: {e}")))?;
    let micros = i64::from_be_bytes(reader.array("created_at")?);
    let created_at = DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| EnvelopeError(format!("created_at {micros} is out of range")))?;
    let topic = reader.short_text("topic")?;
    let key = reader.optional("key")?.map(<[u8]>::to_vec);
    let event_type = reader.optional_text("event type")?;
    let source = reader.optional_text("source")?;
    let content_type = reader.short_text("content type")?;
    let count = u32::from_be_bytes(reader.array("header count")?);
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let name = reader.short_text("header name")?;
        let len = u32::from_be_bytes(reader.array("header value length")?) as usize;
        let value = text("header value", reader.take("header value", len)?)?;
        if headers.insert(name.clone(), value).is_some() {
            return Err(EnvelopeError(format!("header `{name}` appears twice")));
        }
    }
    let len = u32::from_be_bytes(reader.array("payload length")?) as usize;
    let payload = reader.take("payload", len)?.to_vec();
    if !reader.rest.is_empty() {
        return Err(EnvelopeError(format!(
            "{} bytes after the payload",
            reader.rest.len()
        )));
    }
    Ok(Message {
        id,
        topic,
        key,
        event_type,
        source,
        content_type,
        payload,
        headers,
        created_at,
    })
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    id: Uuid,
}

impl Writer<'_> {
    fn too_long(&self, field: &'static str, len: usize, max: usize) -> TooLong {
        TooLong {
            id: self.id,
            field,
            len,
            max,
        }
    }

    fn short(&mut self, field: &'static str, bytes: &[u8]) -> Result<(), TooLong> {
        let len = u16::try_from(bytes.len())
            .map_err(|_| self.too_long(field, bytes.len(), u16::MAX as usize))?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// A u32 length (or count) `len`, then `bytes`.
    fn long(&mut self, field: &'static str, bytes: &[u8], len: usize) -> Result<(), TooLong> {
        let prefix = u32::try_from(len)
            .ok()
            .filter(|&len| len != NONE)
            .ok_or_else(|| self.too_long(field, len, NONE as usize - 1))?;
        self.out.extend_from_slice(&prefix.to_be_bytes());
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn optional(&mut self, field: &'static str, bytes: Option<&[u8]>) -> Result<(), TooLong> {
        match bytes {
            Some(bytes) => self.long(field, bytes, bytes.len()),
            None => {
                self.out.extend_from_slice(&NONE.to_be_bytes());
                Ok(())
            }
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &str, len: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.rest.len() < len {
            return Err(EnvelopeError(format!(
                "truncated in the {field} ({len} bytes wanted, {} left)",
                self.rest.len()
            )));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], EnvelopeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(field, N)?);
        Ok(array)
    }

    fn short_text(&mut self, field: &str) -> Result<String, EnvelopeError> {
        let len = u16::from_be_bytes(self.array(field)?) as usize;
        text(field, self.take(field, len)?)
    }

    fn optional(&mut self, field: &str) -> Result<Option<&'a [u8]>, EnvelopeError> {
        match u32::from_be_bytes(self.array(field)?) {
            NONE => Ok(None),
            len => self.take(field, len as usize).map(Some),
        }
    }

    fn optional_text(&mut self, field: &str) -> Result<Option<String>, EnvelopeError> {
        self.optional(field)?
            .map(|bytes| text(field, bytes))
            .transpose()
    }
}

fn text(field: &str, bytes: &[u8]) -> Result<String, EnvelopeError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| EnvelopeError(format!("the {field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message::builder("orders")
            .key("order-7")
            .event_type("OrderPlaced")
            .source("/orders")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tenant", "acme")
            .json(&serde_json::json!({"id": 7}))
            .expect("valid message")
    }

    #[test]
    fn a_message_comes_back_as_it_went_in() {
        let original = message();
        let decoded = decode(&encode(&original).expect("encodes")).expect("decodes");
        // The envelope keeps microseconds, as PostgreSQL's timestamptz does.
        let mut expected = original;
        expected.created_at =
            DateTime::from_timestamp_micros(expected.created_at.timestamp_micros())
                .expect("in range");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn absent_optional_fields_and_an_empty_payload_round_trip() {
        let original = Message::builder("t")
            .bytes(Vec::new(), "application/octet-stream")
            .expect("valid");
        let decoded = decode(&encode(&original).expect("encodes")).expect("decodes");
        assert_eq!(decoded.key, None);
        assert_eq!(decoded.event_type, None);
        assert_eq!(decoded.source, None);
        assert!(decoded.payload.is_empty());
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused_by_name() {
        let bytes = encode(&message()).expect("encodes");
        for len in 0..bytes.len() {
            let error = decode(&bytes[..len]).expect_err("a truncated envelope");
            assert!(error.to_string().contains("truncated"), "{len}: {error}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let error = decode(&longer).expect_err("a trailing byte");
        assert!(error.to_string().contains("after the payload"), "{error}");
    }

    #[test]
    fn another_version_non_utf8_text_and_a_repeated_header_are_refused() {
        let mut bytes = encode(&message()).expect("encodes");
        bytes[0] = 2;
        assert!(
            decode(&bytes)
                .expect_err("v2")
                .to_string()
                .contains("version 2")
        );

        let mut bytes = encode(&message()).expect("encodes");
        // The topic's first byte: after version, id and created_at, and its 2-byte length.
        bytes[1 + 16 + 8 + 2] = 0xff;
        assert!(
            decode(&bytes)
                .expect_err("bad utf-8")
                .to_string()
                .contains("topic")
        );

        let mut twice = message();
        twice.headers.clear();
        twice.headers.insert("a".into(), "1".into());
        let mut bytes = encode(&twice).expect("encodes");
        // Append a second copy of the header by rewriting the count and the header block.
        let at = bytes
            .windows(3)
            .position(|w| w == [0, 1, b'a'])
            .expect("the header");
        let header = bytes[at..at + 2 + 1 + 4 + 1].to_vec();
        bytes[at - 1] = 2;
        bytes.splice(at..at, header);
        assert!(
            decode(&bytes)
                .expect_err("repeated")
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn a_topic_longer_than_its_prefix_is_refused_when_encoding() {
        let mut long = message();
        long.topic = "t".repeat(70_000);
        let error = encode(&long).expect_err("too long");
        assert_eq!(error.field, "topic");
    }
}
