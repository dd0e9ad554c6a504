//! Reading Trident backend definitions the way Trident accepts them: tridentctl JSON or YAML
//! files, TridentBackendConfig custom resources (fields under `spec`), multi-document YAML with
//! Secrets and other kinds, and directories of such files. Keys match case-insensitively, as
//! Trident's JSON decoding does.
//!
//! Credentials are never kept, logged or printed: from a SolidFire `Endpoint` only the host and
//! port survive, and error messages name fields, not their values.
use std::{
    collections::BTreeMap,
    net::{IpAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Driver {
    OntapNas,
    OntapNasEconomy,
    OntapNasFlexgroup,
    OntapSan,
    OntapSanEconomy,
    AzureNetappFiles,
    GoogleCloudNetappVolumes,
    GoogleCloudNetappVolumesSan,
    SolidfireSan,
    EseriesIscsi,
}

pub const DRIVERS: [(&str, Driver); 10] = [
    ("ontap-nas", Driver::OntapNas),
    ("ontap-nas-economy", Driver::OntapNasEconomy),
    ("ontap-nas-flexgroup", Driver::OntapNasFlexgroup),
    ("ontap-san", Driver::OntapSan),
    ("ontap-san-economy", Driver::OntapSanEconomy),
    ("azure-netapp-files", Driver::AzureNetappFiles),
    (
        "google-cloud-netapp-volumes",
        Driver::GoogleCloudNetappVolumes,
    ),
    (
        "google-cloud-netapp-volumes-san",
        Driver::GoogleCloudNetappVolumesSan,
    ),
    ("solidfire-san", Driver::SolidfireSan),
    ("eseries-iscsi", Driver::EseriesIscsi),
];

impl Driver {
    pub fn name(self) -> &'static str {
        DRIVERS
            .iter()
            .find(|(_, d)| *d == self)
            .map(|(n, _)| *n)
            .unwrap()
    }

    fn parse(s: &str) -> Option<Self> {
        DRIVERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, d)| *d)
    }

    fn is_ontap(self) -> bool {
        matches!(
            self,
            Driver::OntapNas
                | Driver::OntapNasEconomy
                | Driver::OntapNasFlexgroup
                | Driver::OntapSan
                | Driver::OntapSanEconomy
        )
    }

    fn is_nas(self) -> bool {
        matches!(
            self,
            Driver::OntapNas
                | Driver::OntapNasEconomy
                | Driver::OntapNasFlexgroup
                | Driver::AzureNetappFiles
                | Driver::GoogleCloudNetappVolumes
        )
    }
}

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

/// Reads backends from files and directories (a directory: its `.json`, `.yaml` and `.yml`
/// files, sorted; Kubernetes' `..data` entries skipped).
pub fn load(sources: &[PathBuf]) -> Result<Vec<Backend>> {
    let mut files = Vec::new();
    for s in sources {
        let meta = std::fs::metadata(s).map_err(|e| err(s, e.to_string()))?;
        if meta.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(s)
                .map_err(|e| err(s, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with("..")
                        && (name.ends_with(".json")
                            || name.ends_with(".yaml")
                            || name.ends_with(".yml"))
                        && p.is_file()
                })
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(s.clone());
        }
    }
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| err(f, e.to_string()))?;
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

/// Parses one file into (path, origin, document) triples.
pub fn documents(path: &Path, text: &str) -> Result<Vec<(PathBuf, String, Value)>> {
    let display = path.display().to_string();
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if is_json {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            err(
                path,
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        let v: Value = serde_yaml::to_value(v).map_err(|e| err(path, e.to_string()))?;
        return Ok(vec![(path.to_path_buf(), display, v)]);
    }
    let mut out = Vec::new();
    let mut n = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        n += 1;
        let v = <Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| err(path, crate::config::yaml_error(&e)))?;
        if v.is_null() {
            continue;
        }
        out.push((path.to_path_buf(), format!("{display}#{n}"), v));
    }
    if n == 1 {
        if let Some(d) = out.first_mut() {
            d.1 = display;
        }
    }
    Ok(out)
}

/// Case-insensitive view of a mapping.
struct Obj<'a>(&'a Mapping);

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v)
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Trident accepts booleans as booleans or as "true"/"false" strings.
    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn obj(&self, key: &str) -> Option<Obj<'a>> {
        self.get(key)?.as_mapping().map(Obj)
    }
}

fn kind(v: &Value) -> Option<&str> {
    v.as_mapping()
        .and_then(|m| Obj(m).get("kind"))
        .and_then(Value::as_str)
}

fn collect_secret(
    path: &Path,
    v: &Value,
    secrets: &mut BTreeMap<String, (String, u16)>,
) -> Result<()> {
    let m = Obj(v.as_mapping().unwrap());
    let Some(name) = m.obj("metadata").and_then(|md| md.str("name")) else {
        return Ok(());
    };
    let endpoint = m
        .obj("stringData")
        .and_then(|d| d.str("EndPoint"))
        .or_else(|| {
            m.obj("data")
                .and_then(|d| d.str("EndPoint"))
                .and_then(|b| base64_decode(&b))
        });
    if let Some(url) = endpoint {
        let hp = url_host_port(&url).ok_or_else(|| {
            err(
                path,
                format!("Secret {name}: EndPoint is not an http(s) URL with a host"),
            )
        })?;
        secrets.insert(name, hp);
    }
    Ok(())
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
    let dest = |field: &str, default_port: Option<u16>| -> Result<Vec<Dest>> {
        match spec.str(field) {
            None => Ok(Vec::new()),
            Some(s) => endpoint(&s, field, default_port).map_err(|m| field_err(field, m)),
        }
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

    match driver {
        d if d.is_ontap() => {
            b.mgmt_kind = Some(Mgmt::Ontap);
            b.mgmt = dest("managementLIF", None)?;
            if b.mgmt.is_empty() {
                return Err(field_err("managementLIF", "missing".into()));
            }
            b.data = dest("dataLIF", None)?;
            if b.data.is_empty() {
                b.data_discovered = Some(if d.is_nas() {
                    "no dataLIF: Trident uses the SVM's data LIFs".into()
                } else {
                    "Trident discovers the iSCSI/NVMe data LIFs of the SVM at run time".into()
                });
            } else if !d.is_nas() && (b.protocols.iscsi || b.protocols.nvme) {
                b.data_discovered = Some("Trident may also log in to other iSCSI/NVMe data LIFs it discovers (selective LUN map)".into());
            }
        }
        Driver::AzureNetappFiles
        | Driver::GoogleCloudNetappVolumes
        | Driver::GoogleCloudNetappVolumesSan => {
            b.data_discovered =
                Some("volume addresses are assigned by the cloud service at run time".into());
            b.notes.push("management goes to the cloud provider's API endpoints, which are not storage addresses and are not policed".into());
        }
        Driver::SolidfireSan => {
            b.mgmt_kind = Some(Mgmt::Solidfire);
            let from_spec = spec.str("Endpoint");
            let (host, port) = match from_spec {
                Some(url) => url_host_port(&url).ok_or_else(|| {
                    field_err("Endpoint", "not an http(s) URL with a host".into())
                })?,
                None => {
                    let secret = spec.obj("credentials").and_then(|c| c.str("name"));
                    match secret.as_ref().and_then(|s| secrets.get(s)) {
                        Some(hp) => hp.clone(),
                        None => {
                            b.notes.push(format!(
                                "Endpoint is in Secret `{}`, not among the sources: the management address is unknown",
                                secret.unwrap_or_default()
                            ));
                            (String::new(), 443)
                        }
                    }
                }
            };
            if !host.is_empty() {
                b.mgmt = endpoint(&host, "Endpoint", None)
                    .map_err(|m| field_err("Endpoint", m))?
                    .into_iter()
                    .map(|d| Dest {
                        port: Some(port),
                        ..d
                    })
                    .collect();
            }
            b.data = dest("SVIP", Some(3260))?;
            if b.data.is_empty() {
                return Err(field_err("SVIP", "missing".into()));
            }
        }
        Driver::EseriesIscsi => {
            let http = spec.bool("webProxyUseHTTP").unwrap_or(false);
            b.mgmt_kind = Some(Mgmt::Eseries { http });
            let port = match spec.str("webProxyPort") {
                Some(p) => Some(
                    p.parse::<u16>()
                        .map_err(|_| field_err("webProxyPort", format!("`{p}` is not a port")))?,
                ),
                None => None,
            };
            let mut mgmt = dest("webProxyHostname", None)?;
            if mgmt.is_empty() {
                // Without a proxy, Trident talks to the controllers' embedded web services.
                mgmt.extend(dest("controllerA", None)?);
                mgmt.extend(dest("controllerB", None)?);
            }
            b.mgmt = mgmt
                .into_iter()
                .map(|d| Dest {
                    port: port.or(d.port),
                    ..d
                })
                .collect();
            b.data_discovered = Some("Trident discovers the array's iSCSI target portals at run time (hostDataIP is the node's own address)".into());
        }
        _ => unreachable!("every driver is handled"),
    }

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

/// The NFS major version a mount-options string asks for, as Trident reads it: an optional
/// leading `-o `, comma-separated options, `nfsvers=` or `vers=` as N or N.M; the last one wins.
pub fn nfs_version(opts: &str) -> std::result::Result<Option<u8>, String> {
    let opts = opts.trim();
    let opts = opts.strip_prefix("-o ").unwrap_or(opts).trim();
    let mut version = None;
    for o in opts.split(',').map(str::trim) {
        let Some((k, v)) = o.split_once('=') else {
            continue;
        };
        if k.eq_ignore_ascii_case("nfsvers") || k.eq_ignore_ascii_case("vers") {
            let major = v.split('.').next().unwrap_or("");
            version = Some(
                major
                    .parse::<u8>()
                    .ok()
                    .filter(|m| (3..=4).contains(m))
                    .ok_or_else(|| format!("`{o}` is not NFS version 3 or 4"))?,
            );
        }
    }
    Ok(version)
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, `host`, `host:443`, or a
/// CIDR. Host names resolve now (through the system resolver, /etc/hosts included).
pub fn endpoint(
    s: &str,
    field: &str,
    default_port: Option<u16>,
) -> std::result::Result<Vec<Dest>, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(vec![Dest {
            net: net.trunc(),
            port: default_port,
            field: field.into(),
        }]);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(vec![Dest {
            net: IpNet::from(ip),
            port: default_port,
            field: field.into(),
        }]);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("`{s}`: bad port"))?),
            None if after.is_empty() => default_port,
            None => return Err(format!("`{s}` is not an address")),
        };
        (h, port)
    } else if let Some((h, p)) = s.rsplit_once(':').filter(|(h, _)| !h.contains(':')) {
        (
            h,
            Some(p.parse::<u16>().map_err(|_| format!("`{s}`: bad port"))?),
        )
    } else {
        (s, default_port)
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![Dest {
            net: IpNet::from(ip),
            port,
            field: field.into(),
        }]);
    }
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("`{s}` is not an address or host name"));
    }
    let mut addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("host name `{host}` does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs
        .into_iter()
        .map(|ip| Dest {
            net: IpNet::from(ip),
            port,
            field: format!("{field} ({host} -> {ip})"),
        })
        .collect())
}

/// Host and port of an http(s) URL, dropping any user:password.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = if let Some(r) = url.strip_prefix("https://") {
        (443, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (80, r)
    } else {
        return None;
    };
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (
            h.to_string(),
            after
                .strip_prefix(':')
                .map(|p| p.parse().ok())
                .unwrap_or(Some(default))?,
        )
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_versions_as_trident_reads_them() {
        assert_eq!(nfs_version("nfsvers=3").unwrap(), Some(3));
        assert_eq!(nfs_version("-o nfsvers=4.1,hard").unwrap(), Some(4));
        assert_eq!(nfs_version("vers=4,minorversion=1").unwrap(), Some(4));
        assert_eq!(
            nfs_version("nfsvers=4,vers=3").unwrap(),
            Some(3),
            "the last one wins"
        );
        assert_eq!(nfs_version("hard,intr").unwrap(), None);
        assert!(nfs_version("nfsvers=2").is_err());
    }

    #[test]
    fn endpoints() {
        let d = endpoint("[2001:db8::5]:8443", "managementLIF", None).unwrap();
        assert_eq!(d[0].net.to_string(), "2001:db8::5/128");
        assert_eq!(d[0].port, Some(8443));
        assert_eq!(endpoint("[2001:db8::5]", "f", None).unwrap()[0].port, None);
        assert_eq!(
            endpoint("2001:db8::5", "f", None).unwrap()[0]
                .net
                .to_string(),
            "2001:db8::5/128"
        );
        assert_eq!(
            endpoint("198.51.100.7:3260", "SVIP", Some(3260)).unwrap()[0].port,
            Some(3260)
        );
        assert_eq!(
            endpoint("198.51.100.7", "SVIP", Some(3260)).unwrap()[0].port,
            Some(3260)
        );
        let l = endpoint("localhost", "managementLIF", None).unwrap();
        assert!(l.iter().any(|d| d.net.addr().is_loopback()), "{l:?}");
        assert!(l[0].field.contains("localhost ->"), "{l:?}");
        assert!(
            endpoint("no-such-host.invalid", "f", None)
                .unwrap_err()
                .contains("does not resolve")
        );
        assert!(endpoint("bad host!", "f", None).is_err());
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            url_host_port("https://admin:secret@192.0.2.9/json-rpc/8.0"),
            Some(("192.0.2.9".into(), 443))
        );
        assert_eq!(
            url_host_port("https://u:p@[2001:db8::9]:8443/x"),
            Some(("2001:db8::9".into(), 8443))
        );
        assert_eq!(url_host_port("ftp://x"), None);
        assert_eq!(
            base64_decode("aHR0cHM6Ly91OnBAMTkyLjAuMi45L2pzb24tcnBjLzguMA==").as_deref(),
            Some("https://u:p@192.0.2.9/json-rpc/8.0")
        );
    }
}
