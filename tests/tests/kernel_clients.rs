//! The node's own kernel clients, the ones kubelet's mounts and Trident's iSCSI logins use,
//! through the enforcing agent: NFSv3 and NFSv4.1 mounts by mount.nfs and the kernel's NFS
//! client, and an iSCSI login by iscsid and iscsi_tcp, to the storage lab's nfs-ganesha and tgt.
//!
//! The node is the root network namespace, as on a real worker: the kernel's iSCSI netlink
//! exists only there. These tests mount file systems and start iscsid on the machine they run
//! on, so they run only inside the throwaway test VM (`cargo xtask test --vm KERNEL`), which
//! packs the servers, the clients and the kernel modules; elsewhere they skip and say so.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use trident_ports_agent::datapath::seed::connected_socket;
use trident_ports_common::{FlowKey, PROTO_TCP, v4_mapped};
use trident_ports_tests::{
    agent::{Agent, uninstall},
    bpffs::{BpfFs, pin_map},
    lab::{CHAP_SECRET, CHAP_USER, LUN_LABEL, Lab, Service, TARGET, assert_nfsv3_block_explained},
    netns::NetNs,
    node::NodeDir,
    require_root,
};

fn in_test_vm(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if std::env::var("TRIDENT_PORTS_EMULATED").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!(
        "skipping {test}: it mounts NFS and logs in to iSCSI with this machine's own kernel \
         clients, so it runs only in the test VM (cargo xtask test --vm 6.12)"
    );
    false
}

fn start_lab() -> Lab {
    let started = Instant::now();
    let lab = Lab::start_with(NetNs::root(), &[Service::Nfs, Service::Iscsi]);
    eprintln!("lab up in {:.1?}", started.elapsed());
    lab
}

fn agent(lab: &Lab, name: &str, backends: &str) -> Agent {
    agent_with(lab, name, backends, &[])
}

fn agent_with(lab: &Lab, name: &str, backends: &str, extra: &[&str]) -> Agent {
    let node = NodeDir::at(lab.dir.join(format!("agent-{name}")))
        .backend("backends.yaml", backends)
        // Trident ignores dataLIF on SAN backends: the SVM's iSCSI portal is declared.
        .raw_config(
            "backends:\n  sources: [backends]\n  dataAddresses: {san: [192.0.2.2/32]}\nevents: {interval: 1s}\n",
        );
    Agent::run(&lab.pair, &node.config_path(), extra)
}

/// Runs a client command with a time limit; Ok(stdout) or Err(what it printed).
fn client(cmd: &[&str], limit: Duration) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd[0]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{} ({}): {text}", cmd.join(" "), out.status))
    }
}

/// A kernel NFS mount, unmounted when dropped.
struct NfsMount {
    dir: PathBuf,
}

impl NfsMount {
    /// `mount.nfs SOURCE DIR -o OPTIONS` with one attempt (retry=0): an allowed mount takes
    /// well under a second, a blocked one fails when mount.nfs gives up on its RPC.
    fn new(lab: &Lab, source: &str, options: &str) -> Result<Self, String> {
        Self::within(lab, source, options, Duration::from_secs(90))
    }

    /// As `new`, with mount.nfs killed after `limit`: for a mount that must fail where
    /// mount.nfs would retry its RPC for much longer than an allowed mount takes.
    fn within(lab: &Lab, source: &str, options: &str, limit: Duration) -> Result<Self, String> {
        let dir = lab
            .dir
            .join(format!("mnt-{}", trident_ports_tests::netns::unique("")));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = format!("{options},retry=0");
        let started = Instant::now();
        let mounted = client(
            &["mount.nfs", source, dir.to_str().unwrap(), "-o", &opts],
            limit,
        );
        eprintln!(
            "mount.nfs {source} -o {opts}: {} after {:.1?}",
            if mounted.is_ok() { "mounted" } else { "failed" },
            started.elapsed()
        );
        mounted?;
        Ok(NfsMount { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for NfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-f")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// iscsid for the node, with its database under /var/lib/iscsi; on drop every session logs
/// out and the daemon stops.
struct Iscsid {
    child: Child,
}

impl Iscsid {
    fn start() -> Self {
        for d in ["/etc/iscsi", "/var/lib/iscsi", "/run/lock/iscsi"] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            "/etc/iscsi/initiatorname.iscsi",
            "InitiatorName=iqn.2026-11.test.lab:node\n",
        )
        .unwrap();
        let child = Command::new("iscsid")
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iscsid");
        // iscsiadm talks to iscsid over an abstract socket: wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while iscsiadm(&["-m", "session"]).is_err_and(|e| e.contains("could not communicate")) {
            assert!(Instant::now() < deadline, "iscsid did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Iscsid { child }
    }
}

impl Drop for Iscsid {
    fn drop(&mut self) {
        let _ = iscsiadm(&["-m", "node", "--logoutall=all"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all("/var/lib/iscsi");
    }
}

fn iscsiadm(args: &[&str]) -> Result<String, String> {
    iscsiadm_within(args, Duration::from_secs(60))
}

fn iscsiadm_within(args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = vec!["iscsiadm"];
    cmd.extend_from_slice(args);
    client(&cmd, limit)
}

/// Discovery, CHAP, login to `portal`; returns the block device of LUN 1.
fn iscsi_login(portal: &str) -> Result<PathBuf, String> {
    let started = Instant::now();
    let found = iscsiadm(&["-m", "discovery", "-t", "sendtargets", "-p", portal])?;
    assert!(found.contains(TARGET), "discovery: {found}");
    let node = ["-m", "node", "-T", TARGET, "-p", portal];
    for (name, value) in [
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", CHAP_USER),
        ("node.session.auth.password", CHAP_SECRET),
    ] {
        let mut args = node.to_vec();
        args.extend(["-o", "update", "-n", name, "-v", value]);
        iscsiadm(&args)?;
    }
    let mut args = node.to_vec();
    args.push("--login");
    iscsiadm(&args)?;
    // The SCSI scan runs after the login returns: wait for LUN 1's disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dev) = lun_device() {
            eprintln!(
                "iSCSI login to {portal}: {} after {:.1?}",
                dev.display(),
                started.elapsed()
            );
            return Ok(dev);
        }
        if Instant::now() > deadline {
            return Err("logged in, but no disk appeared for LUN 1".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// /dev/<disk> of the iSCSI session's LUN 1, from sysfs.
fn lun_device() -> Option<PathBuf> {
    for session in std::fs::read_dir("/sys/class/iscsi_session")
        .ok()?
        .flatten()
    {
        let device = session.path().join("device");
        for target in std::fs::read_dir(&device).ok()?.flatten() {
            let Ok(luns) = std::fs::read_dir(target.path()) else {
                continue;
            };
            for lun in luns.flatten() {
                if !lun.file_name().to_string_lossy().ends_with(":1") {
                    continue;
                }
                let disk = std::fs::read_dir(lun.path().join("block"))
                    .ok()?
                    .flatten()
                    .next()?;
                // The node appears before the disk is usable: wait for its capacity too.
                let size = std::fs::read_to_string(disk.path().join("size")).ok()?;
                let dev = Path::new("/dev").join(disk.file_name());
                if dev.exists() && size.trim().parse::<u64>().is_ok_and(|s| s > 0) {
                    return Some(dev);
                }
            }
        }
    }
    None
}

/// The first `n` bytes of a disk. Until the SCSI layer finishes attaching it, opening the
/// node fails with ENXIO; that is retried for a while.
fn read_head(disk: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut head = vec![0u8; n];
        match std::fs::File::open(disk).and_then(|mut f| f.read_exact(&mut head)) {
            Ok(()) => return head,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("reading {}: {e}", disk.display()),
        }
    }
}

const BACKENDS: &str = "\
version: 1
storageDriverName: ontap-nas
backendName: nas3
managementLIF: 192.0.2.3
dataLIF: 192.0.2.2
nfsMountOptions: nfsvers=3
---
version: 1
storageDriverName: ontap-nas
backendName: nas6
managementLIF: \"[2001:db8::2]\"
dataLIF: \"[2001:db8::2]\"
nfsMountOptions: nfsvers=4.1
---
version: 1
storageDriverName: ontap-san
backendName: san
managementLIF: 192.0.2.3
useCHAP: true
";

#[test]
fn kernel_nfs_mounts_and_iscsi_login_work_through_enforcement() {
    if !in_test_vm("kernel_nfs_mounts_and_iscsi_login_work_through_enforcement") {
        return;
    }
    let lab = start_lab();
    let mut a = agent(&lab, "allowed", BACKENDS);

    let v4 = NfsMount::new(&lab, "192.0.2.2:/export", "vers=4.1").expect("NFSv4.1 mount");
    assert_eq!(
        std::fs::read_to_string(v4.path("hello.txt")).unwrap(),
        "hello from the lab\n"
    );
    std::fs::write(v4.path("v4.txt"), "written over NFSv4.1\n").unwrap();
    drop(v4);
    let v3 = NfsMount::new(&lab, "192.0.2.2:/export", "vers=3,nolock").expect("NFSv3 mount");
    assert_eq!(
        std::fs::read_to_string(v3.path("v4.txt")).unwrap(),
        "written over NFSv4.1\n"
    );
    std::fs::write(v3.path("v3.txt"), "written over NFSv3\n").unwrap();
    drop(v3);
    let v6 = NfsMount::new(&lab, "[2001:db8::2]:/export", "vers=4.1").expect("NFSv4.1 over IPv6");
    assert_eq!(
        std::fs::read_to_string(v6.path("v3.txt")).unwrap(),
        "written over NFSv3\n"
    );
    drop(v6);
    // What the servers wrote is what the clients read: the export is the lab's directory.
    assert!(lab.dir.join("export/v3.txt").exists());

    let _iscsid = Iscsid::start();
    let disk = iscsi_login("192.0.2.2:3260").expect("iSCSI login with CHAP");
    assert_eq!(
        read_head(&disk, LUN_LABEL.len()),
        LUN_LABEL,
        "the first bytes of the lab's LUN"
    );
    iscsiadm(&["-m", "node", "--logoutall=all"]).expect("iSCSI logout");

    assert!(
        a.events.lock().unwrap().is_empty(),
        "nothing the mounts and the login needed was denied: {:?}",
        a.events.lock().unwrap()
    );
    // Enforcement was on all along: iSCSI to the management address has no rule.
    // A dropped SYN leaves the initiator retrying until its login timeout: 5 s is plenty for
    // the event, which comes with the first SYN.
    iscsiadm_within(
        &[
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            "192.0.2.3:3260",
        ],
        Duration::from_secs(5),
    )
    .unwrap_err();
    let events = a.wait_events(1, Duration::from_secs(5));
    assert!(
        events
            .iter()
            .any(|e| e["dst"] == "192.0.2.3:3260" && e["reason"] == "no-rule"),
        "{events:?}"
    );
    a.stop(libc::SIGTERM);
}

#[test]
fn kernel_nfsv3_mount_is_blocked_under_an_nfsv4_only_policy() {
    if !in_test_vm("kernel_nfsv3_mount_is_blocked_under_an_nfsv4_only_policy") {
        return;
    }
    let lab = start_lab();
    let backend = "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-prod\n\
                   managementLIF: 192.0.2.3\ndataLIF: 192.0.2.2\nnfsMountOptions: nfsvers=4.1\n";
    let mut a = agent(&lab, "v4only", backend);
    let v4 = NfsMount::new(&lab, "192.0.2.2:/export", "vers=4.1").expect("NFSv4.1 mount");
    assert!(v4.path("hello.txt").exists());
    drop(v4);

    let started = Instant::now();
    let err = NfsMount::new(&lab, "192.0.2.2:/export", "vers=3,nolock")
        .err()
        .expect("an NFSv3 mount must not succeed under an NFSv4-only policy");
    eprintln!("NFSv3 mount refused after {:.1?}: {err}", started.elapsed());
    // Straight to mountd, as a client that knows the port would: the next NFSv3 port closed.
    // (Over UDP the drop at egress fails each send at once, but mount.nfs retries the call for
    // 17 to 36 s in the guests; over TCP it would retry its SYN for minutes.) An allowed mount
    // takes 130 to 240 ms there, so 5 s tells a refused one from it; the event assertion
    // below says that the refusal was the agent's.
    NfsMount::within(
        &lab,
        "192.0.2.2:/export",
        "vers=3,nolock,proto=tcp,port=2049,mountproto=udp,mountport=635",
        Duration::from_secs(5),
    )
    .err()
    .expect("an NFSv3 mount through mountd's port must not succeed either");

    let events = a.wait_events(2, Duration::from_secs(5));
    assert_nfsv3_block_explained(&events, "nas-prod");
    assert!(
        events
            .iter()
            .all(|e| e["dst"] == "192.0.2.2:111" || e["dst"] == "192.0.2.2:635"),
        "only the NFSv3 ports were denied: {events:?}"
    );
    a.stop(libc::SIGTERM);
}

/// Losing a mount is the worst failure trident-ports can cause. An upgrade whose configuration
/// record changed shape replaces the pinned configuration and, with it, the connection table:
/// a mounted NFS file system must stay usable across it, through the connection it already
/// had, with nothing denied.
#[test]
fn an_nfs_mount_stays_usable_across_an_upgrade_that_replaces_the_connection_table() {
    if !in_test_vm("an_nfs_mount_stays_usable_across_an_upgrade_that_replaces_the_connection_table")
    {
        return;
    }
    let lab = start_lab();
    let fs = BpfFs::mount();
    let pin = fs.0.join("trident-ports");
    let pin_arg = pin.to_str().unwrap().to_string();
    let args = ["--pin-dir", pin_arg.as_str()];
    let a = agent_with(&lab, "upgrade", BACKENDS, &args);
    // Soft, so that a connection the upgrade broke shows as an error, not a hang.
    let mount = NfsMount::new(
        &lab,
        "192.0.2.2:/export",
        "vers=4.1,soft,timeo=30,retrans=2",
    )
    .expect("NFSv4.1 mount");
    std::fs::write(mount.path("before.txt"), "before the upgrade\n").unwrap();
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    drop(a);
    // What an older agent would have pinned: a configuration record of another size.
    let config = pin.join("maps").join(trident_ports_common::maps::CONFIG);
    std::fs::remove_file(&config).unwrap();
    const ARRAY: u32 = 2;
    pin_map(&config, ARRAY, 4, 8, 1);
    let mut b = agent_with(&lab, "upgrade", BACKENDS, &args);
    b.wait_for_log("adopted the pinned attachment", Duration::from_secs(10));
    let log = b.log();
    assert!(
        log.lines().any(|l| l.contains("connection table")),
        "the connection table was replaced with the configuration:\n{log}"
    );
    for line in log.lines().filter(|l| l.contains("attached")) {
        eprintln!("{line}");
    }
    let path = |name: &str| mount.path(name).to_str().unwrap().to_string();
    let read = client(&["cat", &path("before.txt")], Duration::from_secs(30))
        .expect("reading over the mount after the upgrade");
    assert_eq!(read, "before the upgrade\n");
    client(
        &["sh", "-c", &format!("echo after > {}", path("after.txt"))],
        Duration::from_secs(30),
    )
    .expect("writing over the mount after the upgrade");
    assert_eq!(
        std::fs::read_to_string(lab.dir.join("export/after.txt")).unwrap(),
        "after\n",
        "the server has what the node wrote"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        b.events.lock().unwrap().is_empty(),
        "nothing was denied across the upgrade: {:?}",
        b.events.lock().unwrap()
    );
    drop(mount);
    b.stop(libc::SIGTERM);
    // The node is the VM's root namespace: leave no enforcement behind for the next test.
    uninstall(&lab.pair.node, &pin);
}

/// A policy change that would cut a working mount does not (issue: never cut a working mount):
/// an NFSv3 mount made under an NFSv3 backend keeps working when the node's only backend becomes
/// a SAN one on the same address, the log and the event stream name the mount, and once it is
/// unmounted its ports go: a new NFSv3 mount fails.
#[test]
fn a_live_nfsv3_mount_keeps_its_ports_until_it_is_unmounted() {
    if !in_test_vm("a_live_nfsv3_mount_keeps_its_ports_until_it_is_unmounted") {
        return;
    }
    let lab = start_lab();
    let nas3 = "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas3\nmanagementLIF: 192.0.2.3\n\
                dataLIF: 192.0.2.2\nnfsMountOptions: nfsvers=3\n";
    let mut a = agent_with(&lab, "live", nas3, &["--watch-interval", "300ms"]);
    // Soft, so that a cut connection shows as an error, not a hang.
    let mount = NfsMount::new(
        &lab,
        "192.0.2.2:/export",
        "vers=3,nolock,soft,timeo=20,retrans=2",
    )
    .expect("NFSv3 mount");
    let dir = mount
        .path("")
        .to_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    std::fs::write(mount.path("before.txt"), "before\n").unwrap();
    // The node's backends change: 192.0.2.2 now only serves iSCSI.
    std::fs::write(
        lab.dir.join("agent-live/backends/backends.yaml"),
        "version: 1\nstorageDriverName: ontap-san\nbackendName: san\nmanagementLIF: 192.0.2.3\n",
    )
    .unwrap();
    a.wait_for_log("live session NFSv3 mount", Duration::from_secs(10));
    let log = a.log();
    assert!(
        log.lines().any(|l| l.contains("live session NFSv3 mount")
            && l.contains(&dir)
            && l.contains("allowed for as long as it exists")),
        "{log}"
    );
    let path = |name: &str| mount.path(name).to_str().unwrap().to_string();
    assert_eq!(
        client(&["cat", &path("before.txt")], Duration::from_secs(20)).expect("reading"),
        "before\n"
    );
    client(
        &["sh", "-c", &format!("echo after > {}", path("after.txt"))],
        Duration::from_secs(20),
    )
    .expect("writing over the kept mount");
    assert_eq!(
        std::fs::read_to_string(lab.dir.join("export/after.txt")).unwrap(),
        "after\n"
    );
    let notice = a
        .wait_events(1, Duration::from_secs(3))
        .into_iter()
        .find(|e| e["reason"] == "live-session-uncovered");
    assert!(notice.is_some(), "a notice names the mount");
    // Unmounted: the session is forgotten, and its ports with it.
    drop(mount);
    a.wait_for_log("live storage sessions changed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    NfsMount::new(
        &lab,
        "192.0.2.2:/export",
        "vers=3,nolock,soft,timeo=20,retrans=2",
    )
    .map(drop)
    .expect_err("a new NFSv3 mount under the SAN-only policy");
    a.stop(libc::SIGTERM);
}

/// The same for iSCSI: a logged-in session keeps its portal when the node's backends stop
/// naming it, and its allowance goes when it logs out.
#[test]
fn a_live_iscsi_session_keeps_its_portal_until_it_logs_out() {
    if !in_test_vm("a_live_iscsi_session_keeps_its_portal_until_it_logs_out") {
        return;
    }
    let lab = start_lab();
    let san = "version: 1\nstorageDriverName: ontap-san\nbackendName: san\nmanagementLIF: 192.0.2.3\nuseCHAP: true\n";
    let mut a = agent_with(&lab, "live-iscsi", san, &["--watch-interval", "300ms"]);
    let iscsid = Iscsid::start();
    let disk = iscsi_login("192.0.2.2:3260").expect("iSCSI login with CHAP");
    assert_eq!(read_head(&disk, LUN_LABEL.len()), LUN_LABEL);
    // The node's backends change: 192.0.2.2 now only serves NFSv4.1.
    std::fs::write(
        lab.dir.join("agent-live-iscsi/backends/backends.yaml"),
        "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.3\n\
         dataLIF: 192.0.2.2\nnfsMountOptions: nfsvers=4.1\n",
    )
    .unwrap();
    a.wait_for_log("live session iSCSI", Duration::from_secs(10));
    assert!(
        a.log().lines().any(|l| l.contains("live session iSCSI")
            && l.contains("192.0.2.2:3260")
            && l.contains("allowed for as long as it exists")),
        "{}",
        a.log()
    );
    // Reads go to the target again, not the page cache: the session still works.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(read_head(&disk, LUN_LABEL.len()), LUN_LABEL);
    // Logged out: forgotten, and a new discovery on 3260 is denied.
    iscsiadm(&["-m", "node", "--logoutall=all"]).expect("iSCSI logout");
    a.wait_for_log("live storage sessions changed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    // A dropped SYN leaves iscsiadm retrying until its login timeout; the denial event comes
    // with the first SYN (the discovery before took well under a second).
    let before = a.events.lock().unwrap().len();
    iscsiadm_within(
        &[
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            "192.0.2.2:3260",
        ],
        Duration::from_secs(5),
    )
    .expect_err("discovery under the NFS-only policy");
    let events = a.wait_events(before + 1, Duration::from_secs(5));
    assert!(
        events[before..]
            .iter()
            .any(|e| e["dst"] == "192.0.2.2:3260" && e["verdict"] == "denied"),
        "the agent denied the discovery: {events:?}"
    );
    drop(iscsid);
    a.stop(libc::SIGTERM);
}

/// The node's established IPv4 TCP connections (kernel sockets included), read with the parser
/// the agent seeds its connection table with.
fn established() -> Vec<FlowKey> {
    const ESTABLISHED: u8 = 1;
    std::fs::read_to_string("/proc/self/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| connected_socket(l, false, PROTO_TCP))
        .filter_map(|(flow, state)| (state == ESTABLISHED).then_some(flow))
        .collect()
}

/// The local end of the node's established connection to `server`:`port`.
fn connection_to(server: Ipv4Addr, port: u16) -> Option<(Ipv4Addr, u16)> {
    established()
        .into_iter()
        .find(|f| f.remote == v4_mapped(server.octets()) && f.remote_port == port)
        .map(|f| {
            let a = &f.local[12..];
            (Ipv4Addr::new(a[0], a[1], a[2], a[3]), f.local_port)
        })
}

/// The safety net under the connection table (`trident-ports-ebpf/src/sockets.rs`) holds for the
/// clients whose loss is the worst failure: a packet from storage on the kernel NFS client's
/// connection, or on iscsi_tcp's, that the table does not know (evicted by its LRU, or opened
/// before the address was storage) is let in because the node's socket tables have the
/// connection, and the table learns it again. These are kernel sockets, in the TCP tables as a
/// process's are; a port with no connection stays unsolicited. Frames are run through the
/// programs with BPF_PROG_TEST_RUN in the node's (root) namespace, on a datapath that never
/// saw the connections.
#[test]
fn the_kernel_clients_connections_are_found_in_the_nodes_socket_tables() {
    if !in_test_vm("the_kernel_clients_connections_are_found_in_the_nodes_socket_tables") {
        return;
    }
    use trident_ports_agent::policy::{Direction, Mode, Policy, Proto};
    use trident_ports_common::counter;
    use trident_ports_tests::packet::*;

    let lab = start_lab();
    let mount = NfsMount::new(&lab, "192.0.2.2:/export", "vers=4.1").expect("NFSv4.1 mount");
    assert!(mount.path("hello.txt").exists());
    let iscsid = Iscsid::start();
    let disk = iscsi_login("192.0.2.2:3260").expect("iSCSI login with CHAP");
    assert_eq!(read_head(&disk, LUN_LABEL.len()), LUN_LABEL);
    let storage = Ipv4Addr::new(192, 0, 2, 2);
    let (node, nfs) = connection_to(storage, 2049).expect("the NFS client's connection");
    let (node_iscsi, iscsi) = connection_to(storage, 3260).expect("iscsi_tcp's connection");
    assert_eq!(node, node_iscsi);
    eprintln!("kernel connections: NFS from port {nfs}, iSCSI from port {iscsi}");
    let policy = Policy {
        role: "worker".into(),
        mode: Mode::Enforce,
        entries: vec![
            entry(Direction::Egress, "192.0.2.2/32", 2049, 2049, Proto::Tcp),
            entry(Direction::Egress, "192.0.2.2/32", 3260, 3260, Proto::Tcp),
        ],
        ..Policy::default()
    };
    let node = node.to_string();
    let from_storage =
        |sport: u16, dport: u16| v4(ipv4("192.0.2.2", &node, TCP, 0, &tcp(sport, dport, ACK)));
    // A local port no connection uses.
    let flows = established();
    let unused = (40_000..u16::MAX)
        .find(|p| flows.iter().all(|f| f.local_port != *p))
        .unwrap();
    for (prog, drop, pass) in ingress_programs() {
        let mut p = Programs::load(&policy);
        // The recent-flow cache would answer the repeats: the table's answer is wanted.
        p.dp.set_recent_flows(false).unwrap();
        for (what, frame) in [
            ("the NFS client's connection", from_storage(2049, nfs)),
            ("iscsi_tcp's connection", from_storage(3260, iscsi)),
        ] {
            p.check(
                &format!("{prog}: {what}"),
                prog,
                &frame,
                pass,
                counter::NODE_SOCKET,
            );
            let again = format!("{prog}: {what}, then in the table");
            p.check(&again, prog, &frame, pass, counter::CONNTRACK_HIT);
        }
        let stray = from_storage(2049, unused);
        p.check(
            &format!("{prog}: port {unused}"),
            prog,
            &stray,
            drop,
            counter::DENIED,
        );
    }
    // The connections were real and stay usable: the test only ran frames past the programs.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(read_head(&disk, LUN_LABEL.len()), LUN_LABEL);
    assert!(mount.path("hello.txt").exists());
    iscsiadm(&["-m", "node", "--logoutall=all"]).expect("iSCSI logout");
    drop((iscsid, mount));
}
