//! The storage lab: a "storage" namespace running real servers on ONTAP's ports, and a "node"
//! namespace with real clients. NFSv3 and NFSv4 (nfs-ganesha with the VFS backend, rpcbind,
//! rpc.statd; mountd 635, NLM 4045, NSM 4046, rquotad 4049), iSCSI with CHAP (tgt, a
//! file-backed LUN), SMB (samba on 445), HTTPS management on 443 and an E-Series-style proxy on
//! 8443 (openssl s_server). Everything it starts is stopped, and everything it wrote removed,
//! when the lab drops, also when a test fails.
use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::netns::{Addrs, NetNs, Pair, unique};

pub const TARGET: &str = "iqn.2026-11.test.lab:storage";
pub const CHAP_USER: &str = "labuser";
pub const CHAP_SECRET: &str = "labsecret123";

/// One lab at a time: the servers are heavy, and samba's account is shared.
static LAB: Mutex<()> = Mutex::new(());

/// One lab at a time across processes too: `cargo xtask test` runs the test binaries side by
/// side, and two labs would share samba's account and their daemons' files outside any
/// namespace (rpcbind's socket, rpc.statd's pid file). The lock is the file's, held until the
/// lab drops (closing the file releases it, also when the process dies).
struct AcrossProcesses {
    _file: std::fs::File,
}

impl AcrossProcesses {
    fn lock() -> Self {
        let path = std::env::temp_dir().join("trident-ports-lab.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: flock on a descriptor `f` owns and keeps open for the call; it blocks until no
        // other open file holds the lock.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        assert_eq!(
            r,
            0,
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self { _file: f }
    }
}

pub struct Lab {
    pub pair: Pair,
    pub dir: PathBuf,
    children: Vec<Child>,
    _serial: MutexGuard<'static, ()>,
    _across: AcrossProcesses,
}

fn write(path: &PathBuf, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Which of the lab's servers to run.
#[derive(Clone, Copy, PartialEq)]
pub enum Service {
    Nfs,
    Iscsi,
    Smb,
    Https,
}

impl Service {
    /// The server and the client its readiness check uses.
    fn tools(self) -> &'static [&'static str] {
        match self {
            Service::Nfs => &["ganesha.nfsd", "rpcbind", "rpc.statd", "nfs-ls"],
            Service::Iscsi => &["tgtd", "tgtadm", "iscsi-inq"],
            Service::Smb => &["smbd", "smbpasswd", "smbclient"],
            Service::Https => &["openssl", "curl"],
        }
    }
}

/// The first bytes of the iSCSI LUN, so that a client can tell it read the lab's disk.
pub const LUN_LABEL: &[u8] = b"trident-ports storage lab LUN\n";

impl Lab {
    /// Storage answers on 192.0.2.2, 192.0.2.3 and 2001:db8::2; the node is 192.0.2.1 and
    /// 2001:db8::1.
    pub fn start() -> Self {
        Self::start_with(
            NetNs::new("tpn"),
            &[Service::Nfs, Service::Iscsi, Service::Smb, Service::Https],
        )
    }

    /// The lab with `node` as the node end (a fresh namespace or `NetNs::root()`) and only
    /// `services` running.
    pub fn start_with(node: NetNs, services: &[Service]) -> Self {
        let serial = LAB
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let across = AcrossProcesses::lock();
        for tool in services.iter().flat_map(|s| s.tools()) {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: .ci/run installs the lab's Debian packages"
            );
        }
        let pair = Pair::with_node(
            node,
            Addrs {
                node: &["192.0.2.1/24", "2001:db8::1/64"],
                storage: &["192.0.2.2/24", "192.0.2.3/24", "2001:db8::2/64"],
            },
        );
        let dir = std::env::temp_dir().join(unique("tp-lab-"));
        std::fs::create_dir_all(dir.join("export")).unwrap();
        let mut lab = Lab {
            pair,
            dir,
            children: Vec::new(),
            _serial: serial,
            _across: across,
        };
        for s in services {
            match s {
                Service::Nfs => lab.start_nfs(),
                Service::Iscsi => lab.start_iscsi(),
                Service::Smb => lab.start_smb(),
                Service::Https => lab.start_https(),
            }
        }
        lab.wait_ready(services);
        lab
    }

    pub fn node(&self) -> &NetNs {
        &self.pair.node
    }

    fn spawn_in_storage(&mut self, script: &str, log: &str) {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.pair.storage.name, "sh", "-c", script])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting a lab server");
        self.children.push(child);
    }

    fn start_nfs(&mut self) {
        let d = self.dir.display().to_string();
        write(&self.dir.join("export/hello.txt"), "hello from the lab\n");
        write(
            &self.dir.join("ganesha.conf"),
            &format!(
                "NFS_CORE_PARAM {{ NFS_Port = 2049; MNT_Port = 635; NLM_Port = 4045; Rquota_Port = 4049; \
                 Protocols = 3, 4; Mount_Path_Pseudo = true; Enable_RQUOTA = true; }}\n\
                 NFSV4 {{ Graceless = true; RecoveryRoot = {d}/recovery; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {d}/export; Pseudo = /export; Access_Type = RW; \
                 Squash = No_Root_Squash; Protocols = 3, 4; Transports = TCP, UDP; SecType = sys; FSAL {{ Name = VFS; }} }}\n"
            ),
        );
        // A private /run: rpcbind's socket lives there, and only one rpcbind may own it.
        // statd keeps its state in the lab too (it logs only to syslog, so a missing state
        // directory would fail silently). mountd's port (635) lies in the range libtirpc's
        // bindresvport hands out (600-1023), and it picks `600 + pid % 424`: statd's loopback
        // socket (127.0.0.1) holds such a port for its whole life, so a statd whose pid is 35
        // mod 424 keeps ganesha's dual-stack MNT socket from binding on every try (a 5.10
        // guest, where pids repeat from boot to boot, did so five times in a row). On that
        // error statd is started again, with a new pid and so another port.
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p {d}/recovery {d}/statd/sm {d}/statd/sm.bak; \
             statd() {{ rpc.statd -p 4046 -o 4047 --no-notify -P {d}/statd; }}; \
             rpcbind -w; statd; set +e; \
             for try in 1 2 3 4 5; do \
               ganesha.nfsd -F -L {d}/ganesha.log -f {d}/ganesha.conf -p {d}/ganesha.pid; \
               grep -q 'error 98' {d}/ganesha.log || exit 1; \
               echo \"ganesha: a port was taken (try $try)\"; (ss -anp || netstat -anp) 2>&1 | grep -E ':(635|2049|4045|4049) '; \
               mv {d}/ganesha.log {d}/ganesha-try$try.log; \
               kill $(cat /run/rpc.statd.pid); sleep 0.5; statd; \
             done; exit 1"
        );
        self.spawn_in_storage(&script, "nfs.out");
    }

    fn start_iscsi(&mut self) {
        let d = self.dir.display().to_string();
        let mut f = std::fs::File::create(self.dir.join("lun.img")).unwrap();
        std::io::Write::write_all(&mut f, LUN_LABEL).unwrap();
        f.set_len(16 << 20).unwrap();
        // tgtd takes a while to open its control socket under an emulated guest: a fixed half
        // second was once too short there ("failed to send request hdr to tgt daemon").
        let script = format!(
            "tgtd -f & \
             for i in $(seq 100); do tgtadm --lld iscsi --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done; \
             tgtadm --lld iscsi --op new --mode target --tid 1 -T {TARGET} && \
             tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b {d}/lun.img && \
             tgtadm --lld iscsi --op new --mode account --user {CHAP_USER} --password {CHAP_SECRET} && \
             tgtadm --lld iscsi --op bind --mode account --tid 1 --user {CHAP_USER} && \
             tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL && echo iscsi-ready; wait"
        );
        self.spawn_in_storage(&script, "iscsi.out");
    }

    fn start_smb(&mut self) {
        let d = self.dir.display().to_string();
        for sub in ["share", "lock", "state", "cache", "pid", "private"] {
            std::fs::create_dir_all(self.dir.join("smb").join(sub)).unwrap();
        }
        write(&self.dir.join("smb/share/smb.txt"), "smb\n");
        let _ = Command::new("chmod")
            .args(["777", &format!("{d}/smb/share")])
            .status();
        // samba needs a real unix account behind its user.
        if !Command::new("id")
            .arg(CHAP_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            let _ = Command::new("useradd")
                .args(["-M", "-s", "/usr/sbin/nologin", CHAP_USER])
                .status();
        }
        let conf = self.dir.join("smb.conf");
        write(
            &conf,
            &format!(
                "[global]\n smb ports = 445\n workgroup = LAB\n server role = standalone server\n disable netbios = yes\n\
                 load printers = no\n printing = bsd\n printcap name = /dev/null\n\
                 lock directory = {d}/smb/lock\n state directory = {d}/smb/state\n cache directory = {d}/smb/cache\n\
                 pid directory = {d}/smb/pid\n private dir = {d}/smb/private\n ncalrpc dir = {d}/smb/lock/ncalrpc\n\
                 log file = {d}/smb/log\n passdb backend = tdbsam:{d}/smb/private/passdb.tdb\n\
                 [share]\n path = {d}/smb/share\n read only = no\n valid users = {CHAP_USER}\n"
            ),
        );
        let mut add = Command::new("smbpasswd")
            .args(["-c", conf.to_str().unwrap(), "-s", "-a", CHAP_USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        add.stdin
            .take()
            .unwrap()
            .write_all(format!("{CHAP_SECRET}\n{CHAP_SECRET}\n").as_bytes())
            .unwrap();
        assert!(add.wait().unwrap().success(), "smbpasswd");
        self.spawn_in_storage(
            &format!("exec smbd -F --no-process-group -s {d}/smb.conf"),
            "smbd.out",
        );
    }

    fn start_https(&mut self) {
        let d = self.dir.display().to_string();
        let ok = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lab",
            ])
            .args([
                "-keyout",
                &format!("{d}/key.pem"),
                "-out",
                &format!("{d}/cert.pem"),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl req");
        for port in [443, 8443] {
            // `-accept PORT` listens on both families.
            self.spawn_in_storage(
                &format!("exec openssl s_server -accept {port} -cert {d}/cert.pem -key {d}/key.pem -www -quiet"),
                &format!("https-{port}.out"),
            );
        }
    }

    fn wait_ready(&self, services: &[Service]) {
        // Emulated guests start the servers several times slower.
        let deadline = Instant::now() + Duration::from_secs(60);
        let iscsi = self.iscsi_url("192.0.2.2");
        let checks: [(Service, &str, &[&str]); 4] = [
            (
                Service::Nfs,
                "nfs",
                &["nfs-ls", "nfs://192.0.2.2/export?version=4"],
            ),
            (Service::Iscsi, "iscsi", &["iscsi-inq", &iscsi]),
            (
                Service::Smb,
                "smb",
                &[
                    "smbclient",
                    "//192.0.2.2/share",
                    "-U",
                    "labuser%labsecret123",
                    "-c",
                    "ls",
                ],
            ),
            (
                Service::Https,
                "https",
                &["curl", "-skf", "-o", "/dev/null", "https://192.0.2.2:8443/"],
            ),
        ];
        for (_, what, cmd) in checks.iter().filter(|c| services.contains(&c.0)) {
            loop {
                if self.pair.node.try_exec(cmd).status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    let logs: String = std::fs::read_dir(&self.dir)
                        .unwrap()
                        .flatten()
                        .filter(|e| {
                            e.path()
                                .extension()
                                .is_some_and(|x| x == "out" || x == "log")
                        })
                        .fold(String::new(), |mut all, e| {
                            use std::fmt::Write as _;
                            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                            let _ = write!(all, "--- {}\n{text}", e.path().display());
                            all
                        });
                    panic!("the lab's {what} server did not come up:\n{logs}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn iscsi_url(&self, host: &str) -> String {
        format!("iscsi://{CHAP_USER}%{CHAP_SECRET}@{host}/{TARGET}/1")
    }

    /// Runs a client in the node namespace; Ok(stdout) or Err(stderr and stdout).
    pub fn client(&self, cmd: &[&str]) -> Result<String, String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.pair.node.name, "timeout", "10"])
            .args(cmd);
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stderr), text))
        }
    }

    /// `nfs-ls` of the export with NFS `version` (3 or 4) on `host` (IPv6 without brackets).
    pub fn nfs_ls(&self, host: &str, version: u8) -> Result<String, String> {
        self.client(&["nfs-ls", &format!("nfs://{host}/export?version={version}")])
    }

    pub fn iscsi_inq(&self, host: &str) -> Result<String, String> {
        self.client(&["iscsi-inq", &self.iscsi_url(host)])
    }

    pub fn smb_ls(&self, host: &str) -> Result<String, String> {
        self.client(&[
            "smbclient",
            &format!("//{host}/share"),
            "-U",
            &format!("{CHAP_USER}%{CHAP_SECRET}"),
            "-c",
            "ls",
        ])
    }

    pub fn https(&self, url: &str) -> Result<String, String> {
        self.client(&[
            "curl",
            "-skf",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
    }
}

/// Asserts that `events` explain an NFSv3 mount blocked under an NFSv4-only `backend`
/// (`nfsMountOptions: nfsvers=4.1`, data LIF 192.0.2.2): the portmapper and mountd were denied,
/// each event saying what the port is for, and the hint naming the backend's NFS version.
pub fn assert_nfsv3_block_explained(events: &[serde_json::Value], backend: &str) {
    let find = |dst: &str| {
        events
            .iter()
            .find(|e| e["dst"] == dst)
            .unwrap_or_else(|| panic!("no event for {dst}: {events:?}"))
    };
    let rpcbind = find("192.0.2.2:111");
    assert_eq!(
        rpcbind["purpose"],
        "RPCBIND/portmapper, needed only for NFSv3"
    );
    assert_eq!(rpcbind["backend"], backend);
    assert!(
        rpcbind["hint"]
            .as_str()
            .unwrap()
            .contains("mounts NFSv4 (nfsvers=4.1)"),
        "{rpcbind}"
    );
    let mountd = find("192.0.2.2:635");
    assert_eq!(mountd["purpose"], "Mount daemon, needed only for NFSv3");
}

impl Drop for Lab {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while a target exists: remove it first, then stop everything.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pair.storage.name,
                "tgtadm",
                "--lld",
                "iscsi",
                "--op",
                "delete",
                "--mode",
                "target",
                "--tid",
                "1",
                "--force",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for c in &mut self.children {
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        // Anything else left in the namespace (forked daemons).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.pair.storage.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process in the lab's namespace; no memory is involved.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
