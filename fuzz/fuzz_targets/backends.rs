//! Backend sources (JSON, YAML, multi-document, Lists, Secrets, StorageClasses, PVs), read and
//! compiled: every input gets an inventory or a clear error, never a panic or a hang.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trident_ports_agent::{backends, config::NodeConfig, policy::compile::compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The resolver is not under test, and a lookup may wait out its timeout.
    backends::RESOLVE.store(false, std::sync::atomic::Ordering::Relaxed);
    for name in ["b.yaml", "b.json"] {
        if let Ok(inv) = backends::read_text(Path::new(name), text) {
            let _ = compile(&NodeConfig::default(), &inv, &[]);
        }
    }
});
