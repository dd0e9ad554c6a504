//! The cluster state of the last applied policy, on disk: a start without the API server begins
//! from it rather than from files alone. The objects are the trimmed copies (`objects::trim`),
//! which hold no credentials. Written to a temporary file and renamed, so that a crash leaves
//! the previous state whole.
use std::{collections::BTreeMap, path::Path};

use serde_json::{Value, json};

use super::objects::{Key, Kind};

pub(super) fn store(path: &Path, objects: &BTreeMap<Key, Value>) -> std::io::Result<()> {
    let items: Vec<Value> = objects
        .iter()
        .map(|((kind, ns, name), v)| json!({"kind": kind.name(), "namespace": ns, "name": name, "object": v}))
        .collect();
    let text = serde_json::to_vec(&json!({"version": 1, "objects": items}))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

pub(super) fn load(path: &Path) -> Result<Vec<(Key, Value)>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let items = v
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no `objects` list", path.display()))?;
    let mut out = Vec::new();
    for item in items {
        let kind = item.get("kind").and_then(Value::as_str);
        let Some(kind) = Kind::ALL.into_iter().find(|k| Some(k.name()) == kind) else {
            return Err(format!("{}: unknown kind {kind:?}", path.display()));
        };
        let text = |k: &str| {
            item.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let object = item.get("object").cloned().unwrap_or(Value::Null);
        out.push(((kind, text("namespace"), text("name")), object));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("tp-saved-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut objects = BTreeMap::new();
        objects.insert(
            (
                Kind::TridentBackendConfig,
                "trident".to_string(),
                "nas".to_string(),
            ),
            json!({"kind": "TridentBackendConfig", "spec": {"storageDriverName": "ontap-nas"}}),
        );
        objects.insert(
            (Kind::StorageClass, String::new(), "gold".to_string()),
            json!({"kind": "StorageClass", "provisioner": "csi.trident.netapp.io"}),
        );
        store(&path, &objects).unwrap();
        let back: BTreeMap<Key, Value> = load(&path).unwrap().into_iter().collect();
        assert_eq!(back, objects);
        std::fs::write(&path, "{\"objects\": [{\"kind\": \"Pizza\"}]}").unwrap();
        assert!(load(&path).unwrap_err().contains("unknown kind"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
