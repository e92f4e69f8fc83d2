//! The GCE package (`disk.raw` in a `tar.gz`) reader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::gce_reader(data);
});
