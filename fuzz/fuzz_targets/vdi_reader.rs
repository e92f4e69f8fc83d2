//! The VDI reader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::vdi_reader(data);
});
