//! Objects created, changed and deleted on the test API server, as kubectl would: server-side
//! apply of YAML documents (and their `status`, where the kind keeps it in a subresource),
//! through curl with a bearer token. Independent of the kube-rs code under test.
use serde_json::Value;

use crate::apiserver::{ADMIN_TOKEN, ApiServer};

pub struct Kubectl<'a> {
    api: &'a ApiServer,
    token: String,
}

/// Kinds with no namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "StorageClass",
    "PersistentVolume",
    "VolumeAttachment",
    "Node",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// Kinds whose `status` is a subresource (the test's CRDs keep it in the object).
const STATUS_SUBRESOURCE: &[&str] = &["Node", "Pod", "VolumeAttachment"];

/// The collection path of `doc`'s kind, in `namespace`.
fn collection(doc: &Value) -> String {
    let api = doc["apiVersion"].as_str().expect("apiVersion");
    let kind = doc["kind"].as_str().expect("kind");
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    };
    let prefix = if api.contains('/') {
        format!("/apis/{api}")
    } else {
        format!("/api/{api}")
    };
    if CLUSTER_SCOPED.contains(&kind) {
        format!("{prefix}/{plural}")
    } else {
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        format!("{prefix}/namespaces/{ns}/{plural}")
    }
}

impl<'a> Kubectl<'a> {
    pub fn admin(api: &'a ApiServer) -> Self {
        Kubectl {
            api,
            token: ADMIN_TOKEN.into(),
        }
    }

    /// Runs one request; returns the HTTP status and body.
    pub fn request(&self, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
        let out = self
            .api
            .command("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", method, "--cacert"])
            .arg(self.api.dir.join("ca.crt"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("-H")
            .arg(format!("Content-Type: {ctype}"))
            .args(["--data-binary", "@-"])
            .arg(format!("{}{path}", self.api.url()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(body.as_bytes())?;
                c.wait_with_output()
            })
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Server-side applies every document of `yaml` (and its status).
    pub fn apply(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if v.is_null() {
                continue;
            }
            let name = v["metadata"]["name"].as_str().expect("metadata.name");
            let path = format!("{}/{name}", collection(&v));
            let body = serde_json::to_string(&v).unwrap();
            let (code, resp) = self.request(
                "PATCH",
                &format!("{path}?fieldManager=tp-test&force=true"),
                "application/apply-patch+yaml",
                &body,
            );
            assert!(code / 100 == 2, "apply {path}: {code} {resp}");
            let kind = v["kind"].as_str().unwrap_or_default();
            if let (true, Some(status)) = (STATUS_SUBRESOURCE.contains(&kind), v.get("status")) {
                let patch = serde_json::json!({ "status": status }).to_string();
                let (code, resp) = self.request(
                    "PATCH",
                    &format!("{path}/status"),
                    "application/merge-patch+json",
                    &patch,
                );
                assert!(code / 100 == 2, "status of {path}: {code} {resp}");
            }
        }
    }

    /// Creates many objects (JSON values with apiVersion, kind and metadata) with one curl
    /// process per round: requests run 8 at a time over reused connections, so that thousands
    /// of objects take seconds, not minutes. A request that fails in transport is sent again
    /// (up to 5 rounds); panics unless every object exists in the end.
    pub fn create_many(&self, objects: &[Value]) {
        let dir = self.api.dir.join(format!("bulk-{}", objects.len()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, o) in objects.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.json")), o.to_string()).unwrap();
        }
        let mut todo: Vec<usize> = (0..objects.len()).collect();
        let mut last = String::new();
        for _ in 0..5 {
            if todo.is_empty() {
                break;
            }
            let mut cfg = String::new();
            for &i in &todo {
                if !cfg.is_empty() {
                    // Between operations only: a trailing `next` is an operation without a URL.
                    cfg.push_str("next\n");
                }
                cfg.push_str(&format!(
                    "url = \"{}{}\"\ncacert = \"{}\"\nrequest = \"POST\"\n\
                     header = \"Authorization: Bearer {}\"\nheader = \"Content-Type: application/json\"\n\
                     data-binary = \"@{}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}} {i}\\n\"\n",
                    self.api.url(),
                    collection(&objects[i]),
                    self.api.dir.join("ca.crt").display(),
                    self.token,
                    dir.join(format!("{i}.json")).display()
                ));
            }
            std::fs::write(dir.join("curl.cfg"), cfg).unwrap();
            let out = self
                .api
                .command("curl")
                .args(["-s", "--parallel", "--parallel-max", "8", "-K"])
                .arg(dir.join("curl.cfg"))
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout);
            last = text
                .lines()
                .filter(|l| !l.starts_with("201 ") && !l.starts_with("409 "))
                .take(5)
                .collect::<Vec<_>>()
                .join("; ")
                + &String::from_utf8_lossy(&out.stderr);
            let done: std::collections::BTreeSet<usize> = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(code, _)| *code == "201" || *code == "409")
                .filter_map(|(_, i)| i.parse().ok())
                .collect();
            todo.retain(|i| !done.contains(i));
        }
        assert!(
            todo.is_empty(),
            "{} objects not created: {last}; e.g. {}",
            todo.len(),
            objects[todo[0]]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Deletes the object `yaml` names (its first document).
    pub fn delete(&self, yaml: &str) {
        let v: Value = serde_yaml::from_str(yaml).expect("YAML");
        let name = v["metadata"]["name"].as_str().expect("metadata.name");
        let path = format!("{}/{name}", collection(&v));
        let (code, resp) = self.request("DELETE", &path, "application/json", "");
        assert!(code / 100 == 2, "delete {path}: {code} {resp}");
    }

    /// A token of a ServiceAccount (TokenRequest), for running the agent as it would run in
    /// its pod.
    pub fn token(&self, namespace: &str, account: &str) -> String {
        let (code, resp) = self.request(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
            "application/json",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#,
        );
        assert!(
            code / 100 == 2,
            "token for {namespace}/{account}: {code} {resp}"
        );
        let v: Value = serde_json::from_str(&resp).unwrap();
        v["status"]["token"].as_str().expect("a token").to_string()
    }

    /// Waits until the API server serves `kind` (a CRD just created becomes established).
    pub fn wait_served(&self, path: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (code, _) = self.request("GET", path, "application/json", "");
            if code == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} not served: {code}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The project's minimal CustomResourceDefinitions for the trident.netapp.io kinds the agent
/// reads (v1, any fields kept), applied and served.
pub fn install_crds(k: &Kubectl<'_>) {
    k.apply(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/trident-crds.yaml"),
        )
        .unwrap(),
    );
    for plural in [
        "tridentbackendconfigs",
        "tridentbackends",
        "tridentvolumepublications",
        "tridentvolumes",
    ] {
        k.wait_served(&format!("/apis/trident.netapp.io/v1/{plural}"));
    }
}
