//! Format detection, the RAW reader, the planner and the pipeline on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv::fuzz_support::raw_extents(data);
});
