//! NFS mount options: which NFS version a mount asks for.

/// The NFS major version a mount-options string asks for, as Trident reads it: an optional
/// leading `-o `, comma-separated options, `nfsvers=` or `vers=` as N or N.M; the last one wins.
pub fn nfs_version(opts: &str) -> Result<Option<u8>, String> {
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
}
