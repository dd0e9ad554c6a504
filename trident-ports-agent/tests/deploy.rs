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
