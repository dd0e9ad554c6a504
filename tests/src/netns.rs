//! `NetNs`: a network namespace that lives as long as its guard, and `Veth` pairs between them.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A short unique name (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

pub struct NetNs {
    pub name: String,
    /// False for a borrowed handle, which never deletes the namespace.
    owned: bool,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = NetNs { name, owned: true };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // Without this, IPv6 stays unusable for a second or two after link-up (link-local DAD).
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        ns
    }

    /// A name for the root namespace itself (`ip netns attach`), so that the helpers that take
    /// a namespace work on the machine's own network stack. Dropping it removes only the name.
    /// Used where the kernel offers a client only in the root namespace (iSCSI's netlink).
    pub fn root() -> Self {
        let name = unique("tpr");
        ip(&["netns", "attach", &name, "1"]);
        NetNs { name, owned: true }
    }

    /// A handle to the same namespace for another thread; dropping it deletes nothing.
    #[must_use]
    pub fn borrow(&self) -> NetNs {
        NetNs {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// Runs a command inside the namespace and asserts it succeeded; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.try_exec(args);
        assert!(
            out.status.success(),
            "in {}: {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("running ip netns exec")
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.name)).expect("opening the namespace")
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = self.file();
        std::thread::spawn(move || {
            enter(&file);
            f()
        })
    }

    /// Runs `f` in this namespace on a scoped thread and waits for its result: `f` may borrow
    /// from the caller.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = self.file();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&file);
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}

/// Moves the calling thread into the namespace behind `file`.
pub fn enter(file: &File) {
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A "node" and a "storage" namespace joined by a veth pair, with addresses on both ends.
pub struct Pair {
    pub node: NetNs,
    pub storage: NetNs,
    pub node_if: String,
    pub storage_if: String,
}

pub struct Addrs<'a> {
    pub node: &'a [&'a str],
    pub storage: &'a [&'a str],
}

impl Pair {
    /// `addrs` are CIDR strings assigned to the node and storage ends.
    pub fn new(addrs: Addrs) -> Self {
        Self::with_node(NetNs::new("tpn"), addrs)
    }

    /// Like `new`, with `node` (a fresh namespace, or `NetNs::root()`) as the node end.
    pub fn with_node(node: NetNs, addrs: Addrs) -> Self {
        let storage = NetNs::new("tps");
        let node_if = unique("vn");
        let storage_if = unique("vs");
        ip(&[
            "link",
            "add",
            &node_if,
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            &storage_if,
            "netns",
            &storage.name,
        ]);
        for a in addrs.node {
            let flags: &[&str] = if a.contains(':') { &["nodad"] } else { &[] };
            let mut args = vec!["ip", "addr", "add", a, "dev", &node_if];
            args.extend_from_slice(flags);
            node.exec(&args);
        }
        for a in addrs.storage {
            let flags: &[&str] = if a.contains(':') { &["nodad"] } else { &[] };
            let mut args = vec!["ip", "addr", "add", a, "dev", &storage_if];
            args.extend_from_slice(flags);
            storage.exec(&args);
        }
        node.exec(&["ip", "link", "set", &node_if, "up"]);
        storage.exec(&["ip", "link", "set", &storage_if, "up"]);
        let pair = Pair {
            node,
            storage,
            node_if,
            storage_if,
        };
        for a in addrs.storage.iter().filter(|a| a.contains(':')) {
            pair.prime_neighbour(a.split('/').next().unwrap());
        }
        pair
    }

    /// Right after link-up the first IPv6 neighbour solicitation goes unanswered (the peer has
    /// not joined its solicited-node group yet) and the next one comes a second later: resolve
    /// the neighbour now, with real neighbour discovery, so that tests do not time out on it.
    fn prime_neighbour(&self, addr: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let target: std::net::SocketAddr = format!("[{addr}]:9").parse().unwrap();
        while std::time::Instant::now() < deadline {
            self.node.within(move || {
                let u = std::net::UdpSocket::bind("[::]:0").unwrap();
                let _ = u.send_to(b"", target);
            });
            let neigh = self.node.exec(&["ip", "-6", "neigh", "show", addr]);
            if ["REACHABLE", "STALE", "DELAY"]
                .iter()
                .any(|s| neigh.contains(s))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("IPv6 neighbour {addr} did not resolve");
    }

    /// A pod namespace routed through the node, as a CNI without overlay makes it: a veth from
    /// the node (`gateway`, e.g. `198.51.100.1/24`) to the pod (`pod`, e.g. `198.51.100.10/24`),
    /// forwarding on in the node, and the storage side routing `subnet` via `node_ip`.
    pub fn routed_pod(&self, gateway: &str, pod: &str, subnet: &str, node_ip: &str) -> NetNs {
        let ns = NetNs::new("tpp");
        let (host_if, pod_if) = (unique("vh"), unique("vp"));
        ip(&[
            "link",
            "add",
            &host_if,
            "netns",
            &self.node.name,
            "type",
            "veth",
            "peer",
            "name",
            &pod_if,
            "netns",
            &ns.name,
        ]);
        self.node
            .exec(&["ip", "addr", "add", gateway, "dev", &host_if]);
        self.node.exec(&["ip", "link", "set", &host_if, "up"]);
        self.node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.exec(&["ip", "addr", "add", pod, "dev", &pod_if]);
        ns.exec(&["ip", "link", "set", &pod_if, "up"]);
        let gw = gateway.split('/').next().unwrap();
        ns.exec(&["ip", "route", "add", "default", "via", gw]);
        self.storage
            .exec(&["ip", "route", "add", subnet, "via", node_ip]);
        ns
    }

    /// The usual test topology: node 192.0.2.1 and 2001:db8::1, storage 192.0.2.2..4 and
    /// 2001:db8::2..3.
    pub fn standard() -> Self {
        Self::new(Addrs {
            node: &["192.0.2.1/24", "2001:db8::1/64"],
            storage: &[
                "192.0.2.2/24",
                "192.0.2.3/24",
                "192.0.2.4/24",
                "2001:db8::2/64",
                "2001:db8::3/64",
            ],
        })
    }
}
