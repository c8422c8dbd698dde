//! libFuzzer target: `outbox_fuzz::stored_row`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::stored_row(data);
});
