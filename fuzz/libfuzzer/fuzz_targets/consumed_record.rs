//! libFuzzer target: `outbox_fuzz::consumed_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = outbox_fuzz::consumed_record(data);
});
