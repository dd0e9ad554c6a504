//! Helpers for the privileged integration tests: throwaway network namespaces joined by veth
//! pairs, sockets opened inside a namespace, and the agent binary run inside one.
//!
//! Every namespace a test creates is removed when its guard drops, also when the test fails.
pub mod netns;
pub mod traffic;
pub mod agent;
pub mod lab;
pub mod packet;

/// Under CI=true a privileged test must run; elsewhere it may skip when not root.
/// Returns false when the caller should skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: needs root (CI=true, so it may not skip)");
    }
    eprintln!("skipping {test}: needs root");
    false
}
