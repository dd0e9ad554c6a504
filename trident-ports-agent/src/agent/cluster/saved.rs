//! The cluster state of the last applied policy, on disk: a start without the API server begins
//! from it rather than from files alone. The objects are the trimmed copies (`objects::trim`),
//! which hold no credentials. Written to a temporary file and renamed, so that a crash leaves
//! the previous state whole.
use std::path::Path;

use serde_json::{Value, json};

use super::objects::{Key, Kind};

/// Writes `objects`, each as its kept JSON text: copied, not parsed and printed again (that
/// took 150 ms for eleven thousand objects, after every applied change).
pub(super) fn store<'a>(
    path: &Path,
    objects: impl IntoIterator<Item = (&'a Key, &'a str)>,
) -> std::io::Result<()> {
    let mut text = br#"{"version":1,"objects":["#.to_vec();
    for (i, ((kind, ns, name), object)) in objects.into_iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        let head = json!({"kind": kind.name(), "namespace": ns, "name": name}).to_string();
        // `head` is an object: open it again to add the kept text as its last member.
        text.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        text.extend_from_slice(br#","object":"#);
        text.extend_from_slice(object.as_bytes());
        text.push(b'}');
    }
    text.extend_from_slice(b"]}");
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
    use std::collections::BTreeMap;

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
        let texts: Vec<(Key, String)> = objects
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        store(&path, texts.iter().map(|(k, t)| (k, t.as_str()))).unwrap();
        let back: BTreeMap<Key, Value> = load(&path).unwrap().into_iter().collect();
        assert_eq!(back, objects);
        std::fs::write(&path, "{\"objects\": [{\"kind\": \"Pizza\"}]}").unwrap();
        assert!(load(&path).unwrap_err().contains("unknown kind"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
