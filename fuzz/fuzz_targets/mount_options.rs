//! NFS mount options, as classes, PVs, backends and mountinfo give them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trident_ports_agent::{
    backends::Mount,
    sessions::{Sessions, parse_mountinfo},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Mount::parse(text) {
            let _ = (m.v3(), m.v4(), m.v40(), m.pinned());
        }
        let mut s = Sessions::default();
        parse_mountinfo(text, &mut s);
    }
});
