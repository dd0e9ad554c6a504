//! The kernels of the matrix: Debian's packages, fetched with private apt lists (the system's
//! sources stay untouched), unpacked and cached under target/vm/kernels.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

use super::vm_dir;
use crate::run_checked;

/// A kernel the matrix knows: its Debian suite and the package name prefix to look for.
pub(super) struct Kernel {
    pub name: &'static str,
    suite: &'static str,
    prefix: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
        prefix: "linux-image-6.12.",
    },
    Kernel {
        name: "7",
        suite: "sid",
        prefix: "linux-image-7.",
    },
];

/// The Debian archive URI the system itself uses (from its apt sources).
fn debian_uri() -> anyhow::Result<String> {
    let mut text = String::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                    text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                    text.push('\n');
                }
            }
        }
    }
    text.split_whitespace()
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
        .map(|w| w.trim_end_matches('/').to_string())
        .context("no Debian archive URI in /etc/apt: the VM kernels come from Debian's archive")
}

/// apt with private lists and cache for one suite.
fn apt(suite: &str, uri: &str) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let dir = vm_dir().join("apt").join(suite);
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let list = dir.join("sources.list");
    std::fs::write(
        &list,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"
        ),
    )?;
    let opts = vec![
        format!("-oDir::Etc::sourcelist={}", list.display()),
        "-oDir::Etc::sourceparts=-".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        "-oAPT::Sandbox::User=root".into(),
    ];
    Ok((dir, opts))
}

/// Downloads (once) and unpacks the newest kernel of `k`; returns the unpacked tree and release.
pub(super) fn fetch(k: &Kernel) -> anyhow::Result<(PathBuf, String)> {
    let root = vm_dir().join("kernels").join(k.name);
    if let Some(release) = unpacked_release(&root) {
        return Ok((root, release));
    }
    let uri = debian_uri()?;
    let (dir, opts) = apt(k.suite, &uri)?;
    let started = Instant::now();
    run_checked(Command::new("apt-get").args(&opts).args(["-qq", "update"]))
        .with_context(|| format!("fetching the {} package lists", k.suite))?;
    let names = Command::new("apt-cache")
        .args(&opts)
        .args(["pkgnames", k.prefix])
        .output()?;
    let mut names: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter(|n| {
            n.ends_with("-amd64")
                && !n.contains("-rt-")
                && !n.contains("-cloud-")
                && !n.ends_with("-dbg")
        })
        .map(str::to_string)
        .collect();
    names.sort_by_key(|n| version_key(n));
    let pkg = names
        .last()
        .with_context(|| format!("no {}*-amd64 package in {}", k.prefix, k.suite))?;
    // Newer kernels split the image into linux-binary-<version> (vmlinuz) and
    // linux-modules-<version> (modules) besides linux-image-<version>.
    let mut wanted = vec![pkg.clone()];
    for part in ["linux-binary-", "linux-modules-"] {
        let companion = pkg.replacen("linux-image-", part, 1);
        let listed = String::from_utf8_lossy(
            &Command::new("apt-cache")
                .args(&opts)
                .args(["pkgnames", &companion])
                .output()?
                .stdout,
        )
        .lines()
        .any(|l| l == companion);
        if listed {
            wanted.push(companion);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    for p in &wanted {
        run_checked(
            Command::new("apt-get")
                .args(&opts)
                .args(["-qq", "download", p])
                .current_dir(&dir),
        )
        .with_context(|| format!("downloading {p}"))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{p}_")))
                    && f.extension().is_some_and(|x| x == "deb")
            })
            .context("downloaded package not found")?;
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let _ = std::fs::remove_file(&deb);
    }
    let release = unpacked_release(&root).context("no kernel image in the package")?;
    eprintln!("vm: {pkg} ({release}) fetched in {:.1?}", started.elapsed());
    Ok((root, release))
}

fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The kernel image and its release: /boot/vmlinuz-<release>, or on merged-/usr packages
/// /usr/lib/modules/<release>/vmlinuz.
fn kernel_image(root: &Path) -> Option<(PathBuf, String)> {
    if let Ok(rd) = std::fs::read_dir(root.join("boot")) {
        for e in rd.flatten() {
            if let Some(rel) = e.file_name().to_string_lossy().strip_prefix("vmlinuz-") {
                return Some((e.path(), rel.to_string()));
            }
        }
    }
    for base in ["usr/lib/modules", "lib/modules"] {
        for e in std::fs::read_dir(root.join(base)).ok()?.flatten() {
            let image = e.path().join("vmlinuz");
            if image.is_file() {
                return Some((image, e.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    None
}

fn unpacked_release(root: &Path) -> Option<String> {
    kernel_image(root).map(|(_, r)| r)
}

pub(super) fn vmlinuz(root: &Path) -> Option<PathBuf> {
    kernel_image(root).map(|(p, _)| p)
}

pub(super) fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let merged = root.join("usr/lib/modules").join(release).join("kernel");
    if merged.exists() {
        merged
    } else {
        root.join("lib/modules").join(release).join("kernel")
    }
}

pub(super) fn kernel(name: &str) -> anyhow::Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "unknown kernel `{name}`; known: {}",
            KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}
