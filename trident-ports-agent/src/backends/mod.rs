//! Reading what Trident knows about storage, the way Trident accepts it: backend definitions
//! (tridentctl JSON or YAML, TridentBackendConfig custom resources with fields under `spec`),
//! Trident's resolved backends (TridentBackend objects, `tridentctl get backend -o json|yaml`),
//! StorageClasses and PersistentVolumes (see `kube`), Secrets, `kind: List` documents,
//! multi-document YAML and directories of such files. Keys match case-insensitively, as Trident's
//! JSON decoding does.
//!
//! A file that cannot be read or parsed is an error naming the file and line. Anything wrong
//! inside one definition (an unknown driver, a field that does not parse, a host name that does
//! not resolve) skips that definition with the reason: everything else is still planned.
//!
//! Credentials are never kept, logged or printed: from a SolidFire `Endpoint` only the host and
//! port survive, and error messages name fields, not their values.
mod drivers;
mod endpoint;
mod files;
pub mod kube;
pub mod nfs;
pub mod published;
mod reads;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub use drivers::{DRIVERS, Driver};
pub use endpoint::{RESOLVE, endpoint};
use files::{Obj, collect_secret, kind};
pub use files::{discover, documents};
use ipnet::IpNet;
pub use kube::{StorageClass, Volume};
pub use nfs::{Mount, nfs_version};
pub use published::{Access, Published};
pub use reads::{Doc, Reads};
use serde_yaml::Value;

use crate::error::{Error, Result};

/// The storage protocols a backend's volumes are used with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    /// NFS; the versions come from the mount options (the backend's, a class's, a volume's).
    pub nfs: bool,
    pub smb: bool,
    pub iscsi: bool,
    pub nvme: bool,
    pub fcp: bool,
}

/// What a management endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mgmt {
    /// ONTAP management LIF, HTTPS.
    Ontap,
    /// E-Series Web Services Proxy (or the controllers' embedded web services).
    Eseries { http: bool },
    /// SolidFire MVIP from the Endpoint URL.
    Solidfire,
}

/// One address a backend talks to, with the field it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub net: IpNet,
    /// The port when the definition names one (managementLIF `[..]:port`, SVIP, webProxyPort).
    pub port: Option<u16>,
    /// The field, as `managementLIF` or `managementLIF (svm1.example -> 192.0.2.5)`.
    pub field: String,
}

/// A `supportedTopologies` term: every label must match the node's.
pub type Topology = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub driver: Driver,
    /// `file`, `file#N` for the N-th document of a multi-document file, `... items[i]` in a list.
    pub origin: String,
    /// Trident's backend UUID, where the source names it (resolved state, PV attributes).
    pub uuid: Option<String>,
    /// From Trident's resolved state (a TridentBackend, `tridentctl get backend`): it
    /// supersedes a definition of the same name.
    pub resolved: bool,
    pub mgmt_kind: Option<Mgmt>,
    pub mgmt: Vec<Dest>,
    pub data: Vec<Dest>,
    pub protocols: Protocols,
    /// The mount options volumes of this backend get when their class and PV name none:
    /// `nfsMountOptions`, or the driver's default.
    pub nfs_options: Option<String>,
    /// Volumes use Kerberos (ANF `kerberos`, or `sec=krb5*` in the options).
    pub kerberos: bool,
    /// `supportedTopologies` of the backend and its pools; `None` when some pool is usable on
    /// any node.
    pub topologies: Option<Vec<Topology>>,
    /// Why the definition cannot name every data address, when it cannot.
    pub data_discovered: Option<String>,
    /// Facts worth telling the operator (not errors).
    pub notes: Vec<String>,
}

impl Backend {
    /// What a published volume's address is planned with when its backend is not in the
    /// sources: an ONTAP backend of the volume's protocol (the drivers most volumes come from).
    pub fn stand_in(p: &Published) -> Backend {
        let (driver, protocols) = match p.access {
            Access::Nfs => (
                Driver::OntapNas,
                Protocols {
                    nfs: true,
                    ..Protocols::default()
                },
            ),
            Access::Smb => (
                Driver::OntapNas,
                Protocols {
                    smb: true,
                    ..Protocols::default()
                },
            ),
            Access::Iscsi => (
                Driver::OntapSan,
                Protocols {
                    iscsi: true,
                    ..Protocols::default()
                },
            ),
            Access::Nvme => (
                Driver::OntapSan,
                Protocols {
                    nvme: true,
                    ..Protocols::default()
                },
            ),
        };
        Backend {
            name: p.backend_uuid.as_ref().map_or_else(
                || format!("volume {}", p.volume),
                |u| format!("backend {u}"),
            ),
            driver,
            origin: p.origin.clone(),
            uuid: p.backend_uuid.clone(),
            resolved: false,
            mgmt_kind: None,
            mgmt: Vec::new(),
            data: Vec::new(),
            protocols,
            nfs_options: None,
            kerberos: false,
            topologies: None,
            data_discovered: None,
            notes: Vec::new(),
        }
    }

    /// The backend's own mount options, parsed (a default that does not parse cannot happen:
    /// they were checked when the backend was read).
    pub fn mount(&self) -> Mount {
        Mount::parse(self.nfs_options.as_deref().unwrap_or("")).unwrap_or_default()
    }
}

/// A definition that was not planned, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub origin: String,
    /// The backend's name, when the definition got that far.
    pub name: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "backend {n} ({}) skipped: {}", self.origin, self.why),
            None => write!(f, "{} skipped: {}", self.origin, self.why),
        }
    }
}

/// Everything the sources say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub backends: Vec<Backend>,
    pub classes: Vec<StorageClass>,
    pub volumes: Vec<Volume>,
    /// Addresses Trident mounts volumes with (TridentVolumes, VolumeAttachments): see `published`.
    pub published: Vec<Published>,
    pub skipped: Vec<Skipped>,
    /// Facts about the sources as a whole (a source with no backend, a superseded definition).
    pub warnings: Vec<String>,
}

impl Inventory {
    /// `other`'s findings after this one's.
    fn append(&mut self, other: Inventory) {
        self.backends.extend(other.backends);
        self.classes.extend(other.classes);
        self.volumes.extend(other.volumes);
        self.published.extend(other.published);
        self.skipped.extend(other.skipped);
        self.warnings.extend(other.warnings);
    }
}

fn err(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads every source (see [`discover`]). Only an unreadable or unparsable file is an error.
pub fn load(sources: &[PathBuf]) -> Result<Inventory> {
    load_with(sources, None, &mut Reads::default())
}

/// Reads every source as `load` does, and the cluster source's objects as one more source
/// named by its path; `reads` keeps what each object gave, so that an unchanged one is not
/// read again next time.
pub fn load_with(
    sources: &[PathBuf],
    cluster: Option<(&Path, &[Doc])>,
    reads: &mut Reads,
) -> Result<Inventory> {
    let mut docs = Vec::new();
    let mut per_source = Vec::new();
    for s in sources {
        let before = docs.len();
        for f in discover(std::slice::from_ref(s))? {
            let text = std::fs::read_to_string(&f).map_err(Error::io("reading", &f))?;
            docs.extend(documents(&f, &text)?);
        }
        per_source.push((s.clone(), before..docs.len()));
    }
    let per_source = per_source
        .iter()
        .map(|(p, r)| (p.as_path(), r.clone()))
        .collect();
    let cluster = cluster
        .filter(|(_, d)| !d.is_empty())
        .map(|(name, d)| (name, reads::Pass::new(reads, d)));
    Ok(inventory(&docs, per_source, cluster))
}

/// Reads one file's text as `load` reads a file named `path` (tests, fuzzing).
pub fn read_text(path: &Path, text: &str) -> Result<Inventory> {
    let docs = documents(path, text)?;
    let n = docs.len();
    Ok(inventory(&docs, vec![(path, 0..n)], None))
}

/// What the documents say, source by source (the ranges index `docs`), then the cluster's.
fn inventory(
    docs: &[(PathBuf, String, Value)],
    per_source: Vec<(&Path, std::ops::Range<usize>)>,
    mut cluster: Option<(&Path, reads::Pass<'_>)>,
) -> Inventory {
    let objects: Vec<Vec<(String, &Value)>> = docs
        .iter()
        .map(|(_, origin, v)| {
            let mut out = Vec::new();
            flatten(origin.clone(), v, &mut out);
            out
        })
        .collect();
    // Secrets first, so that a backend may name one defined in any of the sources.
    let mut secrets = BTreeMap::new();
    let mut inv = Inventory::default();
    for (origin, v) in objects.iter().flatten() {
        if kind(v) == Some("Secret") {
            if let Err(why) = collect_secret(v, &mut secrets) {
                inv.skipped.push(Skipped {
                    origin: origin.clone(),
                    name: None,
                    why,
                });
            }
        }
    }
    if let Some((_, pass)) = &mut cluster {
        pass.secrets(&mut secrets, &mut inv.skipped);
    }
    let any = !objects.is_empty() || cluster.is_some();
    for (s, range) in per_source {
        let before = inv.backends.len() + inv.skipped.len();
        for (origin, v) in objects[range].iter().flatten() {
            read_object(origin, v, &secrets, &mut inv);
        }
        note_if_empty(&mut inv, s, before, any);
    }
    if let Some((s, pass)) = cluster {
        let before = inv.backends.len() + inv.skipped.len();
        pass.read(&secrets, &mut inv);
        note_if_empty(&mut inv, s, before, any);
    }
    resolve_duplicates(&mut inv);
    inv
}

/// A source that gave no backend, where some source has documents, is worth a word.
fn note_if_empty(inv: &mut Inventory, source: &Path, before: usize, any: bool) {
    if inv.backends.len() + inv.skipped.len() == before && any && !is_cluster_only(inv, source) {
        inv.warnings.push(format!(
            "{} defines no backend: nothing from it is planned",
            source.display()
        ));
    }
}

/// A source that holds only StorageClasses or PVs is not expected to define backends.
fn is_cluster_only(inv: &Inventory, source: &Path) -> bool {
    let s = source.display().to_string();
    inv.classes.iter().any(|c| c.origin.starts_with(&s))
        || inv.volumes.iter().any(|v| v.origin.starts_with(&s))
        || inv.published.iter().any(|v| v.origin.starts_with(&s))
}

/// A `kind: List` (or any `*List`), and `tridentctl get backend` output (`items` without a
/// kind), stand for their items.
fn flatten<'a>(origin: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    let listed = v.as_mapping().and_then(|m| {
        let o = Obj(m);
        let is_list = match kind(v) {
            Some(k) => k.ends_with("List"),
            None => true,
        };
        match o.get("items") {
            Some(Value::Sequence(items)) if is_list => Some(items),
            _ => None,
        }
    });
    match listed {
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(format!("{origin} items[{i}]"), item, out);
            }
        }
        None => out.push((origin, v)),
    }
}

fn read_object(
    origin: &str,
    v: &Value,
    secrets: &BTreeMap<String, (String, u16)>,
    inv: &mut Inventory,
) {
    let Some(top) = v.as_mapping().map(Obj) else {
        inv.skipped.push(Skipped {
            origin: origin.to_string(),
            name: None,
            why: "a backend definition must be a mapping".into(),
        });
        return;
    };
    let parsed = match kind(v) {
        Some("TridentBackendConfig") => trident_backend_config(&top),
        Some("TridentBackend") => trident_backend(&top),
        Some("StorageClass") => {
            let mut notes = Vec::new();
            if let Some(sc) = kube::storage_class(&top, origin, &mut notes) {
                inv.classes.push(sc);
            }
            inv.warnings.extend(notes);
            return;
        }
        Some("PersistentVolume") => {
            inv.volumes.extend(kube::persistent_volume(&top, origin));
            return;
        }
        Some("TridentVolume") => {
            let found = published::trident_volume(&top, origin, &mut inv.warnings);
            inv.published.extend(found);
            return;
        }
        Some("VolumeAttachment") => {
            let found = published::volume_attachment(&top, origin, &mut inv.warnings);
            inv.published.extend(found);
            return;
        }
        // Secrets are read above; other Kubernetes objects say nothing about storage.
        Some(_) => return,
        // `tridentctl get backend` items: the resolved configuration under `config`.
        None if top
            .obj("config")
            .is_some_and(|c| c.str("storageDriverName").is_some()) =>
        {
            Ok(Definition {
                spec: top.obj("config").expect("checked"),
                name: top.str("name"),
                uuid: top.str("backendUUID"),
                resolved: true,
            })
        }
        None => Ok(Definition {
            spec: Obj(top.0),
            name: None,
            uuid: None,
            resolved: false,
        }),
    };
    let name_hint = |d: &Definition<'_>| d.spec.str("backendName").or_else(|| d.name.clone());
    match parsed.and_then(|d| {
        let name = name_hint(&d);
        backend(origin, &d, secrets).map_err(|(f, m)| (name, format!("{f}: {m}")))
    }) {
        Ok(b) => inv.backends.push(b),
        Err((name, why)) => inv.skipped.push(Skipped {
            origin: origin.to_string(),
            name,
            why,
        }),
    }
}

/// Where a backend's fields are, and what the wrapper says about it.
struct Definition<'a> {
    spec: Obj<'a>,
    /// The name the wrapper gives (metadata.name, backendName, items[].name).
    name: Option<String>,
    uuid: Option<String>,
    resolved: bool,
}

type Refused = (Option<String>, String);

fn trident_backend_config<'a>(top: &Obj<'a>) -> std::result::Result<Definition<'a>, Refused> {
    let name = top.obj("metadata").and_then(|m| m.str("name"));
    let api = top.str("apiVersion").unwrap_or_default();
    if !api.starts_with("trident.netapp.io/") {
        return Err((
            name,
            format!("TridentBackendConfig with apiVersion `{api}`; expected trident.netapp.io/v1"),
        ));
    }
    let spec = top
        .obj("spec")
        .ok_or_else(|| (name.clone(), "TridentBackendConfig without spec".into()))?;
    // The backend Trident made from it (`persistent_store/crd/apis/netapp/v1/types.go`,
    // TridentBackendConfigBackendInfo): what TridentVolumes name it by.
    let uuid = top
        .obj("status")
        .and_then(|s| s.obj("backendInfo"))
        .and_then(|b| b.str("backendUUID"));
    Ok(Definition {
        spec,
        name,
        uuid,
        resolved: false,
    })
}

/// A TridentBackend's `config` is Trident's persistent form: the driver's configuration under
/// `ontap_config`, `solidfire_config`, `azure_config` or `gcnv_config`
/// (`storage/backend.go`, PersistentStorageBackendConfig; `eseries_config` before 22.04).
fn trident_backend<'a>(top: &Obj<'a>) -> std::result::Result<Definition<'a>, Refused> {
    let name = top.str("backendName");
    let config = top
        .obj("config")
        .ok_or_else(|| (name.clone(), "TridentBackend without config".into()))?;
    let spec = [
        "ontap_config",
        "solidfire_config",
        "azure_config",
        "gcnv_config",
        "eseries_config",
    ]
    .iter()
    .find_map(|k| config.obj(k))
    .unwrap_or(config);
    Ok(Definition {
        spec,
        name,
        uuid: top.str("backendUUID"),
        resolved: true,
    })
}

fn backend(
    origin: &str,
    d: &Definition<'_>,
    secrets: &BTreeMap<String, (String, u16)>,
) -> std::result::Result<Backend, (&'static str, String)> {
    let spec = &d.spec;
    let driver_name = spec
        .str("storageDriverName")
        .ok_or(("storageDriverName", "missing".to_string()))?;
    let driver = Driver::parse(&driver_name).ok_or_else(|| {
        let known: Vec<&str> = DRIVERS.iter().map(|(n, _)| *n).collect();
        (
            "storageDriverName",
            format!(
                "unknown driver `{driver_name}`; known drivers: {}",
                known.join(", ")
            ),
        )
    })?;
    if let Some(version) = spec.str("version") {
        if version != "1" {
            return Err((
                "version",
                format!("`{version}` is not supported; Trident backends are version 1"),
            ));
        }
    }
    let mut b = Backend {
        name: String::new(),
        driver,
        origin: origin.to_string(),
        uuid: d.uuid.clone(),
        resolved: d.resolved,
        mgmt_kind: None,
        mgmt: Vec::new(),
        data: Vec::new(),
        protocols: Protocols::default(),
        nfs_options: None,
        kerberos: false,
        topologies: drivers::topologies(spec),
        data_discovered: None,
        notes: Vec::new(),
    };
    drivers::read(spec, secrets, &mut b)?;
    if b.protocols.nfs {
        let m = Mount::parse(b.nfs_options.as_deref().unwrap_or(""))
            .map_err(|m| ("nfsMountOptions", m))?;
        b.kerberos |= m.kerberos;
    }
    b.name = spec
        .str("backendName")
        .or_else(|| d.name.clone())
        .unwrap_or_else(|| {
            let addr = b
                .data
                .first()
                .or(b.mgmt.first())
                .map(|d| d.net.addr().to_string())
                .unwrap_or_default();
            format!("{}_{}", driver.name(), addr)
        });
    Ok(b)
}

/// Trident's resolved state supersedes a definition of the same backend; two definitions of one
/// name keep the first.
fn resolve_duplicates(inv: &mut Inventory) {
    let mut kept: Vec<Backend> = Vec::new();
    for b in std::mem::take(&mut inv.backends) {
        match kept.iter().position(|k| k.name == b.name) {
            None => kept.push(b),
            Some(i) if b.resolved && !kept[i].resolved => {
                inv.warnings.push(format!(
                    "backend {}: Trident's resolved state ({}) supersedes the definition in {}",
                    b.name, b.origin, kept[i].origin
                ));
                kept[i] = b;
            }
            Some(i) if kept[i].resolved && !b.resolved => inv.warnings.push(format!(
                "backend {}: Trident's resolved state ({}) supersedes the definition in {}",
                b.name, kept[i].origin, b.origin
            )),
            Some(i) => inv.skipped.push(Skipped {
                origin: b.origin.clone(),
                name: Some(b.name.clone()),
                why: format!(
                    "backendName `{}` is also defined in {}",
                    b.name, kept[i].origin
                ),
            }),
        }
    }
    inv.backends = kept;
}
