//! A real kube-apiserver for the cluster-source tests, built from Debian's own sources: there is
//! no kube-apiserver package, but bookworm's `kubernetes` source package is the complete
//! upstream v1.20.2 tree with `vendor/`. Built once (about 3 minutes on two cores, 1.7 GB peak),
//! then reused from `target/kube-apiserver/`.
//!
//! The recipe: the source fetched through a private apt configuration (deb-src lists for
//! bookworm and bookworm-security under the build folder; the system's sources are untouched),
//! `make gen_openapi`, the vendored reflect2 1.0.1 and json-iterator replaced by Debian's
//! (reflect2 1.0.1 panics at run time on Go 1.18 and later), and `go build` in GOPATH mode as
//! upstream's `hack/` does for 1.20.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{run_checked, workspace_root};

const SOURCE_PACKAGE: &str = "kubernetes";
const SOURCE_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";

/// What the build and the tests need from Debian: Go 1.19, rsync for `gen_openapi`, dpkg-source,
/// the replacement Go sources, and etcd for the tests to run the API server against.
pub(crate) const PACKAGES: &[&str] = &[
    "golang-go",
    "rsync",
    "dpkg-dev",
    "golang-github-modern-go-reflect2-dev",
    "golang-github-json-iterator-go-dev",
    "etcd-server",
    "openssl",
];

pub(crate) const WHY: &str = "the kube-apiserver build and its etcd";

const SOURCES_LIST: &str = "\
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

fn dir() -> PathBuf {
    workspace_root().join("target/kube-apiserver")
}

/// The cached binary's path; builds it first when it is not there.
pub(crate) fn ensure() -> anyhow::Result<PathBuf> {
    let bin = dir().join(format!("kube-apiserver-{SOURCE_VERSION}"));
    crate::peers::ensure_all(&[], PACKAGES, WHY)?;
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: building kube-apiserver from Debian's `{SOURCE_PACKAGE}` {SOURCE_VERSION} sources (once; about 3 minutes)"
    );
    build(&bin).context("building kube-apiserver")?;
    Ok(bin)
}

fn build(bin: &Path) -> anyhow::Result<()> {
    let work = dir().join("build");
    let _ = std::fs::remove_dir_all(&work);
    let apt = work.join("apt");
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
    std::fs::write(apt.join("sources.list"), SOURCES_LIST)?;
    let apt_opts = |c: &mut Command| {
        for (k, v) in [
            ("Dir::Etc::SourceList", apt.join("sources.list")),
            ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
            ("Dir::State::Lists", apt.join("lists")),
            ("Dir::Cache", apt.join("cache")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    run_checked(update.args(["-qq", "update"]))?;
    let src = work.join("src");
    std::fs::create_dir_all(&src)?;
    let mut fetch = Command::new("apt-get");
    apt_opts(&mut fetch);
    run_checked(
        fetch
            .args(["-qq", "source", "--download-only"])
            .arg(format!("{SOURCE_PACKAGE}={SOURCE_VERSION}"))
            .current_dir(&src),
    )?;
    run_checked(
        Command::new("dpkg-source")
            .args(["-q", "-x"])
            .arg(format!("{SOURCE_PACKAGE}_{SOURCE_VERSION}.dsc"))
            .arg("tree")
            .current_dir(&src),
    )?;
    let tree = src.join("tree");
    for (vendored, debian) in [
        (
            "vendor/github.com/modern-go/reflect2",
            "/usr/share/gocode/src/github.com/modern-go/reflect2",
        ),
        (
            "vendor/github.com/json-iterator/go",
            "/usr/share/gocode/src/github.com/json-iterator/go",
        ),
    ] {
        std::fs::remove_dir_all(tree.join(vendored))?;
        run_checked(
            Command::new("cp")
                .args(["-r", debian])
                .arg(tree.join(vendored)),
        )?;
    }
    run_checked(Command::new("make").arg("gen_openapi").current_dir(&tree))?;
    // `make` set up the GOPATH view of the tree upstream builds from.
    let gopath = tree.join("_output/local/go");
    // That view is a symlink to the tree: Go in GOPATH mode applies `vendor/` only to packages
    // inside GOPATH, and it takes the working directory from PWD, which `current_dir` does not
    // set (without it Go sees the tree's real path, outside GOPATH, and finds no vendored
    // package).
    let pkg = gopath.join("src/k8s.io/kubernetes");
    run_checked(
        Command::new("go")
            .args(["build", "-o"])
            .arg(bin)
            .arg("./cmd/kube-apiserver")
            .current_dir(&pkg)
            .env("PWD", &pkg)
            .env("GOPATH", &gopath)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", work.join("gocache")),
    )?;
    // The tree and Go's cache are 2 GB; the binary is what later runs reuse.
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
