//! Any request to `imgconv serve`: routing, every provider's signature check, error shapes;
//! nothing unsigned may be accepted or queued.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv_server::fuzz_support::server_request(data);
});
