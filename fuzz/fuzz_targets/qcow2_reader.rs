//! The QCOW2 reader on arbitrary bytes: header, L1/L2 walks, compressed clusters, info.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::qcow2_reader(data);
});
