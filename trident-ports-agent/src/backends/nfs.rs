//! NFS mount options, read the way the node's kernel client reads them (nfs(5)): which NFS
//! version a mount asks for, and the options that move it to other ports or transports.
//!
//! Trident passes the options to `mount -t nfs` unchanged: a StorageClass's `mountOptions`
//! (copied into the PV) replace the backend's `nfsMountOptions` whole
//! (`frontend/csi/controller_server.go`, ControllerPublishVolume; `ontap_nas.go` and
//! `azure_anf.go` let a volume's options win over the backend's). Trident's own reading
//! (`utils/nfs/utils.go`, GetNFSVersionFromMountOptions) knows `nfsvers=`/`vers=` and
//! `minorversion=`; the kernel also takes `v3`, `v4` and `v4.N`, so they count here too.

/// The NFS version a mount asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Version {
    /// None given: the client negotiates, from NFSv4.2 down to NFSv3.
    #[default]
    Any,
    V3,
    /// `minor` when the options pin one (`vers=4.1`, `v4.0`, `minorversion=0`).
    V4 {
        minor: Option<u8>,
    },
}

/// What the options of one mount say about its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mount {
    pub version: Version,
    /// `port=`: the server's NFS port when it is not the default (0 means the default).
    pub port: Option<u16>,
    /// `mountport=`: the server's mountd port (NFSv3).
    pub mountport: Option<u16>,
    /// `proto=rdma` or `rdma`: NFS over RDMA (port 20049).
    pub rdma: bool,
    /// `sec=krb5`, `krb5i` or `krb5p`: the node needs the directory's Kerberos.
    pub kerberos: bool,
}

impl Mount {
    /// Parses a mount-options string: an optional leading `-o `, comma-separated options; for
    /// the version the last option wins, as in the kernel.
    pub fn parse(opts: &str) -> Result<Self, String> {
        let opts = opts.trim();
        let opts = opts.strip_prefix("-o").unwrap_or(opts).trim();
        let mut m = Mount::default();
        let mut minor = None;
        for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, v) = match o.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (o.to_ascii_lowercase(), None),
            };
            match (k.as_str(), v) {
                ("nfsvers" | "vers", Some(v)) => m.version = version(v, o)?,
                ("minorversion", Some(v)) => {
                    minor = Some(
                        v.parse::<u8>()
                            .map_err(|_| format!("`{o}` is not a minor version"))?,
                    );
                }
                (flag, None)
                    if flag.len() > 1
                        && flag.starts_with('v')
                        && flag.as_bytes()[1].is_ascii_digit() =>
                {
                    m.version = version(&flag[1..], o)?;
                }
                ("port", Some(v)) => m.port = Some(port(v, o)?).filter(|p| *p != 0),
                ("mountport", Some(v)) => m.mountport = Some(port(v, o)?).filter(|p| *p != 0),
                ("proto", Some(v)) => {
                    m.rdma = v.eq_ignore_ascii_case("rdma") || v.eq_ignore_ascii_case("rdma6");
                }
                ("rdma", None) => m.rdma = true,
                ("sec", Some(v)) => {
                    m.kerberos = v
                        .split(':')
                        .any(|s| s.trim().to_ascii_lowercase().starts_with("krb5"));
                }
                _ => {}
            }
        }
        if let (Version::V4 { minor: None }, Some(n)) = (m.version, minor) {
            m.version = Version::V4 { minor: Some(n) };
        }
        Ok(m)
    }

    /// May use NFSv3 (and with it rpcbind, mountd, NLM, NSM and rquotad).
    pub fn v3(&self) -> bool {
        matches!(self.version, Version::Any | Version::V3)
    }

    /// May use NFSv4.
    pub fn v4(&self) -> bool {
        matches!(self.version, Version::Any | Version::V4 { .. })
    }

    /// NFSv4.0, whose server opens a callback connection to the client (RFC 7530, 10.2).
    pub fn v40(&self) -> bool {
        self.version == (Version::V4 { minor: Some(0) })
    }

    pub fn pinned(&self) -> bool {
        self.version != Version::Any
    }
}

fn version(v: &str, option: &str) -> Result<Version, String> {
    let (major, minor) = match v.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    let minor = minor
        .map(|m| {
            m.parse::<u8>()
                .map_err(|_| format!("`{option}` is not an NFS version"))
        })
        .transpose()?;
    match major {
        "3" if minor.is_none() => Ok(Version::V3),
        "4" => Ok(Version::V4 { minor }),
        _ => Err(format!("`{option}` is not NFS version 3 or 4")),
    }
}

fn port(v: &str, option: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .map_err(|_| format!("`{option}` is not a port"))
}

/// The NFS major version a mount-options string pins, if it pins one.
pub fn nfs_version(opts: &str) -> Result<Option<u8>, String> {
    Ok(match Mount::parse(opts)?.version {
        Version::Any => None,
        Version::V3 => Some(3),
        Version::V4 { .. } => Some(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_versions_as_the_kernel_reads_them() {
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
        assert!(nfs_version("v2").is_err());
        assert_eq!(nfs_version("v3,hard").unwrap(), Some(3));
        assert_eq!(nfs_version("v4.1").unwrap(), Some(4));
        assert_eq!(nfs_version("").unwrap(), None);
    }

    #[test]
    fn minor_versions_and_nfsv40() {
        let m = |s| Mount::parse(s).unwrap();
        assert!(m("vers=4.0").v40());
        assert!(m("vers=4,minorversion=0").v40());
        assert!(m("v4.0").v40());
        assert!(!m("vers=4").v40(), "negotiated: 4.2, 4.1, then 4.0");
        assert!(!m("nfsvers=4.1").v40());
        assert!(!m("").v40());
        assert!(m("").v3() && m("").v4() && !m("").pinned());
        assert!(m("nfsvers=3").v3() && !m("nfsvers=3").v4());
        assert!(!m("nfsvers=4.2").v3());
    }

    #[test]
    fn ports_transports_and_security() {
        let m = Mount::parse("nfsvers=3,port=2050,mountport=20048,sec=sys").unwrap();
        assert_eq!(
            (m.port, m.mountport, m.kerberos),
            (Some(2050), Some(20048), false)
        );
        assert_eq!(
            Mount::parse("port=0").unwrap().port,
            None,
            "0 means the default"
        );
        assert!(Mount::parse("proto=rdma,port=20049").unwrap().rdma);
        assert!(Mount::parse("rdma").unwrap().rdma);
        assert!(!Mount::parse("proto=tcp").unwrap().rdma);
        assert!(Mount::parse("sec=krb5p").unwrap().kerberos);
        assert!(Mount::parse("sec=sys:krb5i").unwrap().kerberos);
        assert!(Mount::parse("port=http").is_err());
        assert!(Mount::parse("minorversion=x").is_err());
    }
}
