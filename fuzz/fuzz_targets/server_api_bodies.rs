//! Any request body, behind the signature, through each provider's parsing and validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgconv_server::fuzz_support::server_api_bodies(data);
});
