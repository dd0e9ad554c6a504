//! The addresses Trident mounts a volume with, which a backend definition often cannot name:
//! the data LIF Trident chose, iSCSI portals and NVMe LIFs discovered at publish time, and
//! ANF/GCNV mount targets.
//!
//! Two places hold them, per Trident's code:
//! - a TridentVolume's `config.accessInformation` (`storage/volume.go` VolumeConfig.AccessInfo,
//!   `utils/models/types.go` VolumeAccessInfo): `nfsServerIp` and `smbServer`, set when the
//!   volume is created (`ontap_nas.go` CreateFollowup; `azure_anf.go` and `gcp_gcnv.go` from the
//!   mount targets), and on older volumes `iscsiTargetPortal`, `iscsiPortals`, `nvmeTargetIPs`;
//! - a VolumeAttachment's `status.attachmentMetadata`: the CSI publish context Trident's
//!   ControllerPublishVolume returns for this node (`frontend/csi/controller_server.go`):
//!   `nfsServerIp`, `smbServer`?, `nvmeTargetIPs` (comma-separated), and the iSCSI portals as
//!   `iscsiTargetPortalCount` with `p1`..`pN` (`frontend/csi/utils.go`, stashIscsiTargetPortals).
//!   For ontap-san the portals live only here.
//!
//! The cluster source passes only the volumes published to this node (TridentVolumePublication
//! `nodeID`, VolumeAttachment `spec.nodeName`); a file may hold any.
use super::{Dest, endpoint, files::Obj};

/// How a published address is used: which protocol's ports it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Nfs,
    Smb,
    Iscsi,
    Nvme,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Nfs => "NFS",
            Access::Smb => "SMB",
            Access::Iscsi => "iSCSI",
            Access::Nvme => "NVMe/TCP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The object, as `tridentvolume/trident/pvc-1` (or a file's origin).
    pub origin: String,
    /// The Trident volume (the PV's name).
    pub volume: String,
    pub backend_uuid: Option<String>,
    pub access: Access,
    /// The address, with the field it came from.
    pub dest: Dest,
    /// The volume's own mount options, when its access information names them.
    pub mount_options: Option<String>,
}

/// Trident's CSI driver name: a VolumeAttachment of another attacher is not Trident's.
const ATTACHER: &str = "csi.trident.netapp.io";

/// The addresses of a TridentVolume. Problems are warnings naming the object and field.
pub(super) fn trident_volume(
    top: &Obj<'_>,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Vec<Published> {
    let Some(config) = top.obj("config") else {
        warnings.push(format!(
            "{origin}: TridentVolume without config; its addresses are unknown"
        ));
        return Vec::new();
    };
    let volume = top
        .obj("metadata")
        .and_then(|m| m.str("name"))
        .or_else(|| config.str("name"))
        .unwrap_or_else(|| origin.to_string());
    let Some(info) = config.obj("accessInformation") else {
        return Vec::new();
    };
    let mut r = Reader {
        origin,
        volume,
        backend_uuid: top.str("backendUUID"),
        mount_options: info.str("mountOptions").filter(|o| !o.trim().is_empty()),
        out: Vec::new(),
        warnings,
    };
    let f = "config.accessInformation";
    for (key, access, port) in [
        ("nfsServerIp", Access::Nfs, None),
        ("smbServer", Access::Smb, None),
        ("iscsiTargetPortal", Access::Iscsi, Some(3260)),
    ] {
        if let Some(v) = info.str(key) {
            r.add(&v, &format!("{f}.{key}"), access, port);
        }
    }
    for (key, access, port) in [
        ("iscsiPortals", Access::Iscsi, Some(3260)),
        ("nvmeTargetIPs", Access::Nvme, None),
    ] {
        for (i, v) in info.strs(key).iter().enumerate() {
            r.add(v, &format!("{f}.{key}[{i}]"), access, port);
        }
    }
    r.out
}

/// The addresses in a VolumeAttachment's publish context, when Trident attached it.
pub(super) fn volume_attachment(
    top: &Obj<'_>,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Vec<Published> {
    let spec = top.obj("spec");
    if spec.as_ref().and_then(|s| s.str("attacher")).as_deref() != Some(ATTACHER) {
        return Vec::new();
    }
    let Some(meta) = top.obj("status").and_then(|s| s.obj("attachmentMetadata")) else {
        return Vec::new();
    };
    let volume = spec
        .and_then(|s| s.obj("source"))
        .and_then(|s| s.str("persistentVolumeName"))
        .unwrap_or_else(|| origin.to_string());
    let mut r = Reader {
        origin,
        volume,
        backend_uuid: meta.str("backendUUID"),
        mount_options: meta.str("mountOptions").filter(|o| !o.trim().is_empty()),
        out: Vec::new(),
        warnings,
    };
    let f = "status.attachmentMetadata";
    for (key, access) in [("nfsServerIp", Access::Nfs), ("smbServer", Access::Smb)] {
        if let Some(v) = meta.str(key) {
            r.add(&v, &format!("{f}.{key}"), access, None);
        }
    }
    if let Some(v) = meta.str("nvmeTargetIPs") {
        for (i, ip) in v.split(',').filter(|s| !s.trim().is_empty()).enumerate() {
            r.add(ip, &format!("{f}.nvmeTargetIPs[{i}]"), Access::Nvme, None);
        }
    }
    if let Some(n) = meta.str("iscsiTargetPortalCount") {
        match n.trim().parse::<u32>() {
            Ok(n) => {
                for i in 1..=n.min(64) {
                    let key = format!("p{i}");
                    match meta.str(&key) {
                        Some(v) => r.add(&v, &format!("{f}.{key}"), Access::Iscsi, Some(3260)),
                        None => r.warnings.push(format!(
                            "{origin}: {f}: iscsiTargetPortalCount is {n} but {key} is missing"
                        )),
                    }
                }
            }
            Err(_) => r.warnings.push(format!(
                "{origin}: {f}.iscsiTargetPortalCount is not a number"
            )),
        }
    }
    r.out
}

struct Reader<'w> {
    origin: &'w str,
    volume: String,
    backend_uuid: Option<String>,
    mount_options: Option<String>,
    out: Vec<Published>,
    warnings: &'w mut Vec<String>,
}

impl Reader<'_> {
    fn add(&mut self, value: &str, field: &str, access: Access, port: Option<u16>) {
        if value.trim().is_empty() {
            return;
        }
        match endpoint(value, field, port) {
            Ok(dests) => {
                for dest in dests {
                    if !self
                        .out
                        .iter()
                        .any(|p| p.access == access && p.dest.net == dest.net)
                    {
                        self.out.push(Published {
                            origin: self.origin.to_string(),
                            volume: self.volume.clone(),
                            backend_uuid: self.backend_uuid.clone(),
                            access,
                            dest,
                            mount_options: self.mount_options.clone(),
                        });
                    }
                }
            }
            Err(why) => self.warnings.push(format!(
                "{}: {field}: {why}; that address is not allowed",
                self.origin
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> (Vec<Published>, Vec<String>) {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let top = Obj(v.as_mapping().unwrap());
        let mut w = Vec::new();
        let out = match top.str("kind").as_deref() {
            Some("TridentVolume") => trident_volume(&top, "tridentvolume/trident/pvc-1", &mut w),
            _ => volume_attachment(&top, "volumeattachment/csi-1", &mut w),
        };
        (out, w)
    }

    #[test]
    fn a_volumes_access_information() {
        let (p, w) = read(
            "kind: TridentVolume\nmetadata: {name: pvc-1}\nbackendUUID: u-1\nconfig:\n  name: pvc-1\n  \
             accessInformation:\n    nfsServerIp: 192.0.2.20\n    nfsPath: /trident_pvc_1\n    \
             mountOptions: nfsvers=4.1\n    iscsiTargetPortal: '192.0.2.30:3260'\n    \
             iscsiPortals: ['192.0.2.31:3260', '[2001:db8::31]:3260']\n    nvmeTargetIPs: [192.0.2.40]\n",
        );
        assert!(w.is_empty(), "{w:?}");
        let got: Vec<(Access, String, Option<u16>)> = p
            .iter()
            .map(|p| (p.access, p.dest.net.to_string(), p.dest.port))
            .collect();
        assert_eq!(
            got,
            [
                (Access::Nfs, "192.0.2.20/32".into(), None),
                (Access::Iscsi, "192.0.2.30/32".into(), Some(3260)),
                (Access::Iscsi, "192.0.2.31/32".into(), Some(3260)),
                (Access::Iscsi, "2001:db8::31/128".into(), Some(3260)),
                (Access::Nvme, "192.0.2.40/32".into(), None),
            ]
        );
        assert_eq!(p[0].backend_uuid.as_deref(), Some("u-1"));
        assert_eq!(p[0].mount_options.as_deref(), Some("nfsvers=4.1"));
        assert_eq!(p[0].dest.field, "config.accessInformation.nfsServerIp");
        assert_eq!(p[2].dest.field, "config.accessInformation.iscsiPortals[0]");
    }

    #[test]
    fn a_publish_context_of_tridents_attacher() {
        let (p, w) = read(
            "kind: VolumeAttachment\nmetadata: {name: csi-1}\nspec:\n  attacher: csi.trident.netapp.io\n  \
             nodeName: node-1\n  source: {persistentVolumeName: pvc-2}\nstatus:\n  attached: true\n  \
             attachmentMetadata:\n    iscsiTargetPortalCount: '3'\n    p1: '192.0.2.50:3260'\n    \
             p2: '192.0.2.51'\n    nvmeTargetIPs: '192.0.2.60,192.0.2.61'\n",
        );
        let got: Vec<(Access, String)> = p
            .iter()
            .map(|p| (p.access, p.dest.net.addr().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (Access::Nvme, "192.0.2.60".into()),
                (Access::Nvme, "192.0.2.61".into()),
                (Access::Iscsi, "192.0.2.50".into()),
                (Access::Iscsi, "192.0.2.51".into()),
            ]
        );
        assert_eq!(p[0].volume, "pvc-2");
        assert!(w[0].contains("p3 is missing"), "{w:?}");
        let (other, _) = read(
            "kind: VolumeAttachment\nspec: {attacher: ebs.csi.aws.com}\nstatus: {attachmentMetadata: {p1: 192.0.2.1}}\n",
        );
        assert!(other.is_empty(), "another driver's attachment");
    }

    #[test]
    fn a_bad_address_is_a_warning_naming_the_field() {
        let (p, w) = read(
            "kind: TridentVolume\nmetadata: {name: pvc-3}\nconfig:\n  accessInformation:\n    \
             nfsServerIp: 'not an address!'\n    smbServer: 192.0.2.70\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].access, Access::Smb);
        assert!(
            w[0].starts_with("tridentvolume/trident/pvc-1: config.accessInformation.nfsServerIp:"),
            "{w:?}"
        );
    }
}
