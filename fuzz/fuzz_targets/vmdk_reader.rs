//! The VMDK reader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::vmdk_reader(data);
});
