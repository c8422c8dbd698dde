//! libFuzzer target: `outbox_fuzz::setting_values`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::setting_values(data);
});
