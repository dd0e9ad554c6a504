//! NVMe-oF controllers from sysfs: `class/nvme/nvme<N>/transport` (`tcp`, `rdma`, `fc`, `pcie`,
//! `loop`) and `address` (`traddr=192.0.2.2,trsvcid=4420,src_addr=...`). Only IP transports
//! talk to an address; local and fibre-channel controllers are not sessions here.
use std::net::IpAddr;

use super::{Session, Sessions, attr, class_entries};

pub(super) fn read(sys: &std::path::Path, out: &mut Sessions) {
    for ctrl in class_entries(sys, "nvme") {
        let name = ctrl
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(transport) = attr(&ctrl, "transport") else {
            out.notes
                .push(format!("NVMe {name} skipped: no transport (ending?)"));
            continue;
        };
        if !matches!(transport.as_str(), "tcp" | "rdma") {
            continue;
        }
        let address = attr(&ctrl, "address").unwrap_or_default();
        let field = |k: &str| {
            address
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix(k)?.strip_prefix('='))
        };
        match (
            field("traddr").and_then(|a| a.parse::<IpAddr>().ok()),
            field("trsvcid").and_then(|p| p.parse::<u16>().ok()),
        ) {
            (Some(addr), Some(port)) => out.sessions.push(Session::Nvme {
                controller: name,
                transport,
                address: addr,
                port,
            }),
            _ => out.notes.push(format!(
                "NVMe {name} skipped: address `{address}` has no traddr/trsvcid"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_controllers_with_their_address() {
        let sys = std::env::temp_dir().join(format!("tp-sys-nvme-{}", std::process::id()));
        for (n, transport, address) in [
            ("nvme0", "pcie", ""),
            (
                "nvme1",
                "tcp",
                "traddr=192.0.2.2,trsvcid=4420,src_addr=192.0.2.1",
            ),
            ("nvme2", "tcp", "traddr=somewhere"),
        ] {
            let d = sys.join("class/nvme").join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("transport"), format!("{transport}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{address}\n")).unwrap();
        }
        let mut s = Sessions::default();
        read(&sys, &mut s);
        assert_eq!(
            s.sessions,
            vec![Session::Nvme {
                controller: "nvme1".into(),
                transport: "tcp".into(),
                address: "192.0.2.2".parse().unwrap(),
                port: 4420,
            }]
        );
        assert!(s.notes[0].contains("nvme2"), "{s:?}");
        std::fs::remove_dir_all(&sys).unwrap();
    }
}
