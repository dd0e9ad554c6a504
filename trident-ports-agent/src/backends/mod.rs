//! Reading Trident backend definitions the way Trident accepts them: tridentctl JSON or YAML
//! files, TridentBackendConfig custom resources (fields under `spec`), multi-document YAML with
//! Secrets and other kinds, and directories of such files. Keys match case-insensitively, as
//! Trident's JSON decoding does.
//!
//! Credentials are never kept, logged or printed: from a SolidFire `Endpoint` only the host and
//! port survive, and error messages name fields, not their values.
mod drivers;
mod endpoint;
mod files;
mod nfs;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub use drivers::{DRIVERS, Driver};
pub use endpoint::endpoint;
use files::{Obj, collect_secret, kind};
pub use files::{discover, documents};
use ipnet::IpNet;
pub use nfs::nfs_version;
use serde_yaml::Value;

use crate::error::{Error, Result};

/// The storage protocols a backend's volumes are used with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    /// NFS major versions in use; empty when the backend does not say (both are then assumed).
    pub nfs: Option<NfsVersions>,
    pub smb: bool,
    pub iscsi: bool,
    pub nvme: bool,
    pub fcp: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NfsVersions {
    pub v3: bool,
    pub v4: bool,
    /// False when no nfsMountOptions pinned a version.
    pub pinned: bool,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub driver: Driver,
    /// `file` or `file#N` for the N-th document of a multi-document file.
    pub origin: String,
    pub mgmt_kind: Option<Mgmt>,
    pub mgmt: Vec<Dest>,
    pub data: Vec<Dest>,
    pub protocols: Protocols,
    /// nfsMountOptions as written (backend level), for explanations.
    pub nfs_options: Option<String>,
    /// Why the definition cannot name every data address, when it cannot.
    pub data_discovered: Option<String>,
    /// Facts worth telling the operator (not errors).
    pub notes: Vec<String>,
}

fn err(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads backends from files and directories (see [`discover`]).
pub fn load(sources: &[PathBuf]) -> Result<Vec<Backend>> {
    let files = discover(sources)?;
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(Error::io("reading", f))?;
        docs.extend(documents(f, &text)?);
    }
    // Secrets first, so that a backend may name one defined in any of the sources.
    let mut secrets = BTreeMap::new();
    for (path, _, v) in &docs {
        if kind(v) == Some("Secret") {
            collect_secret(path, v, &mut secrets)?;
        }
    }
    let mut backends = Vec::new();
    for (_, origin, v) in &docs {
        if let Some(b) = backend(origin, v, &secrets)? {
            backends.push(b);
        }
    }
    let mut seen = BTreeMap::new();
    for b in &backends {
        if let Some(prev) = seen.insert(b.name.clone(), b.origin.clone()) {
            return Err(err(
                Path::new(&b.origin),
                format!("backendName `{}` is also defined in {prev}", b.name),
            ));
        }
    }
    Ok(backends)
}

fn backend(
    origin: &str,
    v: &Value,
    secrets: &BTreeMap<String, (String, u16)>,
) -> Result<Option<Backend>> {
    // Errors name the document (`file#N` in a multi-document file), then the field.
    let at = Path::new(origin);
    let Some(top) = v.as_mapping().map(Obj) else {
        return Err(err(at, "a backend definition must be a mapping"));
    };
    let (spec, default_name) = match kind(v) {
        Some("TridentBackendConfig") => {
            let api = top.str("apiVersion").unwrap_or_default();
            if !api.starts_with("trident.netapp.io/") {
                return Err(err(
                    at,
                    format!(
                        "TridentBackendConfig with apiVersion `{api}`; expected trident.netapp.io/v1"
                    ),
                ));
            }
            let spec = top
                .obj("spec")
                .ok_or_else(|| err(at, "TridentBackendConfig without spec"))?;
            (spec, top.obj("metadata").and_then(|m| m.str("name")))
        }
        // Other Kubernetes objects (Secrets, StorageClasses, ...) are not backends.
        Some(_) => return Ok(None),
        None => (top, None),
    };
    let field_err = |field: &str, msg: String| err(at, format!("{field}: {msg}"));
    let driver_name = spec
        .str("storageDriverName")
        .ok_or_else(|| field_err("storageDriverName", "missing".into()))?;
    let driver = Driver::parse(&driver_name).ok_or_else(|| {
        let known: Vec<&str> = DRIVERS.iter().map(|(n, _)| *n).collect();
        field_err(
            "storageDriverName",
            format!(
                "unknown driver `{driver_name}`; known drivers: {}",
                known.join(", ")
            ),
        )
    })?;
    if let Some(version) = spec.str("version") {
        if version != "1" {
            return Err(field_err(
                "version",
                format!("`{version}` is not supported; Trident backends are version 1"),
            ));
        }
    }
    let mut b = Backend {
        name: String::new(),
        driver,
        origin: origin.to_string(),
        mgmt_kind: None,
        mgmt: Vec::new(),
        data: Vec::new(),
        protocols: Protocols::default(),
        nfs_options: spec.str("nfsMountOptions"),
        data_discovered: None,
        notes: Vec::new(),
    };
    // Protocols, from the backend and its virtual pools.
    let mut layers = vec![Obj(spec.0)];
    if let Some(Value::Sequence(pools)) = spec.get("storage") {
        layers.extend(pools.iter().filter_map(|p| p.as_mapping().map(Obj)));
    }
    if driver.is_nas() {
        let mut nfs = NfsVersions::default();
        let mut any_nfs = false;
        for l in &layers {
            let nas_type = l.str("nasType").map(|s| s.to_ascii_lowercase());
            match nas_type.as_deref() {
                None if l.0 != spec.0 => {} // a pool without nasType inherits the backend's
                None | Some("nfs") => {
                    any_nfs = true;
                    let opts = l
                        .str("nfsMountOptions")
                        .or_else(|| spec.str("nfsMountOptions"));
                    match opts
                        .as_deref()
                        .map(nfs_version)
                        .transpose()
                        .map_err(|m| field_err("nfsMountOptions", m))?
                        .flatten()
                    {
                        Some(3) => {
                            nfs.v3 = true;
                            nfs.pinned = true;
                        }
                        Some(_) => {
                            nfs.v4 = true;
                            nfs.pinned = true;
                        }
                        None => {
                            nfs.v3 = true;
                            nfs.v4 = true;
                        }
                    }
                }
                Some("smb") => b.protocols.smb = true,
                Some(other) => {
                    return Err(field_err("nasType", format!("`{other}` is not nfs or smb")));
                }
            }
        }
        if any_nfs {
            // A layer that did not pin a version means both may be used.
            b.protocols.nfs = Some(nfs);
        }
    } else {
        for l in &layers {
            let san_type = l.str("sanType").map(|s| s.to_ascii_lowercase());
            match san_type.as_deref() {
                None if l.0 != spec.0 => {}
                None | Some("iscsi") => b.protocols.iscsi = true,
                Some("nvme") if driver.is_ontap() => b.protocols.nvme = true,
                Some("fcp") if driver.is_ontap() => b.protocols.fcp = true,
                Some(other) => {
                    return Err(field_err(
                        "sanType",
                        format!("`{other}` is not supported by {}", driver.name()),
                    ));
                }
            }
        }
    }
    if b.protocols.fcp {
        b.notes
            .push("sanType fcp: fibre-channel data needs no IP rules".into());
    }

    drivers::addresses(&spec, secrets, &mut b).map_err(|(f, m)| field_err(f, m))?;

    b.name = spec.str("backendName").or(default_name).unwrap_or_else(|| {
        let addr = b
            .data
            .first()
            .or(b.mgmt.first())
            .map(|d| d.net.addr().to_string())
            .unwrap_or_default();
        format!("{}_{}", driver.name(), addr)
    });
    Ok(Some(b))
}
