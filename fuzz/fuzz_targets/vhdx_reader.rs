//! The VHDX reader on a VHDX file made of the input's pieces.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::vhdx_reader(data);
});
