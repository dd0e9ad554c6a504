//! A BPF filesystem of a test's own, maps pinned on it the way another agent would have, and
//! the raw bpf(2) call for what aya does not offer.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::unique;

/// A BPF filesystem of the test's own, outside /sys (which `ip netns exec` remounts).
pub struct BpfFs(pub PathBuf);

impl BpfFs {
    pub fn mount() -> Self {
        let p = std::env::temp_dir().join(unique("tp-bpffs-"));
        std::fs::create_dir_all(&p).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf", p.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a bpf filesystem");
        BpfFs(p)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Creates a map with bpf(2).
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> std::os::fd::OwnedFd {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: i64 = 0;
    let mut create = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK, which is small by default.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    let fd = sys_bpf(BPF_MAP_CREATE, &mut create).expect("BPF_MAP_CREATE");
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

/// Creates a map with bpf(2) and pins it at `path`: what an agent of another version might have
/// left there.
pub fn pin_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_PIN: i64 = 6;
    let fd = create_map(map_type, key_size, value_size, max_entries);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        file_flags: 0,
    };
    // The pin holds its own reference; the descriptor closes when `fd` drops.
    sys_bpf(BPF_OBJ_PIN, &mut pin).expect("BPF_OBJ_PIN");
}

/// bpf(2) with `attr` as the command's attribute; the kernel may write results back into it.
/// `T` must be the `#[repr(C)]` prefix of the command's `union bpf_attr` member, every field
/// initialised (the kernel takes the size passed and zero for the rest).
pub fn sys_bpf<T>(cmd: i64, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: the pointer and size describe `attr`, which lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<T>(attr),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// BPF_MAP_FREEZE: from now on no system call may write the map (programs still may), so that a
/// test can make the agent's next write to it fail.
pub fn freeze(path: &Path) {
    #[repr(C)]
    struct MapFreeze {
        map_fd: u32,
    }
    const BPF_MAP_FREEZE: i64 = 22;
    let map = aya::maps::MapData::from_pin(path).expect("opening a pinned map");
    let mut attr = MapFreeze {
        map_fd: std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd())) as u32,
    };
    sys_bpf(BPF_MAP_FREEZE, &mut attr).expect("BPF_MAP_FREEZE");
}
