//! The guest's initramfs: busybox, iproute2's `ip` and `tc`, what the guest's tests need with
//! their shared libraries, and the kernel modules they need with their dependencies.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{kernels::modules_dir, vm_dir};
use crate::run_checked;

pub(super) fn copy_with_libs(
    src: &Path,
    dest_root: &Path,
    dest: &str,
    libs: &mut BTreeSet<PathBuf>,
) -> anyhow::Result<()> {
    let to = dest_root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().unwrap())?;
    std::fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    let ldd = Command::new("ldd").arg(src).output()?;
    for w in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if w.starts_with('/') {
            libs.insert(PathBuf::from(w));
        }
    }
    Ok(())
}

/// Drops the debug information of an ELF file (symbols stay, so backtraces keep their function
/// names): a debug test binary is 160 MB, most of it debug information, and the guest unpacks
/// its initramfs into its 2 GiB of memory. Other files are left as they are.
fn strip_debug(path: &Path) -> anyhow::Result<()> {
    let mut magic = [0u8; 4];
    let elf = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if elf {
        run_checked(Command::new("strip").arg("--strip-debug").arg(path))?;
    }
    Ok(())
}

/// What goes into a guest besides busybox, ip and tc: files (with their libraries when they are
/// executables), directories copied to the same path, and the commands `init` runs.
#[derive(Default)]
pub(super) struct Guest {
    pub files: Vec<(PathBuf, String)>,
    pub dirs: Vec<PathBuf>,
    /// Files written with the given text, by guest path.
    pub texts: Vec<(String, String)>,
    /// Symbolic links: (guest path, target).
    pub links: Vec<(String, String)>,
    /// Kernel modules to load, each a list of names one of which the kernel has (names change
    /// between releases); their dependencies come along.
    pub modules: Vec<&'static [&'static str]>,
    pub commands: String,
}

/// Builds the initramfs for one kernel; returns its path.
pub(super) fn initramfs(
    kernel_root: &Path,
    release: &str,
    guest: &Guest,
) -> anyhow::Result<PathBuf> {
    let root = vm_dir().join("initramfs").join(release);
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "t", "modules", "var",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is missing: apt-get install busybox-static")?;
    let mut libs = BTreeSet::new();
    copy_with_libs(Path::new("/usr/sbin/ip"), &root, "/sbin/ip", &mut libs)?;
    copy_with_libs(Path::new("/usr/sbin/tc"), &root, "/sbin/tc", &mut libs)?;
    // util-linux's setpriv (busybox's takes other options), for the privilege tests.
    copy_with_libs(
        Path::new("/usr/bin/setpriv"),
        &root,
        "/sbin/setpriv",
        &mut libs,
    )?;
    for (src, dest) in &guest.files {
        copy_with_libs(src, &root, dest, &mut libs)?;
        strip_debug(&root.join(dest.trim_start_matches('/')))?;
    }
    for lib in libs {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    for dir in &guest.dirs {
        let to = root.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(to.parent().unwrap())?;
        run_checked(Command::new("cp").arg("-r").arg(dir).arg(&to))?;
    }
    for (dest, text) in &guest.texts {
        let to = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::write(&to, text)?;
    }
    for (dest, target) in &guest.links {
        let to = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::os::unix::fs::symlink(target, &to)?;
    }
    // Numbered so that the shell's sorted glob loads every module after its dependencies.
    let mut wanted: Vec<&[&str]> = vec![&["veth"], &["sch_ingress"], &["cls_bpf"]];
    wanted.extend(guest.modules.iter().copied());
    let index = ModuleIndex::new(kernel_root, release)?;
    for (i, path) in index.resolve(&wanted)?.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy();
        let name = name.split(".ko").next().unwrap();
        std::fs::write(
            root.join("modules").join(format!("{i:03}-{name}.ko")),
            unpack(path)?,
        )?;
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /run/netns\n\
         for m in /modules/*.ko; do insmod $m || echo \"VM-INSMOD-FAILED $m\"; done\n\
         ip link set lo up\n\
         echo \"VM-KERNEL $(uname -r)\"\n\
         cd /t; export CI=true TRIDENT_PORTS_AGENT=/t/trident-ports-agent TRIDENT_PORTS_EMULATED=1 RUST_BACKTRACE=1 PATH=/sbin:/bin:/usr/sbin:/usr/bin\n\
         {}\
         echo VM-DONE\n\
         poweroff -f\n",
        guest.commands
    );
    std::fs::write(root.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let image = vm_dir().join(format!("initramfs-{release}.cpio.gz"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            image.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs (cpio, gzip) failed");
    }
    Ok(image)
}

/// A module file's contents, unpacked when Debian compressed it.
fn unpack(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return std::fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("{tool} is needed to unpack {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} could not unpack {}", path.display());
    }
    Ok(out.stdout)
}

/// The modules of one unpacked kernel package, by name ('-' and '_' are the same to the
/// kernel), and the ones built in.
struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    release: String,
}

fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

impl ModuleIndex {
    fn new(kernel_root: &Path, release: &str) -> anyhow::Result<Self> {
        let dir = modules_dir(kernel_root, release);
        let mut files = BTreeMap::new();
        let mut todo = vec![dir.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d)
                .with_context(|| format!("reading {}", d.display()))?
                .flatten()
            {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else if let Some(f) = p.file_name().and_then(|f| f.to_str())
                    && f.contains(".ko")
                {
                    files.insert(module_name(f), p);
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.parent().unwrap().join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(module_name)
            .collect();
        Ok(ModuleIndex {
            files,
            builtin,
            release: release.to_string(),
        })
    }

    /// Module files in load order: each after the modules it depends on (from its `depends=`
    /// in .modinfo). Built-in modules need no file.
    fn resolve(&self, wanted: &[&[&str]]) -> anyhow::Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for names in wanted {
            let name = names
                .iter()
                .map(|n| module_name(n))
                .find(|n| self.files.contains_key(n) || self.builtin.contains(n))
                .with_context(|| {
                    format!(
                        "kernel {} has no module {}",
                        self.release,
                        names.join(" or ")
                    )
                })?;
            self.visit(&name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = self.files.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            bail!("kernel {}: module {name} not found", self.release);
        };
        let data = unpack(path)?;
        for dep in depends(&data) {
            self.visit(&module_name(&dep), seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// The `depends=` entry of a module's .modinfo section: NUL-separated `key=value` strings.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}
