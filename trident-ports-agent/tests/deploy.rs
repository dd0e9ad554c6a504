//! The shipped Kubernetes manifests agree with the agent: the ConfigMap's node configuration and
//! backends parse and compile.
use std::path::Path;

use trident_ports_agent::{backends, config::NodeConfig, policy::compile::compile};

#[test]
fn shipped_configmaps_parse_and_compile() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/configmap.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    let data = |name: &str| {
        docs.iter().find(|d| d["metadata"]["name"] == name).unwrap()["data"]
            .as_mapping()
            .unwrap()
            .clone()
    };
    let node = data("trident-ports-config");
    let node_yaml = node.get("node.yaml").unwrap().as_str().unwrap();
    let cfg = NodeConfig::from_yaml(Path::new("configmap node.yaml"), node_yaml).unwrap();
    assert_eq!(
        cfg.mode,
        trident_ports_agent::policy::Mode::Audit,
        "installs start in audit mode"
    );
    let dir = std::env::temp_dir().join(format!("tp-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, v) in data("trident-ports-backends") {
        std::fs::write(dir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
    let b = backends::load(std::slice::from_ref(&dir)).unwrap();
    let p = compile(&cfg, &b, &[]);
    assert!(p.skipped.is_empty(), "{:?}", p.warnings);
    assert!(
        p.entries.iter().any(|e| e.ports.from == 2049),
        "{:?}",
        p.entries
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// deploy/'s RBAC grants exactly what the agent does: `list` and `watch` on each kind it watches
/// (Secrets in rbac-secrets.yaml, for readSecrets), `create` and `patch` on Events, nothing else.
/// That the grants suffice is checked by a real API server (tests/tests/cluster.rs).
#[cfg(feature = "kubernetes")]
#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    use std::collections::BTreeSet;

    use trident_ports_agent::agent::cluster::Kind;
    let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
    for file in ["rbac.yaml", "rbac-secrets.yaml"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(file),
        )
        .unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let d = <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap();
            for rule in d["rules"].as_sequence().into_iter().flatten() {
                let verbs: Vec<&str> = rule["verbs"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                for g in rule["apiGroups"].as_sequence().unwrap() {
                    for r in rule["resources"].as_sequence().unwrap() {
                        let (g, r) = (g.as_str().unwrap(), r.as_str().unwrap());
                        let res = if g.is_empty() {
                            r.to_string()
                        } else {
                            format!("{r}.{g}")
                        };
                        for v in &verbs {
                            granted.insert((res.clone(), (*v).to_string()));
                        }
                    }
                }
            }
        }
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for k in Kind::ALL {
        for v in ["list", "watch"] {
            used.insert((k.resource(), v.to_string()));
        }
    }
    for v in ["create", "patch"] {
        used.insert(("events".to_string(), v.to_string()));
    }
    assert_eq!(granted, used);
}
