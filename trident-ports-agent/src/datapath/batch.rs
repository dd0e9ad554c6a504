//! BPF_MAP_UPDATE_BATCH and BPF_MAP_DELETE_BATCH (Linux 5.6) for hash maps: one system call per
//! chunk of keys instead of one per key, which is most of a large policy switch's time. aya 0.14
//! has no batch operations, so these are the raw commands. LPM tries have none; they are written
//! key by key.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Keys per system call: the kernel copies keys and values in chunks of its own, so larger
/// batches only cost memory.
const CHUNK: usize = 4096;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; the key and
    // value pointers in it point at `count` elements of the map's key and value sizes that
    // outlive the call (the callers' slices), and the kernel writes back only `count`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Inserts `keys[i] -> values[i]` (BPF_ANY). `K` and `V` must be the map's key and value types.
pub(super) fn update<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count as usize != k.len() {
            return Err(io::Error::other(format!(
                "batch update wrote {} of {} entries",
                attr.count,
                k.len()
            )));
        }
    }
    Ok(())
}

/// Deletes `keys`. The kernel stops a batch at the first key that is not there (ENOENT); the
/// rest of that chunk is then deleted key by key, ignoring the missing ones. Returns how many
/// keys were missing.
pub(super) fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut missing = 0;
    for chunk in keys.chunks(CHUNK) {
        let mut done = 0;
        while done < chunk.len() {
            let rest = &chunk[done..];
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                count: rest.len() as u32,
                map_fd: map.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            match call(BPF_MAP_DELETE_BATCH, &mut attr) {
                Ok(()) => done = chunk.len(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // `count` says how many went before the missing key; skip that one.
                    done += attr.count as usize + 1;
                    missing += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(missing)
}
