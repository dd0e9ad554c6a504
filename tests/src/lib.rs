//! Helpers for the privileged integration tests: throwaway network namespaces joined by veth
//! pairs, sockets opened inside a namespace, and the agent binary run inside one.
//!
//! Every namespace a test creates is removed when its guard drops, also when the test fails.
pub mod agent;
pub mod apiserver;
pub mod bpffs;
pub mod differential;
pub mod kube;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod packet;
pub mod sockets;
pub mod traffic;

/// Under CI=true a privileged test must run; elsewhere it may skip when not root.
/// Returns false when the caller should skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "{test}: needs root (CI=true, so it may not skip)"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// The running kernel's (major, minor).
pub fn kernel() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// False (with the reason printed) when the kernel predates a feature a test needs: the only
/// skip allowed under CI=true, since the feature does not exist there.
pub fn kernel_has(test: &str, at_least: (u32, u32), feature: &str) -> bool {
    let k = kernel();
    if k >= at_least {
        return true;
    }
    eprintln!(
        "skipping {test} on kernel {}.{}: {feature} needs {}.{}",
        k.0, k.1, at_least.0, at_least.1
    );
    false
}

/// XDP ingress needs bpf_xdp_load_bytes.
pub const XDP_KERNEL: (u32, u32) = (5, 18);

/// Keeps the calling thread on CPU 0 while it lives, then gives it back its CPUs. Test runs
/// (BPF_PROG_TEST_RUN) execute on the caller's CPU and the datapath's recent-flow cache is per
/// CPU: on one CPU, which path answers a repeated flow (cache or connection table) is known.
pub struct OnCpu0(libc::cpu_set_t);

impl OnCpu0 {
    pub fn pin() -> Self {
        let size = size_of::<libc::cpu_set_t>();
        // SAFETY: sched_{get,set}affinity on the calling thread with owned, sized sets.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size, &raw mut old), 0);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(libc::sched_setaffinity(0, size, &raw const set), 0);
            OnCpu0(old)
        }
    }
}

impl Drop for OnCpu0 {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.0) };
    }
}
