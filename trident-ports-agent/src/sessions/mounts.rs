//! NFS mounts from mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...]
//! - FSTYPE SOURCE SUPEROPTS`. The kernel shows an NFS mount's options as it uses them, with the
//! server's address in `addr=` (a host name in the source has been resolved).
use std::net::IpAddr;

use super::{MountFacts, Session, Sessions};
use crate::backends::Mount;

pub fn parse_mountinfo(text: &str, out: &mut Sessions) {
    for line in text.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut t = tail.split_whitespace();
        let (Some(fstype), Some(source), Some(opts)) = (t.next(), t.next(), t.next()) else {
            continue;
        };
        if fstype != "nfs" && fstype != "nfs4" {
            continue;
        }
        let mountpoint = head
            .split_whitespace()
            .nth(4)
            .map_or_else(String::new, unescape);
        match nfs(fstype, opts) {
            Ok((server, mount)) => out.sessions.push(Session::Nfs {
                mountpoint,
                source: source.to_string(),
                server,
                mount,
            }),
            Err(why) => out
                .notes
                .push(format!("NFS mount {mountpoint} ({source}) skipped: {why}")),
        }
    }
}

fn nfs(fstype: &str, opts: &str) -> Result<(IpAddr, MountFacts), String> {
    let addr = opts
        .split(',')
        .find_map(|o| o.strip_prefix("addr="))
        .ok_or("no addr= in its options")?;
    let server = addr
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map_err(|_| format!("addr={addr} is not an address"))?;
    let mut mount = Mount::parse(opts)?;
    if !mount.pinned() {
        // mountinfo always shows vers=; without it the file system type says.
        mount = Mount::parse(if fstype == "nfs4" { "vers=4" } else { "vers=3" })?;
    }
    Ok((server, mount.into()))
}

/// Mount points escape space, tab, newline and backslash as octal (`\040`). A backslash that
/// does not start three octal digits of a byte's value (`\8`, `\777`: never the kernel's) is
/// kept as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if let Some(n) = octal_byte(&b[i..]) {
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte `\ooo` at the start of `b` stands for, if it is one.
fn octal_byte(b: &[u8]) -> Option<u8> {
    let [b'\\', digits @ ..] = b.get(..4)? else {
        return None;
    };
    let n = digits.iter().try_fold(0u32, |n, &d| {
        (b'0'..=b'7')
            .contains(&d)
            .then(|| n * 8 + u32::from(d - b'0'))
    })?;
    u8::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_of_a_byte_and_nothing_else() {
        assert_eq!(unescape("/mnt/a\\040b\\134c\\011"), "/mnt/a b\\c\t");
        // Found by the fuzzer: `\722` overflowed a byte (a panic with overflow checks, a wrong
        // character without). Not octal, or over 255, or cut short: kept as written.
        assert_eq!(unescape("shar%\\722 1"), "shar%\\722 1");
        assert_eq!(unescape("\\089\\400\\04"), "\\089\\400\\04");
        assert_eq!(unescape("\\377"), "\u{fffd}");
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
112 29 0:52 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount rw,relatime shared:60 - nfs4 192.0.2.2:/trident_pvc_1 rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=192.0.2.1,local_lock=none,addr=192.0.2.2
113 29 0:53 / /mnt/old\\040share rw,relatime shared:61 - nfs svm.example:/vol rw,vers=3,rsize=65536,wsize=65536,namlen=255,hard,proto=tcp,port=2050,timeo=600,retrans=2,sec=sys,mountaddr=192.0.2.3,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=192.0.2.3
114 29 0:54 / /mnt/v40 rw,relatime shared:62 - nfs4 [2001:db8::2]:/x rw,vers=4.0,proto=tcp6,clientaddr=2001:db8::1,addr=2001:db8::2
115 29 0:55 / /mnt/broken rw - nfs4 host:/x rw,vers=4.1
";

    #[test]
    fn nfs_mounts_with_their_server_and_options() {
        let mut s = Sessions::default();
        parse_mountinfo(MOUNTINFO, &mut s);
        assert_eq!(s.sessions.len(), 3, "{s:?}");
        let Session::Nfs {
            mountpoint,
            server,
            mount,
            ..
        } = &s.sessions[0]
        else {
            panic!()
        };
        assert!(mountpoint.ends_with("pvc-1/mount"));
        assert_eq!(server.to_string(), "192.0.2.2");
        assert_eq!((mount.major, mount.v40), (4, false));
        let Session::Nfs {
            mountpoint,
            server,
            mount,
            source,
        } = &s.sessions[1]
        else {
            panic!()
        };
        assert_eq!(mountpoint, "/mnt/old share");
        assert_eq!(
            source, "svm.example:/vol",
            "the host name stays in the source"
        );
        assert_eq!(
            server.to_string(),
            "192.0.2.3",
            "the kernel's resolved address"
        );
        assert_eq!(
            (mount.major, mount.port, mount.mountport),
            (3, Some(2050), Some(20048))
        );
        let Session::Nfs { server, mount, .. } = &s.sessions[2] else {
            panic!()
        };
        assert_eq!(server.to_string(), "2001:db8::2");
        assert!(mount.v40);
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("/mnt/broken") && s.notes[0].contains("no addr="));
    }
}
