#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brokk_fuzz::websocket::websocket_target(data);
});
