//! Builds the kernel programs (nightly, bpfel-unknown-none) so that the agent can embed them.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let find = |name: &str| {
        metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("package {name} not found in the workspace"))
    };
    let ebpf = find("trident-ports-ebpf")?;
    let common = find("trident-ports-common")?;
    // The kernel object also changes when the shared types change.
    if let Some(dir) = common.manifest_path.parent() {
        println!("cargo:rerun-if-changed={dir}");
    }
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    share_target_dir(metadata.target_directory.as_std_path())?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).map_err(|e| {
        anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             hint: `cargo xtask setup` installs the nightly rust-src and bpf-linker"
        )
    })
}

/// aya-build compiles the kernel crate (and `core`, with build-std) in
/// `OUT_DIR/aya-build/target`, a directory of its own for every variant of this build script:
/// the check, debug, release and fuzz builds each paid about 30 s for the same object. Its
/// `target` is made a link to one directory under the workspace's target directory, so the
/// first build compiles and the others find it fresh. The nested cargo locks that directory, so
/// two variants building at once wait for each other instead of writing over each other; it is
/// not the outer cargo's directory, so the nested one cannot wait on its own parent's lock.
/// `cargo xtask lint` checks the kernel crate in the same directory, with aya-build's flags.
fn share_target_dir(workspace_target: &std::path::Path) -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let shared = workspace_target.join("ebpf");
    let parent = out_dir.join("aya-build");
    let link = parent.join("target");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    match std::fs::read_link(&link) {
        Ok(to) if to == shared => return Ok(()),
        Ok(_) => std::fs::remove_file(&link),
        // A directory left by a build before this link existed.
        Err(_) if link.is_dir() => std::fs::remove_dir_all(&link),
        Err(_) => Ok(()),
    }
    .with_context(|| format!("replacing {}", link.display()))?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}
