//! iSCSI connections from sysfs: `class/iscsi_connection/connection<S>:<C>/` has the portal
//! (`persistent_address`, `persistent_port`: where the session logs in again after a failure;
//! `address`/`port` are the current ones); the session (`class/iscsi_session/session<S>/`) has
//! the target name.
use std::net::IpAddr;

use super::{Session, Sessions, attr, class_entries};

pub(super) fn read(sys: &std::path::Path, out: &mut Sessions) {
    for conn in class_entries(sys, "iscsi_connection") {
        let name = conn
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // connection<S>:<C> belongs to session<S>.
        let session = name
            .strip_prefix("connection")
            .and_then(|n| n.split(':').next())
            .map(|n| format!("session{n}"))
            .unwrap_or_default();
        let target = attr(
            &sys.join("class/iscsi_session").join(&session),
            "targetname",
        )
        .unwrap_or_else(|| "?".into());
        let mut portals = Vec::new();
        for (a, p) in [
            ("persistent_address", "persistent_port"),
            ("address", "port"),
        ] {
            if let (Some(addr), Some(port)) = (attr(&conn, a), attr(&conn, p)) {
                portals.push((addr, port));
            }
        }
        if portals.is_empty() {
            out.notes
                .push(format!("iSCSI {name} skipped: no address (ending?)"));
            continue;
        }
        for (addr, port) in portals {
            match (addr.parse::<IpAddr>(), port.parse::<u16>()) {
                (Ok(portal), Ok(port)) => out.sessions.push(Session::Iscsi {
                    session: session.clone(),
                    target: target.clone(),
                    portal,
                    port,
                }),
                _ => out.notes.push(format!(
                    "iSCSI {name} skipped: `{addr}`:`{port}` is not an address and port"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_with_their_portal_and_target() {
        let sys = std::env::temp_dir().join(format!("tp-sys-iscsi-{}", std::process::id()));
        let conn = sys.join("class/iscsi_connection/connection1:0");
        let sess = sys.join("class/iscsi_session/session1");
        std::fs::create_dir_all(&conn).unwrap();
        std::fs::create_dir_all(&sess).unwrap();
        std::fs::write(conn.join("persistent_address"), "192.0.2.2\n").unwrap();
        std::fs::write(conn.join("persistent_port"), "3260\n").unwrap();
        std::fs::write(conn.join("address"), "192.0.2.2\n").unwrap();
        std::fs::write(conn.join("port"), "3260\n").unwrap();
        std::fs::write(sess.join("targetname"), "iqn.1992-08.com.netapp:sn.1\n").unwrap();
        // Mid-teardown: the directory is there, its attributes are not.
        std::fs::create_dir_all(sys.join("class/iscsi_connection/connection2:0")).unwrap();
        let mut s = Sessions::default();
        read(&sys, &mut s);
        assert_eq!(
            s.sessions[0],
            Session::Iscsi {
                session: "session1".into(),
                target: "iqn.1992-08.com.netapp:sn.1".into(),
                portal: "192.0.2.2".parse().unwrap(),
                port: 3260,
            }
        );
        assert!(s.notes.iter().any(|n| n.contains("connection2:0")), "{s:?}");
        std::fs::remove_dir_all(&sys).unwrap();
    }
}
