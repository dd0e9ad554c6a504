//! Every input kept under fuzz/regressions/<target>/ (what `cargo xtask fuzz parsers` once
//! crashed on, and inputs written to be hard) through the same calls as its fuzz target: each
//! gets a value or an error, never a panic.
use std::path::{Path, PathBuf};

use trident_ports_agent::{
    backends::{self, Mount},
    config::NodeConfig,
    events::socket::{parse_request, wanted_mode},
    policy::compile::compile,
    sessions::{Sessions, parse_mountinfo},
};

fn inputs(target: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((p.clone(), String::from_utf8(std::fs::read(&p).ok()?).ok()?)))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "{}: no inputs", dir.display());
    v
}

#[test]
fn backend_inputs_get_an_inventory_or_an_error() {
    backends::RESOLVE.store(false, std::sync::atomic::Ordering::Relaxed);
    for (path, text) in inputs("backends") {
        match backends::read_text(&path, &text) {
            Ok(inv) => {
                let _ = compile(&NodeConfig::default(), &inv, &[]);
            }
            Err(e) => assert!(
                e.to_string().starts_with(&path.display().to_string()),
                "{e}"
            ),
        }
    }
}

#[test]
fn node_configurations_get_a_value_or_an_error() {
    for (path, text) in inputs("node_config") {
        if let Err(e) = NodeConfig::from_yaml(&path, &text) {
            assert!(e.to_string().contains("line"), "{}: {e}", path.display());
        }
    }
}

#[test]
fn mount_options_and_mountinfo_get_an_answer() {
    for (_, text) in inputs("mount_options") {
        let _ = Mount::parse(&text);
        let mut s = Sessions::default();
        parse_mountinfo(&text, &mut s);
    }
}

#[test]
fn socket_requests_get_an_answer() {
    for (_, text) in inputs("socket_request") {
        if let Ok(r) = parse_request(&text) {
            if let Some(m) = r.mode.as_deref() {
                let _ = wanted_mode(m);
            }
        }
    }
}
