//! A BPF filesystem of a test's own, and maps pinned on it the way another agent would have.
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

/// Creates a map with bpf(2) and pins it at `path`: what an agent of another version might have
/// left there.
pub fn pin_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_OBJ_PIN: i64 = 6;
    let create = MapCreate {
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
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    // SAFETY: bpf(2) with fully initialised attributes of the sizes passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above; the pin holds its own reference, so the descriptor can be closed.
    unsafe {
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        );
        assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
        libc::close(fd as i32);
    }
}
