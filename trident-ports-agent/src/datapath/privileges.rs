//! Checks the capabilities the agent needs before the kernel answers with a bare EPERM.
use crate::error::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

pub fn check() -> Result<()> {
    let Some(caps) = effective_caps() else {
        return Ok(());
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Privileges {
            missing: missing.join(", "),
        })
    }
}
