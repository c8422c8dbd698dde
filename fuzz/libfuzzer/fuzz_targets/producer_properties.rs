//! libFuzzer target: `outbox_fuzz::producer_properties`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::producer_properties(data);
});
