//! The OVA reader on arbitrary bytes (the first picks the disk).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::ova_reader(data);
});
