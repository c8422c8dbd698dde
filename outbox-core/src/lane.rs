//! Keys to partitions and lanes.
//!
//! Ordering is kept per *lane*: every key maps to one of a fixed number of slots when the message is
//! enqueued, and a relay configured with `lanes` lanes owns slot `s` through lane `s % lanes`. The slot
//! is derived from the key with Kafka's murmur2, the hash Java clients use to pick a partition, so the
//! same key always lands in the same slot whatever the lane count.

/// Number of slots a key can hash to. Lane counts must divide it so that lanes stay even.
pub const SLOTS: u32 = 1024;

#[doc(hidden)] // for the adapters; users need `java_partition` and `slot_for`
/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`), bit for bit.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition the Java client's default partitioner picks for `key` among `partitions`.
///
/// Returns `None` when `partitions` is zero.
pub fn java_partition(key: &[u8], partitions: u32) -> Option<u32> {
    (partitions > 0).then(|| (murmur2(key) & 0x7fff_ffff) % partitions)
}

/// The slot of a message: from its key when it has one, else from its id (spreading keyless messages
/// evenly).
pub fn slot_for(key: Option<&[u8]>, id: &uuid::Uuid) -> u32 {
    let bytes = key.unwrap_or(id.as_bytes());
    (murmur2(bytes) & 0x7fff_ffff) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values from the Java client's `UtilsTest.testMurmur2`.
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn keyed_messages_share_a_slot_and_keyless_ones_spread() {
        let a = uuid::Uuid::now_v7();
        let b = uuid::Uuid::now_v7();
        assert_eq!(
            slot_for(Some(b"order-1"), &a),
            slot_for(Some(b"order-1"), &b)
        );
        let slots: std::collections::HashSet<u32> = (0..200)
            .map(|_| slot_for(None, &uuid::Uuid::now_v7()))
            .collect();
        assert!(
            slots.len() > 100,
            "keyless messages landed in only {} slots",
            slots.len()
        );
        assert_eq!(java_partition(b"x", 0), None);
    }
}
