//! What the storage lab and the node's kernel clients need inside the guest: nfs-ganesha with
//! its VFS back end, rpcbind and rpc.statd, tgt, open-iscsi and mount.nfs, the lab's readiness
//! clients, the configuration files they read, and the kernel's NFS and iSCSI clients.
use std::path::{Path, PathBuf};

use anyhow::bail;

use super::initramfs::Guest;

/// (host path, Debian package). Libraries that are loaded with dlopen are listed too: ldd of
/// the program does not name them.
const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/ganesha.nfsd", "nfs-ganesha"),
    (
        "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
        "nfs-ganesha-vfs",
    ),
    (
        "/usr/lib/x86_64-linux-gnu/libnfsidmap/nsswitch.so",
        "libnfsidmap1",
    ),
    ("/usr/sbin/rpcbind", "rpcbind"),
    ("/usr/sbin/rpc.statd", "nfs-common"),
    ("/usr/sbin/mount.nfs", "nfs-common"),
    ("/usr/sbin/tgtd", "tgt"),
    ("/usr/sbin/tgtadm", "tgt"),
    ("/usr/sbin/iscsid", "open-iscsi"),
    ("/usr/sbin/iscsiadm", "open-iscsi"),
    ("/usr/bin/nfs-ls", "libnfs-utils"),
    ("/usr/bin/iscsi-inq", "libiscsi-bin"),
];

/// Configuration the programs above read: libtirpc's transports, the ID mapper's domain,
/// service and RPC program names.
const CONFIG: &[(&str, &str)] = &[
    ("/etc/netconfig", "libtirpc-common"),
    ("/etc/idmapd.conf", "nfs-common"),
    ("/etc/services", "netbase"),
    ("/etc/protocols", "netbase"),
    ("/etc/rpc", "netbase"),
    ("/etc/iscsi/iscsid.conf", "open-iscsi"),
];

/// rpcbind drops to `_rpc`, rpc.statd to `statd`; ganesha looks up `nobody`.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    _rpc:x:100:65534::/run/rpcbind:/usr/sbin/nologin\n\
    statd:x:101:65534::/var/lib/nfs:/usr/sbin/nologin\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The kernel's NFS client (v3 and v4) and iSCSI initiator with a disk driver, and the CRC32C
/// the iSCSI connection asks the crypto API for (without it the login fails with ENOMEM: no
/// modprobe in the guest loads it on demand). Names differ between releases.
const MODULES: &[&[&str]] = &[
    &["nfsv3"],
    &["nfsv4"],
    &["iscsi_tcp"],
    &["sd_mod"],
    &["crc32c_generic", "crc32c-cryptoapi", "crc32c"],
];

/// Adds the lab to `guest`, or says which package to install.
pub(super) fn add(guest: &mut Guest) -> anyhow::Result<()> {
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .chain(CONFIG)
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the storage lab for the VM needs: apt-get install {}",
            missing.join(" ")
        );
    }
    for (path, _) in PROGRAMS.iter().chain(CONFIG) {
        guest.files.push((PathBuf::from(path), path.to_string()));
    }
    guest.texts.push(("/etc/passwd".into(), PASSWD.into()));
    guest.texts.push(("/etc/group".into(), GROUP.into()));
    // ganesha's VFS back end finds the exported file system in /etc/mtab.
    guest
        .links
        .push(("/etc/mtab".into(), "/proc/self/mounts".into()));
    guest.modules.extend_from_slice(MODULES);
    Ok(())
}
