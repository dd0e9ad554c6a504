//! The flows socket's request line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trident_ports_agent::events::socket::{parse_request, wanted_mode};

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(req) = parse_request(line) {
            if let Some(m) = req.mode.as_deref() {
                let _ = wanted_mode(m);
            }
        }
    }
});
