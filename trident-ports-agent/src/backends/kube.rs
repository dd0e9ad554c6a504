//! The Kubernetes objects that decide how Trident mounts, besides the backends: StorageClasses
//! whose provisioner is Trident's, and PersistentVolumes of Trident's CSI driver. Their
//! `mountOptions` replace a backend's `nfsMountOptions` (see `nfs`), so the NFS versions a node
//! may use are those of every class and volume that can land on a backend.
//!
//! Which backends a class can select follows Trident's `storage_class/storage_class.go`
//! (Matches) and `frontend/csi/controller_helpers/kubernetes/plugin.go` (processStorageClass):
//! `additionalStoragePools` (or `requiredStorage`, or the `trident.netapp.io/additionalStoragePools`
//! annotation) adds backends by name; `backendType` must equal the driver; `storagePools` narrows
//! to backends whose names match. Names are anchored regular expressions, as in Trident's
//! regexMatcher. What a file cannot show is taken as a match, so that a plan allows at least
//! what the class can use: pool names and pool labels (`selector`), other attributes, and
//! `excludeStoragePools` (which excludes pools, not backends).
use regex::Regex;

use super::{Backend, files::Obj};

/// Trident's CSI provisioner and driver name; `netapp.io/trident` is the pre-CSI provisioner.
const PROVISIONERS: [&str; 2] = ["csi.trident.netapp.io", "netapp.io/trident"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageClass {
    pub name: String,
    pub origin: String,
    /// `mountOptions`, joined with commas; `None` when the class has none (the backend's apply).
    pub mount_options: Option<String>,
    pub selection: Selection,
}

/// How a class picks backends, as far as files can tell.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selection {
    pub backend_type: Option<String>,
    /// Backend-name patterns of `storagePools`; empty: any backend.
    pub pools: Vec<String>,
    /// Backend-name patterns of `additionalStoragePools`: these match whatever else is asked.
    pub additional: Vec<String>,
}

impl Selection {
    pub fn selects(&self, b: &Backend) -> bool {
        if self.additional.iter().any(|p| name_matches(p, &b.name)) {
            return true;
        }
        if self
            .backend_type
            .as_ref()
            .is_some_and(|t| !t.eq_ignore_ascii_case(b.driver.name()))
        {
            return false;
        }
        self.pools.is_empty() || self.pools.iter().any(|p| name_matches(p, &b.name))
    }
}

/// Trident anchors backend-name patterns (`^...$`); a pattern that does not compile matches,
/// so that a plan never drops what the class might use.
fn name_matches(pattern: &str, name: &str) -> bool {
    let anchored = format!(
        "{}{pattern}{}",
        if pattern.starts_with('^') { "" } else { "^" },
        if pattern.ends_with('$') { "" } else { "$" }
    );
    Regex::new(&anchored).map_or(true, |r| r.is_match(name))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub origin: String,
    pub mount_options: Option<String>,
    pub class: Option<String>,
    /// `spec.csi.volumeAttributes.backendUUID`: the backend Trident placed the volume on.
    pub backend_uuid: Option<String>,
}

/// The class in `top`, if it is a Trident StorageClass. Problems are notes: a class is never a
/// reason to stop.
pub(super) fn storage_class(
    top: &Obj<'_>,
    origin: &str,
    notes: &mut Vec<String>,
) -> Option<StorageClass> {
    let provisioner = top.str("provisioner")?;
    if !PROVISIONERS.contains(&provisioner.as_str()) {
        return None;
    }
    let name = top
        .obj("metadata")
        .and_then(|m| m.str("name"))
        .unwrap_or_else(|| origin.to_string());
    let mut selection = Selection::default();
    if let Some(params) = top.obj("parameters") {
        for (k, v) in params.0 {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            // Trident drops a `prefix/` from parameter names (removeSCParameterPrefix).
            let key = k.rsplit_once('/').map_or(k, |(_, k)| k);
            match key {
                "backendType" => selection.backend_type = Some(v.trim().to_string()),
                "storagePools" => selection.pools = backend_patterns(v, &name, key, notes),
                "additionalStoragePools" | "requiredStorage" => {
                    selection.additional = backend_patterns(v, &name, key, notes);
                }
                _ => {}
            }
        }
    }
    if let Some(v) = top
        .obj("metadata")
        .and_then(|m| m.obj("annotations"))
        .and_then(|a| a.str("trident.netapp.io/additionalStoragePools"))
    {
        selection.additional = backend_patterns(&v, &name, "additionalStoragePools", notes);
    }
    Some(StorageClass {
        mount_options: mount_options(top.get("mountOptions")),
        name,
        origin: origin.to_string(),
        selection,
    })
}

/// The volume in `top`, if it is a PersistentVolume of Trident's CSI driver.
pub(super) fn persistent_volume(top: &Obj<'_>, origin: &str) -> Option<Volume> {
    let spec = top.obj("spec")?;
    let csi = spec.obj("csi")?;
    if csi.str("driver").as_deref() != Some(PROVISIONERS[0]) {
        return None;
    }
    Some(Volume {
        name: top
            .obj("metadata")
            .and_then(|m| m.str("name"))
            .unwrap_or_else(|| origin.to_string()),
        origin: origin.to_string(),
        mount_options: mount_options(spec.get("mountOptions")),
        class: spec.str("storageClassName"),
        backend_uuid: csi
            .obj("volumeAttributes")
            .and_then(|a| a.str("backendUUID")),
    })
}

fn mount_options(v: Option<&serde_yaml::Value>) -> Option<String> {
    let opts: Vec<&str> = v?
        .as_sequence()?
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    (!opts.is_empty()).then(|| opts.join(","))
}

/// The backend patterns of `backend1:pool1,pool2;backend2:pool3`
/// (`storage_attribute/request.go`, CreateBackendStoragePoolsMapFromEncodedString). A value
/// Trident cannot read selects any backend, with a note.
fn backend_patterns(v: &str, class: &str, key: &str, notes: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for part in v.split(';') {
        match part.split_once(':') {
            Some((b, pools)) if !b.trim().is_empty() && !pools.trim().is_empty() => {
                let b = b.trim();
                if Regex::new(b).is_err() {
                    notes.push(format!(
                        "storageclass/{class}: {key}: `{b}` is not a regular expression; taken as any backend"
                    ));
                    return Vec::new();
                }
                out.push(b.to_string());
            }
            _ => {
                notes.push(format!(
                    "storageclass/{class}: {key}: `{v}` is not `backend:pool,...;...`; taken as any backend"
                ));
                return Vec::new();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{Driver, Protocols};

    fn backend(name: &str, driver: Driver) -> Backend {
        Backend {
            name: name.into(),
            driver,
            origin: String::new(),
            uuid: None,
            resolved: false,
            mgmt_kind: None,
            mgmt: vec![],
            data: vec![],
            protocols: Protocols::default(),
            nfs_options: None,
            kerberos: false,
            topologies: None,
            data_discovered: None,
            notes: vec![],
        }
    }

    fn class(yaml: &str) -> (Option<StorageClass>, Vec<String>) {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut notes = Vec::new();
        let sc = storage_class(&Obj(v.as_mapping().unwrap()), "sc.yaml", &mut notes);
        (sc, notes)
    }

    #[test]
    fn classes_select_backends_as_trident_does() {
        let nas = backend("nas-gold", Driver::OntapNas);
        let eco = backend("nas-eco", Driver::OntapNasEconomy);
        let (sc, _) = class(
            "kind: StorageClass\nmetadata: {name: gold}\nprovisioner: csi.trident.netapp.io\n\
             mountOptions: [nfsvers=3, hard]\nparameters: {backendType: ontap-nas}\n",
        );
        let sc = sc.unwrap();
        assert_eq!(sc.mount_options.as_deref(), Some("nfsvers=3,hard"));
        assert!(sc.selection.selects(&nas));
        assert!(!sc.selection.selects(&eco), "another driver");

        let (sc, _) = class(
            "kind: StorageClass\nmetadata: {name: pick}\nprovisioner: csi.trident.netapp.io\n\
             parameters: {trident.netapp.io/storagePools: 'nas-g.*:aggr1,aggr2'}\n",
        );
        let sel = sc.unwrap().selection;
        assert!(sel.selects(&nas) && !sel.selects(&eco), "anchored pattern");

        let (sc, _) = class(
            "kind: StorageClass\nmetadata: {name: plus}\nprovisioner: csi.trident.netapp.io\n\
             parameters: {backendType: ontap-nas, additionalStoragePools: 'nas-eco:.*'}\n",
        );
        assert!(
            sc.unwrap().selection.selects(&eco),
            "additional pools match by themselves"
        );
    }

    #[test]
    fn what_files_cannot_show_selects_and_other_provisioners_are_not_tridents() {
        let nas = backend("nas", Driver::OntapNas);
        let (sc, notes) = class(
            "kind: StorageClass\nmetadata: {name: odd}\nprovisioner: csi.trident.netapp.io\n\
             parameters: {storagePools: 'no-colon', selector: 'performance=gold'}\n",
        );
        assert!(sc.unwrap().selection.selects(&nas));
        assert!(
            notes[0].contains("storageclass/odd: storagePools"),
            "{notes:?}"
        );
        let (sc, notes) = class(
            "kind: StorageClass\nmetadata: {name: bad}\nprovisioner: csi.trident.netapp.io\n\
             parameters: {storagePools: '(nas:pool'}\n",
        );
        assert!(sc.unwrap().selection.selects(&nas));
        assert!(notes[0].contains("not a regular expression"), "{notes:?}");
        let (sc, _) =
            class("kind: StorageClass\nmetadata: {name: ebs}\nprovisioner: ebs.csi.aws.com\n");
        assert!(sc.is_none());
    }

    #[test]
    fn volumes_of_tridents_driver() {
        let v: serde_yaml::Value = serde_yaml::from_str(
            "kind: PersistentVolume\nmetadata: {name: pvc-1}\nspec:\n  storageClassName: gold\n  \
             mountOptions: [vers=4.0]\n  csi: {driver: csi.trident.netapp.io, volumeHandle: pvc-1, \
             volumeAttributes: {backendUUID: 1234, protocol: file}}\n",
        )
        .unwrap();
        let pv = persistent_volume(&Obj(v.as_mapping().unwrap()), "pv.yaml").unwrap();
        assert_eq!(pv.mount_options.as_deref(), Some("vers=4.0"));
        assert_eq!(pv.class.as_deref(), Some("gold"));
        assert_eq!(pv.backend_uuid.as_deref(), Some("1234"));
        let other: serde_yaml::Value = serde_yaml::from_str(
            "kind: PersistentVolume\nmetadata: {name: x}\nspec: {csi: {driver: ebs.csi.aws.com}}\n",
        )
        .unwrap();
        assert!(persistent_volume(&Obj(other.as_mapping().unwrap()), "x").is_none());
    }
}
