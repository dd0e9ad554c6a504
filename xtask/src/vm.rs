//! The privileged tests on a throwaway VM per kernel: Debian kernel packages fetched and cached
//! (through apt with private package lists, so the system's sources are untouched), a busybox
//! initramfs carrying the test binaries, the agent, `ip` and `tc` with their libraries, and
//! QEMU (TCG: this machine's /dev/kvm cannot run guests) booting the kernel directly.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_checked, workspace_root};

/// A kernel the matrix knows: its Debian suite and the package name prefix to look for.
struct Kernel {
    name: &'static str,
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

/// Test binaries run in the guest, and what each needs.
const SUITES: &[&str] = &["packets", "egress", "ingress"];

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

fn need(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        bail!("{tool} is missing: apt-get install {package}");
    }
    Ok(())
}

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
fn fetch(k: &Kernel) -> anyhow::Result<(PathBuf, String)> {
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

fn vmlinuz(root: &Path) -> Option<PathBuf> {
    kernel_image(root).map(|(p, _)| p)
}

fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let merged = root.join("usr/lib/modules").join(release).join("kernel");
    if merged.exists() {
        merged
    } else {
        root.join("lib/modules").join(release).join("kernel")
    }
}

/// The test binaries cargo built, by suite name.
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args([
            "test",
            "-p",
            "trident-ports-tests",
            "--no-run",
            "--message-format=json",
        ])
        .args(SUITES.iter().flat_map(|s| ["--test", s]))
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json_lite(line) else {
            continue;
        };
        if let Some((name, exe)) = v {
            bins.push((name, PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

/// Pulls (target name, executable) out of a cargo artifact message without a JSON dependency.
fn serde_json_lite(line: &str) -> anyhow::Result<Option<(String, String)>> {
    if !line.contains("\"reason\":\"compiler-artifact\"") || !line.contains("\"executable\":\"") {
        return Ok(None);
    }
    let field = |key: &str| -> Option<String> {
        let start = line.find(key)? + key.len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_string())
    };
    let name = field("\"target\":{\"kind\":[\"test\"],\"crate_types\":[\"bin\"],\"name\":\"");
    Ok(match (name, field("\"executable\":\"")) {
        (Some(n), Some(e)) if SUITES.contains(&n.as_str()) => Some((n, e)),
        _ => None,
    })
}

fn copy_with_libs(
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

/// What goes into a guest besides busybox, ip and tc: files (with their libraries when they are
/// executables), directories copied to the same path, and the commands `init` runs.
struct Guest {
    files: Vec<(PathBuf, String)>,
    dirs: Vec<PathBuf>,
    commands: String,
}

/// Builds the initramfs for one kernel; returns its path.
fn initramfs(kernel_root: &Path, release: &str, guest: &Guest) -> anyhow::Result<PathBuf> {
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
    // veth, clsact and cls_bpf are modules in Debian's kernels; compressed ones are unpacked.
    let modules = modules_dir(kernel_root, release);
    for m in [
        "drivers/net/veth.ko",
        "net/sched/sch_ingress.ko",
        "net/sched/cls_bpf.ko",
    ] {
        let name = Path::new(m).file_name().unwrap();
        let plain = modules.join(m);
        if plain.exists() {
            std::fs::copy(&plain, root.join("modules").join(name))?;
            continue;
        }
        for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
            let packed = modules.join(format!("{m}.{ext}"));
            if packed.exists() {
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&packed)
                    .output()
                    .with_context(|| format!("{tool} is needed to unpack {}", packed.display()))?;
                std::fs::write(root.join("modules").join(name), out.stdout)?;
            }
        }
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /run/netns\n\
         for m in /modules/*.ko; do insmod $m 2>/dev/null; done\n\
         ip link set lo up\n\
         echo \"VM-KERNEL $(uname -r)\"\n\
         cd /t; export CI=true TRIDENT_PORTS_AGENT=/t/trident-ports-agent TRIDENT_PORTS_EMULATED=1 RUST_BACKTRACE=1 PATH=/sbin:/bin\n\
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

fn kernel(name: &str) -> anyhow::Result<&'static Kernel> {
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

fn tools() -> anyhow::Result<()> {
    need("qemu-system-x86_64", "qemu-system-x86")?;
    need("cpio", "cpio")?;
    if !Path::new("/bin/busybox").exists() {
        bail!("busybox-static is missing: apt-get install busybox-static");
    }
    Ok(())
}

fn qemu(root: &Path, image: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(vmlinuz(root).context("no vmlinuz")?)
    .arg("-initrd")
    .arg(image)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null());
    Ok(c)
}

/// `cargo xtask run --vm KERNEL`: the README's demo inside a throwaway VM, on the terminal.
pub fn demo(name: &str, agent: &Path, seconds: u64) -> anyhow::Result<()> {
    tools()?;
    let (root, release) = fetch(kernel(name)?)?;
    let me = std::env::current_exe()?;
    let guest = Guest {
        files: vec![
            (agent.to_path_buf(), "/t/trident-ports-agent".into()),
            (me, "/t/xtask".into()),
        ],
        dirs: vec![workspace_root().join("config")],
        commands: format!("/t/xtask demo-vm --agent /t/trident-ports-agent --seconds {seconds}\n"),
    };
    let image = initramfs(&root, &release, &guest)?;
    eprintln!("vm: booting {release} under QEMU (TCG); the demo runs {seconds} s");
    let status = qemu(&root, &image)?
        .status()
        .context("running qemu-system-x86_64")?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}

/// Runs the privileged suites in one VM per kernel and reports per kernel.
pub fn test(kernels: &[String], agent: &Path, filter: &[String]) -> anyhow::Result<()> {
    tools()?;
    let bins = test_binaries()?;
    if bins.len() != SUITES.len() {
        bail!(
            "expected test binaries {SUITES:?}, found {:?}",
            bins.iter().map(|b| &b.0).collect::<Vec<_>>()
        );
    }
    let mut report = Vec::new();
    for name in kernels {
        let (root, release) = fetch(kernel(name)?)?;
        let mut files = vec![(agent.to_path_buf(), "/t/trident-ports-agent".to_string())];
        let mut commands = String::new();
        for (suite, exe) in &bins {
            files.push((exe.clone(), format!("/t/{suite}")));
            commands.push_str(&format!(
                "echo \"VM-SUITE-BEGIN {suite}\"; timeout -s KILL 300 ./{suite} --test-threads=1 --show-output {}; echo \"VM-SUITE-END {suite} $?\"\n",
                filter.join(" ")
            ));
        }
        let image = initramfs(
            &root,
            &release,
            &Guest {
                files,
                dirs: vec![],
                commands,
            },
        )?;
        let started = Instant::now();
        let q = qemu(&root, &image)?;
        // A guest that hangs must not hang CI.
        // A guest that never finishes (emulation stalls happen) gets one more boot; a guest
        // that finishes with failed tests does not.
        let mut console = String::new();
        for attempt in 1..=2 {
            let out = Command::new("timeout")
                .arg("1200")
                .arg(q.get_program())
                .args(q.get_args())
                .stdin(Stdio::null())
                .output()
                .context("running qemu-system-x86_64")?;
            console = String::from_utf8_lossy(&out.stdout).into_owned();
            if console.contains("VM-DONE") {
                break;
            }
            eprintln!(
                "vm {name}: the guest did not finish (attempt {attempt}); console kept in target/vm"
            );
            std::fs::write(
                vm_dir().join(format!("console-{release}-attempt{attempt}.log")),
                &console,
            )?;
        }
        let log = vm_dir().join(format!("console-{release}.log"));
        std::fs::write(&log, &console)?;
        let mut results = Vec::new();
        for line in console.lines() {
            if let Some(rest) = line.trim().strip_prefix("VM-SUITE-END ") {
                let mut it = rest.split_whitespace();
                results.push((
                    it.next().unwrap_or("?").to_string(),
                    it.next().unwrap_or("?") == "0",
                ));
            }
            if line.contains("test result:") || line.contains("skipping") || line.contains("FAILED")
            {
                eprintln!("vm {name}: {}", line.trim());
            }
        }
        let done = console.contains("VM-DONE");
        let ok = done && results.len() == bins.len() && results.iter().all(|(_, ok)| *ok);
        report.push((name.clone(), release, ok, results, started.elapsed(), log));
    }
    eprintln!("\nvm results:");
    for (name, release, ok, results, took, log) in &report {
        let suites: Vec<String> = results
            .iter()
            .map(|(s, ok)| format!("{s}={}", if *ok { "ok" } else { "FAILED" }))
            .collect();
        eprintln!(
            "  {name} ({release}): {} in {took:.0?} [{}] console: {}",
            if *ok { "ok" } else { "FAILED" },
            suites.join(", "),
            log.display()
        );
    }
    if report.iter().any(|r| !r.2) {
        bail!("tests failed on some kernels");
    }
    Ok(())
}
