//! Every writer configuration on a small sparse disk, read back by imgconv's own reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::writer_roundtrip(data);
});
