//! A real Kubernetes API server for the cluster-source tests: Debian's etcd and a kube-apiserver
//! built from Debian's v1.20.2 sources (`cargo xtask test` builds or reuses it and names it in
//! `TP_KUBE_APISERVER`). Both listen on loopback; no controllers or kubelet run, so the objects
//! are exactly what the test creates. Stopped and removed when the guard drops.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The admin's bearer token (system:masters), in the server's static token file.
pub const ADMIN_TOKEN: &str = "trident-ports-test-admin";

pub struct ApiServer {
    pub dir: PathBuf,
    /// The network namespace etcd, the API server and the test's requests run in (the agent
    /// under test reaches it on that namespace's loopback); `None`: this one.
    pub netns: Option<String>,
    pub port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_port: u16,
    /// One API server at a time per test process: the tests time what the agent does, and
    /// three servers starting at once on two cores would time the machine instead.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary, or why there is none. Under CI=true a missing binary fails the test.
pub fn binary(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TP_KUBE_APISERVER").map(PathBuf::from) {
        assert!(
            p.exists(),
            "TP_KUBE_APISERVER={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: TP_KUBE_APISERVER is not set (CI=true, so it may not skip): run it through `cargo xtask test`"
    );
    eprintln!(
        "skipping {test}: no kube-apiserver (TP_KUBE_APISERVER; `cargo xtask test` builds one)"
    );
    None
}

impl ApiServer {
    /// Starts etcd and the API server and waits until it is ready; `None` (with a message)
    /// where there is no binary and the test may skip.
    pub fn start(test: &str) -> Option<ApiServer> {
        Self::start_in(test, None)
    }

    /// Starts them in the network namespace `netns` (by name).
    pub fn start_in(test: &str, netns: Option<&str>) -> Option<ApiServer> {
        let bin = binary(test)?;
        let turn = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!(
            "tp-apiserver-{}-{}",
            std::process::id(),
            test.replace("::", "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        certificates(&dir);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
        )
        .unwrap();
        let mut s = ApiServer {
            port: free_port(),
            etcd_port: free_port(),
            dir,
            netns: netns.map(str::to_string),
            etcd: None,
            apiserver: None,
            _turn: turn,
        };
        s.start_etcd();
        s.start_apiserver(&bin);
        Some(s)
    }

    fn start_etcd(&mut self) {
        let peer = free_port();
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        self.etcd = Some(
            self.command("etcd")
                .arg("--data-dir")
                .arg(self.dir.join("etcd"))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    self.etcd_port
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    self.etcd_port
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server)"),
        );
    }

    /// Starts (or restarts, on the same port and data) the API server and waits for /readyz.
    pub fn start_apiserver(&mut self, bin: &Path) {
        let d = &self.dir;
        let f = |n: &str| d.join(n).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("apiserver.log"))
            .unwrap();
        let child = self
            .command(bin.to_str().unwrap())
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!("--secure-port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--insecure-port=0",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
                "--service-cluster-ip-range=203.0.113.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--logtostderr=true",
                "--v=0",
            ])
            .arg(format!("--cert-dir={}", f("certs")))
            .arg(format!("--tls-cert-file={}", f("server.crt")))
            .arg(format!("--tls-private-key-file={}", f("server.key")))
            .arg(format!("--client-ca-file={}", f("ca.crt")))
            .arg(format!("--token-auth-file={}", f("tokens.csv")))
            .arg(format!("--service-account-key-file={}", f("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                f("sa.key")
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver");
        self.apiserver = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .command("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(self.dir.join("ca.crt"))
                .arg("-H")
                .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
                .arg(format!("{}/readyz", self.url()))
                .output()
                .expect("curl");
            if out.stdout == b"200" {
                return;
            }
            if let Some(Ok(Some(status))) = self.apiserver.as_mut().map(Child::try_wait) {
                panic!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the API server (etcd keeps the objects): the cluster is unreachable until
    /// [`ApiServer::start_apiserver`] brings it back.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `program` in the server's namespace.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig for `token`, written next to the server's files.
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
                 certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
                 contexts:\n- name: test\n  context: {{cluster: test, user: {name}}}\ncurrent-context: test\n",
                self.url(),
                self.dir.join("ca.crt").display()
            ),
        )
        .unwrap();
        path
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin", ADMIN_TOKEN)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("api server files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A throwaway CA, a serving certificate for 127.0.0.1 signed by it (`CA:FALSE`: rustls rejects a
/// CA certificate used as a server's), and the service-account signing key pair.
fn certificates(dir: &Path) {
    let ossl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    ossl(&["genrsa", "-out", "ca.key", "2048"]);
    ossl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "2",
        "-subj",
        "/CN=tp-test-ca",
        "-out",
        "ca.crt",
    ]);
    ossl(&["genrsa", "-out", "server.key", "2048"]);
    ossl(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        "/CN=kube-apiserver",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    ossl(&["genrsa", "-out", "sa.key", "2048"]);
    ossl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}
