//! The node configuration: a value or an error naming the line, never a panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trident_ports_agent::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = NodeConfig::from_yaml(Path::new("node.yaml"), text);
    }
});
