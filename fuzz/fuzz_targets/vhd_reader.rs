//! The VHD reader on arbitrary bytes (and with its checksums repaired).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::vhd_reader(data);
});
