//! libFuzzer target: `outbox_fuzz::wal_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::wal_envelope(data);
});
