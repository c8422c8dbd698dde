//! Entry points for the fuzz targets; not a stable API.
//!
//! They take a record's parts as plain values and run the crate's own code: the headers a message's
//! record carries ([`crate::record::headers`]) and the decoding of a consumed record.

use outbox_core::Message;
use rdkafka::message::Headers as _;

use crate::error::Error;
use crate::received::{RawRecord, Received};

/// A record's headers in order: name, and value (`None` for a null value).
pub type RecordHeaders = Vec<(String, Option<Vec<u8>>)>;

/// Decodes a consumed record made of these parts, as the consumer decodes each record it reads.
///
/// # Errors
/// [`Error::UndecodableRecord`] as for a record read from Kafka.
pub fn decode_record(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(String, Option<Vec<u8>>)],
) -> Result<Received, Error> {
    RawRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec),
        headers: headers.to_vec(),
        unreadable_header_name: false,
    }
    .decode()
}

/// The headers the publisher gives `message`'s record, read back in order.
pub fn record_headers(message: &Message) -> RecordHeaders {
    crate::record::headers(message)
        .iter()
        .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
        .collect()
}
