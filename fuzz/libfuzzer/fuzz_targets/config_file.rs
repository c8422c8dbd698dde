//! libFuzzer target: `outbox_fuzz::config_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::config_file(data);
});
