//! What each Trident driver's fields say about the addresses a node talks to: one function per
//! driver family, chosen by an exhaustive match.
use std::collections::BTreeMap;

use super::{
    Backend, Dest, Mgmt,
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

/// Fills in `b`'s management and data addresses from `spec`, as `b.driver` reads them.
pub(super) fn addresses(
    spec: &Obj<'_>,
    secrets: &BTreeMap<String, (String, u16)>,
    b: &mut Backend,
) -> Result<(), FieldError> {
    match b.driver {
        Driver::OntapNas
        | Driver::OntapNasEconomy
        | Driver::OntapNasFlexgroup
        | Driver::OntapSan
        | Driver::OntapSanEconomy => ontap(spec, b),
        Driver::AzureNetappFiles
        | Driver::GoogleCloudNetappVolumes
        | Driver::GoogleCloudNetappVolumesSan => {
            cloud(b);
            Ok(())
        }
        Driver::SolidfireSan => solidfire(spec, secrets, b),
        Driver::EseriesIscsi => eseries(spec, b),
    }
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

fn ontap(spec: &Obj<'_>, b: &mut Backend) -> Result<(), FieldError> {
    b.mgmt_kind = Some(Mgmt::Ontap);
    b.mgmt = dest(spec, "managementLIF", None)?;
    if b.mgmt.is_empty() {
        return Err(("managementLIF", "missing".into()));
    }
    b.data = dest(spec, "dataLIF", None)?;
    if b.data.is_empty() {
        b.data_discovered = Some(if b.driver.is_nas() {
            "no dataLIF: Trident uses the SVM's data LIFs".into()
        } else {
            "Trident discovers the iSCSI/NVMe data LIFs of the SVM at run time".into()
        });
    } else if !b.driver.is_nas() && (b.protocols.iscsi || b.protocols.nvme) {
        b.data_discovered = Some(
            "Trident may also log in to other iSCSI/NVMe data LIFs it discovers (selective LUN map)"
                .into(),
        );
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
    let (host, port) = if let Some(url) = spec.str("Endpoint") {
        url_host_port(&url)
            .ok_or_else(|| ("Endpoint", "not an http(s) URL with a host".to_string()))?
    } else {
        let secret = spec.obj("credentials").and_then(|c| c.str("name"));
        if let Some(hp) = secret.as_ref().and_then(|s| secrets.get(s)) {
            hp.clone()
        } else {
            b.notes.push(format!(
                "Endpoint is in Secret `{}`, not among the sources: the management address is unknown",
                secret.unwrap_or_default()
            ));
            (String::new(), 443)
        }
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
    b.data_discovered = Some("Trident discovers the array's iSCSI target portals at run time (hostDataIP is the node's own address)".into());
    Ok(())
}
