//! Where the agent's inputs come from: today the node configuration and backend files (the
//! cluster comes next). A source produces a [`Snapshot`]; compiling one is `reconcile`'s job.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use ipnet::IpNet;

use super::cluster::{Cluster, ClusterView};
use crate::{
    backends::{self, Backend, Doc, Inventory, Reads},
    config::{NodeConfig, Role},
    error::Result,
    policy::{Policy, compile::compile, live},
    sessions::{self, Sessions},
};

/// Everything one compilation reads.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: NodeConfig,
    pub inventory: Inventory,
    /// The node's own addresses, found by `run` in its network namespace (none for `plan`).
    pub local_addresses: Vec<IpNet>,
    /// The node's live sessions, when read (`run`, `plan --live`).
    pub sessions: Option<Sessions>,
}

impl Snapshot {
    pub fn compile(&self) -> Policy {
        let mut p = compile(&self.config, &self.inventory, &self.local_addresses);
        if let Some(s) = &self.sessions {
            p.warnings.extend(s.notes.iter().cloned());
            live::apply(
                &mut p,
                &self.config,
                &s.sessions,
                self.config.protect_live_sessions,
            );
        }
        p
    }

    /// Reads what `run` adds to the files: the node's own addresses and its live sessions.
    #[must_use]
    pub fn with_node_state(mut self) -> Self {
        self.local_addresses = local_addresses();
        self.sessions = Some(self.read_sessions());
        self
    }

    pub fn read_sessions(&self) -> Sessions {
        sessions::read(&self.session_roots())
    }

    /// Where this node's live sessions are read.
    pub fn session_roots(&self) -> sessions::Roots {
        sessions::Roots {
            proc: self.config.node.host_proc.clone(),
            sys: self.config.node.host_sys.clone(),
        }
    }

    /// A definition that was good in `previous` and is skipped now (a bad edit, a host name
    /// that no longer resolves) keeps its previous form: a bad reload never weakens the running
    /// policy. A definition removed from the sources goes.
    pub fn keep_last_good(&mut self, previous: &[Backend]) {
        let inv = &mut self.inventory;
        let mut kept: Vec<Backend> = Vec::new();
        for s in &inv.skipped {
            let before = previous.iter().find(|b| {
                s.name
                    .as_ref()
                    .map_or(b.origin == s.origin, |n| &b.name == n)
            });
            if let Some(b) = before {
                let present = |list: &[Backend]| list.iter().any(|x| x.name == b.name);
                if !present(&inv.backends) && !present(&kept) {
                    kept.push(b.clone());
                }
            }
        }
        for b in kept {
            inv.warnings.push(format!(
                "backend {}: its definition cannot be planned now; keeping its last good form",
                b.name
            ));
            inv.backends.push(b);
        }
    }
}

/// The addresses of this network namespace's interfaces, loopback aside: where the node's
/// host-network pods (Trident's node plugin among them) listen.
pub fn local_addresses() -> Vec<IpNet> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list this function frees below; each entry and its
    // address are valid until then, and the address is read as the family it says it is.
    unsafe {
        if libc::getifaddrs(&raw mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                let ip: Option<std::net::IpAddr> = match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let a = addr.cast::<libc::sockaddr_in>().read_unaligned();
                        Some(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into())
                    }
                    libc::AF_INET6 => {
                        let a = addr.cast::<libc::sockaddr_in6>().read_unaligned();
                        Some(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into())
                    }
                    _ => None,
                };
                if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                    out.push(IpNet::from(ip));
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

/// Where snapshots come from: the files, and the cluster when it is a source.
#[derive(Clone)]
pub struct Sources {
    pub files: FileSources,
    pub cluster: Option<Arc<Cluster>>,
}

impl Sources {
    pub fn snapshot(&self) -> Result<Snapshot> {
        let view = self.cluster.as_ref().map(|c| c.view());
        self.files.snapshot_with(view.as_ref())
    }
}

/// The configuration file (or the built-in defaults), the backend sources it names and those
/// given on the command line, and a role that overrides the configuration's.
#[derive(Clone, Debug, Default)]
pub struct FileSources {
    pub config: Option<PathBuf>,
    pub extra_backends: Vec<PathBuf>,
    pub role: Option<Role>,
    /// The backend sources the configuration named when it had this path, size and time:
    /// `fingerprint` runs every few seconds and need not parse an unchanged configuration
    /// (a large allow list made that a whole YAML parse each time).
    named: Arc<Mutex<Option<NamedSources>>>,
    /// What each cluster object read as, while its text stays the same.
    reads: Arc<Mutex<Reads>>,
}

/// The configuration file's stamp, and the backend sources it named.
type NamedSources = (FileStamp, Vec<PathBuf>);

/// Resolved path, size and modification time of one input file.
type FileStamp = (PathBuf, u64, SystemTime);

/// Resolved path, size and modification time of every input file.
pub type Fingerprint = Vec<FileStamp>;

impl FileSources {
    pub fn new(config: Option<&Path>, extra_backends: &[PathBuf], role: Option<Role>) -> Self {
        FileSources {
            config: config.map(Path::to_path_buf),
            extra_backends: extra_backends.to_vec(),
            role,
            named: Arc::default(),
            reads: Arc::default(),
        }
    }

    /// Copies what the memo of cluster objects kept from the last snapshot onto this thread
    /// (see `run::apart`): the reading thread's heap can then be given back whole.
    pub fn settle(&self) {
        self.reads.lock().unwrap().settle();
    }

    /// Reads the configuration and every backend source.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.snapshot_with(None)
    }

    /// The same, with what the cluster says: its objects are one more backend source, and
    /// this node's facts fill in what the configuration leaves open (labels), or add to it
    /// (addresses; the controller pod's, which also makes this a controller node unless the
    /// command line names the role).
    pub fn snapshot_with(&self, cluster: Option<&ClusterView>) -> Result<Snapshot> {
        let Some(view) = cluster else {
            return self.read(&[]);
        };
        let mut s = self.read(&view.docs)?;
        let (config, f) = (&mut s.config, &view.facts);
        if config.node.labels.is_none() {
            config.node.labels.clone_from(&f.labels);
        }
        config.node.addresses.extend(f.addresses.iter().copied());
        config
            .trident
            .controller_addresses
            .extend(f.controller.iter().copied());
        if !f.controller.is_empty() && self.role.is_none() {
            config.role = Role::Controller;
        }
        let warnings = &mut s.inventory.warnings;
        if view.from_disk {
            warnings.push(
                "kubernetes: the API server has not answered since start-up: planning from the \
                 cluster state saved with the last applied policy"
                    .into(),
            );
        } else if !view.complete {
            warnings.push(
                "kubernetes: some kinds are not listed yet: planning from what is known".into(),
            );
        }
        Ok(s)
    }

    fn read(&self, cluster_docs: &[Doc]) -> Result<Snapshot> {
        let mut config = match &self.config {
            Some(p) => {
                // Stamped before the read, so that a change during it shows as a new stamp.
                let stamp = stamp(p);
                let config = NodeConfig::load(p)?;
                // `fingerprint` learns the sources from this read instead of parsing the file
                // again (at start, a second parse of a 100,000-entry allow list: 130 MB).
                *self.named.lock().unwrap() = stamp.map(|s| (s, self.backend_paths(&config)));
                config
            }
            None => NodeConfig::default(),
        };
        if let Some(r) = self.role {
            config.role = r;
        }
        let base = self.base();
        for p in [&mut config.node.host_proc, &mut config.node.host_sys] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let inventory = backends::load_with(
            &self.backend_paths(&config),
            Some((Path::new("kubernetes"), cluster_docs)),
            &mut self.reads.lock().unwrap(),
        )?;
        Ok(Snapshot {
            config,
            inventory,
            local_addresses: Vec::new(),
            sessions: None,
        })
    }

    /// Reads and compiles: what `plan` prints.
    pub fn plan(&self) -> Result<(NodeConfig, Policy)> {
        let s = self.snapshot()?;
        let policy = s.compile();
        Ok((s.config, policy))
    }

    /// `plan --live`: the same, with this machine's live sessions against it.
    pub fn plan_live(&self) -> Result<(NodeConfig, Policy)> {
        let mut s = self.snapshot()?;
        s.sessions = Some(s.read_sessions());
        let policy = s.compile();
        Ok((s.config, policy))
    }

    /// The configuration file's directory, which relative paths in it are relative to.
    fn base(&self) -> PathBuf {
        self.config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The configuration's backend sources (relative to the configuration file's directory),
    /// then the command line's.
    fn backend_paths(&self, config: &NodeConfig) -> Vec<PathBuf> {
        let base = self.base();
        config
            .backends
            .sources
            .iter()
            .map(|s| {
                if s.is_absolute() {
                    s.clone()
                } else {
                    base.join(s)
                }
            })
            .chain(self.extra_backends.iter().cloned())
            .collect()
    }

    /// A Kubernetes ConfigMap update swaps the `..data` symlink, which changes the resolved
    /// paths: that counts as a change as much as a new size or time does.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut paths: Vec<PathBuf> = self.config.iter().cloned().collect();
        for s in self.named_sources() {
            match std::fs::read_dir(&s) {
                Ok(rd) => paths.extend(rd.filter_map(|e| e.ok().map(|e| e.path()))),
                Err(_) => paths.push(s),
            }
        }
        let mut out: Fingerprint = paths.iter().filter_map(|p| stamp(p)).collect();
        out.sort();
        out
    }

    /// The backend sources to watch: those the configuration names (parsed again only when the
    /// file changed) and those from the command line.
    fn named_sources(&self) -> Vec<PathBuf> {
        let Some(path) = self.config.as_deref() else {
            return self.extra_backends.clone();
        };
        let now = stamp(path);
        let mut named = self.named.lock().unwrap();
        if let (Some(now), Some((then, sources))) = (&now, named.as_ref())
            && now == then
        {
            return sources.clone();
        }
        let sources = match NodeConfig::load(path) {
            Ok(c) => self.backend_paths(&c),
            Err(_) => self.extra_backends.clone(),
        };
        *named = now.map(|n| (n, sources.clone()));
        sources
    }
}

fn stamp(p: &Path) -> Option<FileStamp> {
    let real = std::fs::canonicalize(p).ok()?;
    let m = std::fs::metadata(&real).ok()?;
    Some((real, m.len(), m.modified().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sources_are_relative_to_the_configuration() {
        let dir = std::env::temp_dir().join(format!("tp-sources-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("node.yaml"), "backends:\n  sources: [b]\n").unwrap();
        std::fs::write(
            dir.join("b/nas.yaml"),
            "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.5\n",
        )
        .unwrap();
        let s = FileSources::new(Some(&dir.join("node.yaml")), &[], Some(Role::Controller));
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.config.role, Role::Controller, "the override wins");
        assert_eq!(snap.inventory.backends.len(), 1);
        assert_eq!(snap.inventory.backends[0].name, "nas");
        assert!(
            s.named.lock().unwrap().is_some(),
            "the read told fingerprint the configuration's sources"
        );
        let before = s.fingerprint();
        assert_eq!(before.len(), 2, "{before:?}");
        std::fs::write(dir.join("b/nas.yaml"), "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.60\n").unwrap();
        assert_ne!(
            s.fingerprint(),
            before,
            "a rewritten backend file is a change"
        );
        // The configuration names another directory: its files are watched from then on (the
        // sources it names are cached only while the configuration file stays the same).
        std::fs::create_dir_all(dir.join("c")).unwrap();
        std::fs::write(dir.join("c/san.yaml"), "version: 1\n").unwrap();
        std::fs::write(
            dir.join("node.yaml"),
            "backends:\n  sources: [b, c]\n  # a longer file\n",
        )
        .unwrap();
        let now = s.fingerprint();
        assert_eq!(now.len(), 3, "{now:?}");
        assert!(
            now.iter().any(|(p, ..)| p.ends_with("c/san.yaml")),
            "{now:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_definition_that_turns_bad_keeps_its_last_good_form() {
        let dir = std::env::temp_dir().join(format!("tp-lastgood-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = |name: &str| {
            format!(
                "version: 1\nstorageDriverName: ontap-nas\nbackendName: {name}\nmanagementLIF: 192.0.2.5\n"
            )
        };
        std::fs::write(dir.join("nas.yaml"), good("nas")).unwrap();
        std::fs::write(dir.join("gone.yaml"), good("gone")).unwrap();
        let s = FileSources::new(None, std::slice::from_ref(&dir), None);
        let first = s.snapshot().unwrap();
        assert_eq!(first.inventory.backends.len(), 2);
        // An edit that breaks the definition (and drops its name), and a file removed.
        std::fs::write(
            dir.join("nas.yaml"),
            "version: 1\nstorageDriverName: ontap-nass\n",
        )
        .unwrap();
        std::fs::remove_file(dir.join("gone.yaml")).unwrap();
        let mut next = s.snapshot().unwrap();
        assert!(next.inventory.backends.is_empty());
        next.keep_last_good(&first.inventory.backends);
        let names: Vec<&str> = next
            .inventory
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["nas"], "the broken one stays, the removed one goes");
        assert!(next.inventory.warnings[0].contains("keeping its last good form"));
        assert_eq!(next.compile().skipped.len(), 1, "and it is still reported");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn local_addresses_leave_out_loopback() {
        assert!(local_addresses().iter().all(|a| !a.addr().is_loopback()));
    }
}
