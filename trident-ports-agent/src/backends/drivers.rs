//! What each Trident driver's fields say: the protocols its volumes use, the mount options
//! they get by default, and the management and data addresses a node talks to. One function
//! per driver family, chosen by an exhaustive match; each rule names the Trident file it
//! follows.
use std::collections::BTreeMap;

use super::{
    Backend, Dest, Mgmt, Topology,
    endpoint::{endpoint, url_host_port},
    files::Obj,
};

/// A field's problem, as (field, message); the caller names the document.
pub(super) type FieldError = (&'static str, String);

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

    pub(super) fn parse(s: &str) -> Option<Self> {
        DRIVERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, d)| *d)
    }

    pub fn is_ontap(self) -> bool {
        matches!(
            self,
            Driver::OntapNas
                | Driver::OntapNasEconomy
                | Driver::OntapNasFlexgroup
                | Driver::OntapSan
                | Driver::OntapSanEconomy
        )
    }

    pub fn is_nas(self) -> bool {
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

/// Fills in `b` from `spec` as `b.driver` reads it.
pub(super) fn read(
    spec: &Obj<'_>,
    secrets: &BTreeMap<String, (String, u16)>,
    b: &mut Backend,
) -> Result<(), FieldError> {
    match b.driver {
        Driver::OntapNas | Driver::OntapNasEconomy | Driver::OntapNasFlexgroup => {
            ontap_nas(spec, b)?;
            ontap_addresses(spec, b)
        }
        Driver::OntapSan | Driver::OntapSanEconomy => {
            ontap_san(spec, b)?;
            ontap_addresses(spec, b)
        }
        Driver::AzureNetappFiles => {
            anf(spec, b)?;
            cloud(b);
            Ok(())
        }
        Driver::GoogleCloudNetappVolumes => {
            gcnv(spec, b)?;
            cloud(b);
            Ok(())
        }
        Driver::GoogleCloudNetappVolumesSan => {
            b.protocols.iscsi = true;
            cloud(b);
            Ok(())
        }
        Driver::SolidfireSan => {
            b.protocols.iscsi = true;
            solidfire(spec, secrets, b)
        }
        Driver::EseriesIscsi => {
            b.protocols.iscsi = true;
            eseries(spec, b)
        }
    }
}

/// The virtual pools under `storage`.
fn pools<'a>(spec: &Obj<'a>) -> Vec<Obj<'a>> {
    match spec.get("storage") {
        Some(serde_yaml::Value::Sequence(pools)) => pools
            .iter()
            .filter_map(|p| p.as_mapping().map(Obj))
            .collect(),
        _ => Vec::new(),
    }
}

/// `nfs` or `smb`, default `nfs` (`ontap_common.go`: "If NASType is not provided in the backend
/// config, default to NFS").
fn nas_type(o: &Obj<'_>) -> Result<Option<bool>, FieldError> {
    match o.str("nasType").map(|s| s.to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("nfs") => Ok(Some(false)),
        Some("smb") => Ok(Some(true)),
        Some(other) => Err(("nasType", format!("`{other}` is not nfs or smb"))),
    }
}

/// Fields an ONTAP virtual pool cannot carry: Trident's pool type has labels, region, zone,
/// supportedTopologies, smbShare and defaults only (`storage_drivers/types.go`,
/// OntapStorageDriverPool), so a pool's `nasType`, `sanType` or `nfsMountOptions` changes
/// nothing.
fn ignored_pool_fields(spec: &Obj<'_>, b: &mut Backend) {
    for (i, pool) in pools(spec).iter().enumerate() {
        for field in ["nasType", "sanType", "nfsMountOptions"] {
            if pool.get(field).is_some() {
                b.notes.push(format!(
                    "storage[{i}].{field} is ignored: ONTAP virtual pools take it from the backend"
                ));
            }
        }
    }
}

fn ontap_nas(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    if nas_type(spec)?.unwrap_or(false) {
        b.protocols.smb = true;
    } else {
        b.protocols.nfs = true;
        // No default version in a CSI deployment (`ontap_common.go`,
        // DefaultNfsMountOptionsKubernetes = ""): the client negotiates.
        b.nfs_options = spec.str("nfsMountOptions");
    }
    ignored_pool_fields(spec, b);
    Ok(())
}

/// `ontap-san` speaks iSCSI, NVMe/TCP or FC by `sanType` (`ontap_factory.go`,
/// GetDriverProtocol); `ontap-san-economy` is always the iSCSI economy driver, whatever
/// `sanType` says (`ontap_factory.go` builds SANEconomyStorageDriver for it unconditionally).
fn ontap_san(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    let san_type = spec.str("sanType").map(|s| s.to_ascii_lowercase());
    match (b.driver, san_type.as_deref()) {
        (Driver::OntapSanEconomy, None | Some("iscsi")) => b.protocols.iscsi = true,
        (Driver::OntapSanEconomy, Some(other)) => {
            b.protocols.iscsi = true;
            b.notes.push(format!(
                "sanType `{other}` is ignored: ontap-san-economy volumes are iSCSI LUNs"
            ));
        }
        (_, None | Some("iscsi")) => b.protocols.iscsi = true,
        (_, Some("nvme")) => b.protocols.nvme = true,
        (_, Some("fcp")) => {
            b.protocols.fcp = true;
            b.notes
                .push("sanType fcp: fibre-channel data needs no IP rules".into());
        }
        (_, Some(other)) => {
            return Err((
                "sanType",
                format!("`{other}` is not supported by {}", b.driver.name()),
            ));
        }
    }
    ignored_pool_fields(spec, b);
    Ok(())
}

/// ANF mounts NFSv3 unless told otherwise, NFSv4.1 when the backend uses Kerberos
/// (`azure_anf.go`: defaultNfsMountOptions "nfsvers=3", defaultKerberosNfsMountOptions
/// "nfsvers=4.1"); pools may set `nasType` and `kerberos` (AzureNASStorageDriverPool).
fn anf(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    let kerberos = spec.str("kerberos").is_some();
    let mut nfs = false;
    let mut pool_kerberos = false;
    match nas_type(spec)? {
        Some(true) => b.protocols.smb = true,
        _ => nfs = true,
    }
    for pool in pools(spec) {
        match nas_type(&pool)? {
            Some(true) => b.protocols.smb = true,
            Some(false) => nfs = true,
            None => {}
        }
        pool_kerberos |= pool.str("kerberos").is_some();
    }
    if nfs {
        b.protocols.nfs = true;
        b.nfs_options = Some(
            spec.str("nfsMountOptions")
                .unwrap_or_else(|| if kerberos { "nfsvers=4.1" } else { "nfsvers=3" }.to_string()),
        );
        b.kerberos = kerberos || pool_kerberos;
        if pool_kerberos && !kerberos {
            b.notes.push(
                "a virtual pool uses Kerberos: its volumes need NFSv4.1 and the directory's Kerberos".into(),
            );
        }
    }
    Ok(())
}

/// GCNV passes no NFS version unless told (`gcp_gcnv.go`: GetNFSVersionFromMountOptions with an
/// empty default): the host decides.
fn gcnv(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    if nas_type(spec)?.unwrap_or(false) {
        b.protocols.smb = true;
    } else {
        b.protocols.nfs = true;
        b.nfs_options = spec.str("nfsMountOptions");
    }
    Ok(())
}

/// The addresses in `field`, if it is set.
fn dest(
    spec: &Obj<'_>,
    field: &'static str,
    default_port: Option<u16>,
) -> Result<Vec<Dest>, FieldError> {
    match spec.str(field) {
        None => Ok(Vec::new()),
        Some(s) => endpoint(&s, field, default_port).map_err(|m| (field, m)),
    }
}

/// Management through `managementLIF`. NAS data goes to `dataLIF` (Trident picks the SVM's first
/// NFS or SMB LIF when it is not set, `ontap_common.go` ValidateNASDriver). SAN drivers ignore
/// `dataLIF` ("Specifying data LIF is no longer supported for SAN backends",
/// ValidateSANDriver): their portals are the SVM's iSCSI or NVMe LIFs, found at run time.
fn ontap_addresses(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    b.mgmt_kind = Some(Mgmt::Ontap);
    b.mgmt = dest(spec, "managementLIF", None)?;
    if b.mgmt.is_empty() {
        let why = if spec
            .obj("aws")
            .and_then(|a| a.str("fsxFilesystemID"))
            .is_some()
        {
            "missing: FSx for ONTAP finds it through the AWS API (aws.fsxFilesystemID); set managementLIF to the SVM's management address to plan this backend"
        } else if spec.obj("gcnv").and_then(|g| g.str("proxyURL")).is_some() {
            "missing: in GCNV ONTAP mode Trident manages the SVM through gcnv.proxyURL; set managementLIF to plan this backend"
        } else {
            "missing"
        };
        return Err(("managementLIF", why.into()));
    }
    if b.driver.is_nas() {
        b.data = dest(spec, "dataLIF", None)?;
        if b.data.is_empty() {
            b.data_discovered = Some("no dataLIF: Trident uses the SVM's first data LIF".into());
        }
    } else {
        if spec.str("dataLIF").is_some() {
            b.notes.push(
                "dataLIF is ignored: Trident no longer uses it for SAN backends (the portals are the SVM's iSCSI/NVMe LIFs)"
                    .into(),
            );
        }
        if b.protocols.iscsi || b.protocols.nvme {
            b.data_discovered =
                Some("Trident discovers the iSCSI/NVMe data LIFs of the SVM at run time".into());
        }
    }
    Ok(())
}

fn cloud(b: &mut Backend) {
    b.data_discovered =
        Some("volume addresses are assigned by the cloud service at run time".into());
    b.notes.push("management goes to the cloud provider's API endpoints, which are not storage addresses and are not policed".into());
}

fn solidfire(
    spec: &Obj<'_>,
    secrets: &BTreeMap<String, (String, u16)>,
    b: &mut Backend,
) -> Result<(), FieldError> {
    b.mgmt_kind = Some(Mgmt::Solidfire);
    let endpoint_in_secret = || {
        let secret = spec.obj("credentials").and_then(|c| c.str("name"));
        secret
            .as_ref()
            .and_then(|s| secrets.get(s))
            .cloned()
            .ok_or(secret)
    };
    let (host, port) = if let Some(url) = spec.str("Endpoint") {
        url_host_port(&url)
            .ok_or_else(|| ("Endpoint", "not an http(s) URL with a host".to_string()))?
    } else {
        endpoint_in_secret().unwrap_or_else(|secret| {
            b.notes.push(format!(
                "Endpoint is in Secret `{}`, not among the sources: the management address is unknown",
                secret.unwrap_or_default()
            ));
            (String::new(), 443)
        })
    };
    if !host.is_empty() {
        b.mgmt = endpoint(&host, "Endpoint", None)
            .map_err(|m| ("Endpoint", m))?
            .into_iter()
            .map(|d| Dest {
                port: Some(port),
                ..d
            })
            .collect();
    }
    b.data = dest(spec, "SVIP", Some(3260))?;
    if b.data.is_empty() {
        return Err(("SVIP", "missing".into()));
    }
    Ok(())
}

/// E-Series (removed from Trident in 22.04, commit 927d0039): management through the Web Services
/// Proxy or the controllers; `hostDataIP` (or the older `hostData_IP`) is the array's iSCSI
/// portal, which Trident logs in to (`storage_drivers/eseries/eseries_iscsi.go`:
/// `publishInfo.IscsiTargetPortal = d.Config.HostDataIP`).
fn eseries(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    let http = spec.bool("webProxyUseHTTP").unwrap_or(false);
    b.mgmt_kind = Some(Mgmt::Eseries { http });
    let port = match spec.str("webProxyPort") {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| ("webProxyPort", format!("`{p}` is not a port")))?,
        ),
        None => None,
    };
    let mut mgmt = dest(spec, "webProxyHostname", None)?;
    if mgmt.is_empty() {
        // Without a proxy, Trident talks to the controllers' embedded web services.
        mgmt.extend(dest(spec, "controllerA", None)?);
        mgmt.extend(dest(spec, "controllerB", None)?);
    }
    b.mgmt = mgmt
        .into_iter()
        .map(|d| Dest {
            port: port.or(d.port),
            ..d
        })
        .collect();
    b.data = dest(spec, "hostDataIP", Some(3260))?;
    if b.data.is_empty() {
        b.data = dest(spec, "hostData_IP", Some(3260))?;
    }
    if b.data.is_empty() {
        return Err((
            "hostDataIP",
            "missing: it is the array's iSCSI portal".into(),
        ));
    }
    b.data_discovered =
        Some("the array may report more iSCSI portals than hostDataIP (multipath)".into());
    Ok(())
}

/// The backend's `supportedTopologies`, with each virtual pool's own or, without them, the
/// backend's (`ontap_common.go` and the other drivers' pool initialisation). `None` when a pool
/// (or a backend without pools) is usable anywhere.
pub(super) fn topologies(spec: &Obj<'_>) -> Option<Vec<Topology>> {
    let terms = |o: &Obj<'_>| -> Option<Vec<Topology>> {
        let seq = o.get("supportedTopologies")?.as_sequence()?;
        let terms: Vec<Topology> = seq
            .iter()
            .filter_map(|t| t.as_mapping())
            .map(|m| {
                Obj(m)
                    .0
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), Obj::scalar(v)?)))
                    .collect()
            })
            .filter(|t: &Topology| !t.is_empty())
            .collect();
        (!terms.is_empty()).then_some(terms)
    };
    let backend = terms(spec);
    let pools = pools(spec);
    if pools.is_empty() {
        return backend;
    }
    let mut all = Vec::new();
    for p in &pools {
        all.extend(terms(p).or_else(|| backend.clone())?);
    }
    Some(all)
}
