//! The objects the cluster source watches, and what of each it keeps: only what the backend
//! reader and the node facts use (a Node's image list or a PV's status would only cost memory
//! and wake the reconciler for nothing). Secrets keep the host and port of their `EndPoint`.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use kube::{
    api::{ApiResource, GroupVersionKind},
    core::DynamicObject,
};
use serde_json::{Map, Value, json};

use super::NodeFacts;

/// Trident's CSI driver and the label of its controller pod
/// (`operator/controllers/orchestrator/installer/config.go`, TridentCSILabelValue).
pub(super) const TRIDENT_CSI: &str = "csi.trident.netapp.io";
pub(super) const CONTROLLER_LABEL: &str = "app=controller.csi.trident.netapp.io";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    TridentBackendConfig,
    TridentBackend,
    TridentVolumePublication,
    TridentVolume,
    StorageClass,
    PersistentVolume,
    VolumeAttachment,
    Node,
    Pod,
    Secret,
}

/// Where a kind lives: in the Trident namespace, or cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Trident,
    Cluster,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::TridentBackendConfig,
        Kind::TridentBackend,
        Kind::TridentVolumePublication,
        Kind::TridentVolume,
        Kind::StorageClass,
        Kind::PersistentVolume,
        Kind::VolumeAttachment,
        Kind::Node,
        Kind::Pod,
        Kind::Secret,
    ];

    /// (group, version, kind, plural, scope)
    fn parts(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Scope,
    ) {
        match self {
            Kind::TridentBackendConfig => (
                "trident.netapp.io",
                "v1",
                "TridentBackendConfig",
                "tridentbackendconfigs",
                Scope::Trident,
            ),
            Kind::TridentBackend => (
                "trident.netapp.io",
                "v1",
                "TridentBackend",
                "tridentbackends",
                Scope::Trident,
            ),
            Kind::TridentVolumePublication => (
                "trident.netapp.io",
                "v1",
                "TridentVolumePublication",
                "tridentvolumepublications",
                Scope::Trident,
            ),
            Kind::TridentVolume => (
                "trident.netapp.io",
                "v1",
                "TridentVolume",
                "tridentvolumes",
                Scope::Trident,
            ),
            Kind::StorageClass => (
                "storage.k8s.io",
                "v1",
                "StorageClass",
                "storageclasses",
                Scope::Cluster,
            ),
            Kind::PersistentVolume => (
                "",
                "v1",
                "PersistentVolume",
                "persistentvolumes",
                Scope::Cluster,
            ),
            Kind::VolumeAttachment => (
                "storage.k8s.io",
                "v1",
                "VolumeAttachment",
                "volumeattachments",
                Scope::Cluster,
            ),
            Kind::Node => ("", "v1", "Node", "nodes", Scope::Cluster),
            Kind::Pod => ("", "v1", "Pod", "pods", Scope::Trident),
            Kind::Secret => ("", "v1", "Secret", "secrets", Scope::Trident),
        }
    }

    pub fn name(self) -> &'static str {
        self.parts().2
    }

    pub(super) fn scope(self) -> Scope {
        self.parts().4
    }

    /// `tridentbackendconfigs.trident.netapp.io`, as RBAC rules and errors name it.
    pub fn resource(self) -> String {
        let (group, _, _, plural, _) = self.parts();
        if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        }
    }

    pub(super) fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural, _) = self.parts();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }
}

/// An object's key in the source's state: kind, namespace (empty when cluster-scoped), name.
pub(super) type Key = (Kind, String, String);

pub(super) fn key(kind: Kind, o: &DynamicObject) -> Key {
    (
        kind,
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// `tridentbackendconfig/trident/nas` or `storageclass/gold`: where a plan entry came from.
pub(super) fn origin(k: &Key) -> String {
    let kind = k.0.name().to_ascii_lowercase();
    if k.1.is_empty() {
        format!("{kind}/{}", k.2)
    } else {
        format!("{kind}/{}/{}", k.1, k.2)
    }
}

/// What is kept of `o`, as a document the backend reader takes (with its kind and apiVersion,
/// which list responses leave out); `None` when the object is not Trident's and says nothing.
pub(super) fn trim(kind: Kind, o: &DynamicObject) -> Option<Value> {
    let ar = kind.api_resource();
    let mut meta = Map::new();
    meta.insert("name".into(), json!(o.metadata.name));
    if let Some(ns) = &o.metadata.namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    let d = &o.data;
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(ar.api_version));
    out.insert("kind".into(), json!(ar.kind));
    let pick = |out: &mut Map<String, Value>, keys: &[&str]| {
        for k in keys {
            if let Some(v) = d.get(*k) {
                out.insert((*k).to_string(), v.clone());
            }
        }
    };
    match kind {
        Kind::TridentBackendConfig => {
            pick(&mut out, &["spec"]);
            if let Some(info) = d.pointer("/status/backendInfo") {
                out.insert("status".into(), json!({ "backendInfo": info }));
            }
        }
        Kind::TridentBackend => pick(&mut out, &["backendName", "backendUUID", "config"]),
        Kind::TridentVolumePublication => pick(&mut out, &["volumeID", "nodeID", "backendUUID"]),
        Kind::TridentVolume => {
            pick(&mut out, &["backendUUID"]);
            if let Some(info) = d.pointer("/config/accessInformation") {
                out.insert(
                    "config".into(),
                    json!({ "name": d.pointer("/config/name"), "accessInformation": access(info) }),
                );
            }
        }
        Kind::StorageClass => {
            let p = d.get("provisioner").and_then(Value::as_str)?;
            if !["csi.trident.netapp.io", "netapp.io/trident"].contains(&p) {
                return None;
            }
            pick(&mut out, &["provisioner", "parameters", "mountOptions"]);
            if let Some(a) = &o.metadata.annotations {
                let ours: BTreeMap<&String, &String> = a
                    .iter()
                    .filter(|(k, _)| k.starts_with("trident.netapp.io/"))
                    .collect();
                meta.insert("annotations".into(), json!(ours));
            }
        }
        Kind::PersistentVolume => {
            let csi = d.pointer("/spec/csi")?;
            if csi.get("driver").and_then(Value::as_str) != Some(TRIDENT_CSI) {
                return None;
            }
            out.insert(
                "spec".into(),
                json!({
                    "storageClassName": d.pointer("/spec/storageClassName"),
                    "mountOptions": d.pointer("/spec/mountOptions"),
                    "csi": {
                        "driver": TRIDENT_CSI,
                        "volumeAttributes": {
                            "backendUUID": csi.pointer("/volumeAttributes/backendUUID"),
                        },
                    },
                }),
            );
        }
        Kind::VolumeAttachment => {
            if d.pointer("/spec/attacher").and_then(Value::as_str) != Some(TRIDENT_CSI) {
                return None;
            }
            pick(&mut out, &["spec"]);
            if let Some(m) = d.pointer("/status/attachmentMetadata") {
                out.insert("status".into(), json!({ "attachmentMetadata": m }));
            }
        }
        Kind::Node => {
            meta.insert("labels".into(), json!(o.metadata.labels));
            out.insert(
                "status".into(),
                json!({ "addresses": d.pointer("/status/addresses") }),
            );
        }
        Kind::Pod => {
            out.insert(
                "spec".into(),
                json!({ "nodeName": d.pointer("/spec/nodeName"), "hostNetwork": d.pointer("/spec/hostNetwork") }),
            );
            out.insert(
                "status".into(),
                json!({
                    "phase": d.pointer("/status/phase"),
                    "podIP": d.pointer("/status/podIP"),
                    "podIPs": d.pointer("/status/podIPs"),
                }),
            );
        }
        Kind::Secret => {
            out.insert(
                "stringData".into(),
                json!({ "EndPoint": secret_endpoint(d)? }),
            );
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Some(Value::Object(out))
}

/// The access information without the CHAP secrets Trident may keep there.
fn access(info: &Value) -> Value {
    let mut m = info.as_object().cloned().unwrap_or_default();
    m.retain(|k, _| {
        [
            "nfsServerIp",
            "smbServer",
            "iscsiTargetPortal",
            "iscsiPortals",
            "nvmeTargetIPs",
            "mountOptions",
        ]
        .contains(&k.as_str())
    });
    Value::Object(m)
}

/// A SolidFire `EndPoint` as `https://host:port`: the credentials in it are dropped here, before
/// the object is kept, logged or saved.
fn secret_endpoint(d: &Value) -> Option<String> {
    let url = if let Some(s) = d.pointer("/stringData/EndPoint").and_then(Value::as_str) {
        s.to_string()
    } else {
        let b64 = d.pointer("/data/EndPoint").and_then(Value::as_str)?;
        String::from_utf8(base64_decode(b64)?).ok()?
    };
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("{scheme}://{hostport}"))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim().bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The node's facts from the kept objects of `node`.
pub(super) fn node_facts<'a>(
    node: &str,
    objects: impl Iterator<Item = (&'a Key, &'a Value)>,
) -> NodeFacts {
    let mut f = NodeFacts::default();
    let ip = |v: &Value| v.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok());
    for (k, v) in objects {
        match k.0 {
            Kind::Node if k.2 == node => {
                let labels = v
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                f.labels = Some(labels);
                for a in v
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let t = a.get("type").and_then(Value::as_str);
                    if matches!(t, Some("InternalIP" | "ExternalIP")) {
                        f.addresses
                            .extend(a.get("address").and_then(ip).map(IpNet::from));
                    }
                }
            }
            Kind::Pod if v.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node) => {
                let phase = v.pointer("/status/phase").and_then(Value::as_str);
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    continue;
                }
                let mut ips: BTreeSet<std::net::IpAddr> = v
                    .pointer("/status/podIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("ip").and_then(ip))
                    .collect();
                ips.extend(v.pointer("/status/podIP").and_then(ip));
                f.controller.extend(ips.into_iter().map(IpNet::from));
            }
            _ => {}
        }
    }
    f.addresses.sort();
    f.addresses.dedup();
    f.controller.sort();
    f.controller.dedup();
    f
}

/// The volumes published to `node`: TridentVolumePublications name them by `volumeID`.
pub(super) fn published_volumes<'a>(
    node: &str,
    objects: impl Iterator<Item = (&'a Key, &'a Value)>,
) -> BTreeSet<String> {
    objects
        .filter(|(k, v)| {
            k.0 == Kind::TridentVolumePublication
                && v.get("nodeID").and_then(Value::as_str) == Some(node)
        })
        .filter_map(|(_, v)| {
            v.get("volumeID")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn secrets_keep_only_the_endpoints_host_and_port() {
        let s = obj(json!({
            "metadata": {"name": "sf", "namespace": "trident"},
            "data": {"EndPoint": "aHR0cHM6Ly9hZG1pbjpodW50ZXIyQDE5Mi4wLjIuOTo0NDMvanNvbi1ycGMvOC4w"},
        }));
        let kept = trim(Kind::Secret, &s).unwrap();
        let text = kept.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("admin"),
            "{text}"
        );
        assert_eq!(kept["stringData"]["EndPoint"], "https://192.0.2.9:443");
    }

    #[test]
    fn only_tridents_classes_volumes_and_attachments_are_kept() {
        let sc = |p: &str| obj(json!({"metadata": {"name": "x"}, "provisioner": p}));
        assert!(trim(Kind::StorageClass, &sc("csi.trident.netapp.io")).is_some());
        assert!(trim(Kind::StorageClass, &sc("ebs.csi.aws.com")).is_none());
        let pv = obj(
            json!({"metadata": {"name": "pv"}, "spec": {"csi": {"driver": "ebs.csi.aws.com"}}}),
        );
        assert!(trim(Kind::PersistentVolume, &pv).is_none());
        let tv = obj(
            json!({"metadata": {"name": "pvc-1", "namespace": "trident"}, "backendUUID": "u",
            "config": {"name": "pvc-1", "accessInformation": {"nfsServerIp": "192.0.2.1", "iscsiTargetSecret": "s3cret"}}}),
        );
        let kept = trim(Kind::TridentVolume, &tv).unwrap();
        assert!(!kept.to_string().contains("s3cret"));
        assert_eq!(kept["kind"], "TridentVolume");
        assert_eq!(kept["apiVersion"], "trident.netapp.io/v1");
    }

    #[test]
    fn node_facts_come_from_this_nodes_objects() {
        let node = trim(
            Kind::Node,
            &obj(
                json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.7"},
                                         {"type": "Hostname", "address": "n1"}]}}),
            ),
        )
        .unwrap();
        let pod = |n: &str, ip: &str| {
            trim(
                Kind::Pod,
                &obj(json!({"metadata": {"name": "c", "namespace": "trident"}, "spec": {"nodeName": n},
                    "status": {"phase": "Running", "podIP": ip}})),
            )
            .unwrap()
        };
        let objects = [
            ((Kind::Node, String::new(), "n1".to_string()), node),
            (
                (Kind::Pod, "trident".into(), "c1".into()),
                pod("n1", "198.51.100.4"),
            ),
            (
                (Kind::Pod, "trident".into(), "c2".into()),
                pod("n2", "198.51.100.5"),
            ),
        ];
        let f = node_facts("n1", objects.iter().map(|(k, v)| (k, v)));
        assert_eq!(f.labels.unwrap()["topology.kubernetes.io/zone"], "z1");
        assert_eq!(f.addresses, ["192.0.2.7/32".parse::<IpNet>().unwrap()]);
        assert_eq!(f.controller, ["198.51.100.4/32".parse::<IpNet>().unwrap()]);
    }
}
