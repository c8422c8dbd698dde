//! The WAL envelope: what a writer in any language emits with `pg_logical_emit_message`.

use outbox_postgres::wal::envelope::{decode, encode};

use crate::Outcome;

/// Decodes `data` as a WAL envelope. What decodes must encode again, to bytes that decode to the
/// same message and encode to themselves; and an envelope cut short by a byte, or followed by one,
/// is refused.
pub fn wal_envelope(data: &[u8]) -> Outcome {
    let decoded = decode(data);
    let Ok(message) = &decoded else {
        return Outcome::Refused;
    };
    let encoded = match encode(message) {
        Ok(encoded) => encoded,
        Err(error) => panic!("a decoded envelope does not encode: {error}"),
    };
    match decode(&encoded) {
        Ok(again) => assert_eq!(&again, message, "the re-encoded envelope decodes otherwise"),
        Err(error) => panic!("a re-encoded envelope does not decode: {error}"),
    }
    assert_eq!(
        encode(message).ok().as_deref(),
        Some(encoded.as_slice()),
        "encoding is not deterministic"
    );
    if let Some((_, shorter)) = data.split_last() {
        assert!(decode(shorter).is_err(), "an envelope cut short decodes");
    }
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(
        decode(&longer).is_err(),
        "an envelope with a trailing byte decodes"
    );
    Outcome::of(&decoded)
}
