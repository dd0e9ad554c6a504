//! The test peers: the real servers, clients and tools the suites talk to, from Debian's packages
//! (and one validator from PyPI). `cargo xtask test`, `test --vm` and `bench` install what their
//! suites need and is missing, saying what and why, as `setup` does for the eBPF toolchain.
//! `.ci/run` keeps no list of its own: it calls these commands.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_checked;

/// One thing a suite runs: how to find it (a command on PATH, or an absolute path), the Debian
/// package that brings it, and why the suite needs it.
struct Peer {
    probe: &'static str,
    package: &'static str,
    why: &'static str,
}

const fn peer(probe: &'static str, package: &'static str, why: &'static str) -> Peer {
    Peer {
        probe,
        package,
        why,
    }
}

/// What the suites of `cargo xtask test` need on the host.
const TEST: &[Peer] = &[
    peer("ip", "iproute2", "test network namespaces and veth pairs"),
    peer("tc", "iproute2", "clsact attachment checks"),
    peer(
        "nft",
        "nftables",
        "`nft -c` checks of `plan --format nftables`",
    ),
    peer(
        "promtool",
        "prometheus",
        "`promtool check metrics` on /metrics",
    ),
    peer(
        "ganesha.nfsd",
        "nfs-ganesha",
        "the storage lab's NFS server",
    ),
    peer(
        "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
        "nfs-ganesha-vfs",
        "nfs-ganesha's VFS back end",
    ),
    peer("rpcbind", "rpcbind", "the lab's portmapper (NFSv3)"),
    peer("rpc.statd", "nfs-common", "the lab's NSM (NFSv3 locking)"),
    peer("tgtd", "tgt", "the storage lab's iSCSI target"),
    peer("smbd", "samba", "the storage lab's SMB server"),
    peer("smbclient", "smbclient", "the lab's SMB client"),
    peer("nfs-ls", "libnfs-utils", "the lab's NFS client (libnfs)"),
    peer(
        "iscsi-inq",
        "libiscsi-bin",
        "the lab's iSCSI client (libiscsi)",
    ),
    peer("curl", "curl", "the lab's HTTPS client"),
    peer(
        "openssl",
        "openssl",
        "the lab's HTTPS server and certificates",
    ),
];

/// What `cargo xtask test --vm` needs besides [`TEST`]: QEMU, the initramfs tools, the kernel
/// packages' compressors, and the node's kernel clients copied into the guest.
const VM: &[Peer] = &[
    peer("qemu-system-x86_64", "qemu-system-x86", "the test VM"),
    peer("/bin/busybox", "busybox-static", "the guest's userland"),
    peer("cpio", "cpio", "the guest's initramfs"),
    peer(
        "strip",
        "binutils",
        "the guest's test binaries without their debug information",
    ),
    peer("xz", "xz-utils", "unpacking Debian kernel packages"),
    peer("zstd", "zstd", "unpacking Debian kernel packages"),
    peer(
        "mount.nfs",
        "nfs-common",
        "the node's kernel NFS client in the guest",
    ),
    peer(
        "iscsid",
        "open-iscsi",
        "the node's kernel iSCSI initiator in the guest",
    ),
];

/// What `cargo xtask bench` compares against and drives traffic with.
const BENCH: &[Peer] = &[
    peer("iperf3", "iperf3", "throughput and real-traffic cost"),
    peer("iptables", "iptables", "the iptables baseline"),
    peer("nft", "nftables", "the nftables baseline"),
];

/// The validator `cargo xtask test` checks deploy/ with, pinned.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    Test,
    Vm,
    Bench,
}

impl Suite {
    fn peers(self) -> impl Iterator<Item = &'static Peer> {
        match self {
            Suite::Test => TEST.iter().chain(&[]),
            Suite::Vm => TEST.iter().chain(VM),
            Suite::Bench => BENCH.iter().chain(&[]),
        }
    }
}

/// Whether dpkg has `package` installed.
pub(crate) fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn found(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {probe}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what `suite` needs and is missing. Needs root; without it, names the packages.
pub(crate) fn ensure(suite: Suite) -> anyhow::Result<()> {
    ensure_all(&[suite], &[], "")
}

/// Installs what any of `suites` needs and is missing, and those of the Debian `packages` (needed
/// for `why`) dpkg does not have, in one apt-get: `prepare` gets everything at once.
pub(crate) fn ensure_all(suites: &[Suite], packages: &[&str], why: &str) -> anyhow::Result<()> {
    let mut missing: Vec<&Peer> = suites
        .iter()
        .flat_map(|s| s.peers())
        .filter(|p| !found(p.probe))
        .collect();
    // Suites share peers (the VM's include the host tests'): each is named and installed once.
    missing.sort_by_key(|p| p.probe);
    missing.dedup_by_key(|p| p.probe);
    let packages: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() || !packages.is_empty() {
        install(&missing, &packages, why)?;
    }
    if suites.contains(&Suite::Test) && !found("kubernetes-validate") {
        eprintln!(
            "xtask: installing {KUBERNETES_VALIDATE} (pip): validates deploy/ against the Kubernetes schemas"
        );
        run_checked(Command::new("pip").args([
            "install",
            "-q",
            "--break-system-packages",
            KUBERNETES_VALIDATE,
        ]))
        .or_else(|_| run_checked(Command::new("pip").args(["install", "-q", KUBERNETES_VALIDATE])))
        .context("installing kubernetes-validate")?;
    }
    Ok(())
}

fn install(missing: &[&Peer], more: &[&str], why: &str) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = missing
        .iter()
        .map(|p| p.package)
        .chain(more.iter().copied())
        .collect();
    packages.sort_unstable();
    packages.dedup();
    for p in missing {
        eprintln!("xtask: installing {} ({}: {})", p.package, p.probe, p.why);
    }
    if !more.is_empty() {
        eprintln!("xtask: installing {} ({why})", more.join(" "));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the tests need these Debian packages: apt-get install {} (run as root to have xtask install them)",
            packages.join(" ")
        );
    }
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "-o",
                "Dpkg::Use-Pty=0",
            ])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()),
    )
    .with_context(|| format!("apt-get install {}", packages.join(" ")))?;
    let still: Vec<&str> = missing
        .iter()
        .filter(|p| !found(p.probe))
        .map(|p| p.probe)
        .collect();
    let still: Vec<&str> = still
        .into_iter()
        .chain(more.iter().copied().filter(|p| !installed(p)))
        .collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    Ok(())
}
