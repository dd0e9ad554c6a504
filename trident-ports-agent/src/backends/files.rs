//! Backend sources on disk: files and directories, JSON or (multi-document) YAML, read into
//! documents; a case-insensitive view of their mappings (Trident decodes JSON keys
//! case-insensitively); and the Secrets among them.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_yaml::{Mapping, Value};

use super::{
    endpoint::{base64_decode, url_host_port},
    err,
};
use crate::error::{Error, Result};

/// The files a list of sources names: a file as it is; a directory, its `.json`, `.yaml` and
/// `.yml` files, sorted, with Kubernetes' `..data` entries skipped.
pub fn discover(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for s in sources {
        let meta = std::fs::metadata(s).map_err(Error::io("reading", s))?;
        if meta.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(s)
                .map_err(Error::io("listing", s))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                    !name.starts_with("..")
                        && ["json", "yaml", "yml"]
                            .iter()
                            .any(|e| ext.eq_ignore_ascii_case(e))
                        && p.is_file()
                })
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(s.clone());
        }
    }
    Ok(files)
}

/// Parses one file into (path, origin, document) triples.
pub fn documents(path: &Path, text: &str) -> Result<Vec<(PathBuf, String, Value)>> {
    let display = path.display().to_string();
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if is_json {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            err(
                path,
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        let v: Value = serde_yaml::to_value(v).map_err(|e| err(path, e.to_string()))?;
        return Ok(vec![(path.to_path_buf(), display, v)]);
    }
    let mut out = Vec::new();
    let mut n = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        n += 1;
        let v = <Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| err(path, crate::config::yaml_error(&e)))?;
        if v.is_null() {
            continue;
        }
        out.push((path.to_path_buf(), format!("{display}#{n}"), v));
    }
    if n == 1 {
        if let Some(d) = out.first_mut() {
            d.1 = display;
        }
    }
    Ok(out)
}

/// Case-insensitive view of a mapping.
pub(super) struct Obj<'a>(pub(super) &'a Mapping);

impl<'a> Obj<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v)
    }

    pub(super) fn str(&self, key: &str) -> Option<String> {
        Self::scalar(self.get(key)?)
    }

    /// A string or number as text; an empty string is no value.
    pub(super) fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Trident accepts booleans as booleans or as "true"/"false" strings.
    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A list of strings (or a single one); other items are left out.
    pub(super) fn strs(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Value::Sequence(items)) => items.iter().filter_map(Self::scalar).collect(),
            Some(v) => Self::scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn obj(&self, key: &str) -> Option<Obj<'a>> {
        self.get(key)?.as_mapping().map(Obj)
    }
}

pub(super) fn kind(v: &Value) -> Option<&str> {
    v.as_mapping()
        .and_then(|m| Obj(m).get("kind"))
        .and_then(Value::as_str)
}

/// Keeps the host and port of a Secret's SolidFire `EndPoint` (never the credentials in it).
pub(super) fn collect_secret(
    v: &Value,
    secrets: &mut BTreeMap<String, (String, u16)>,
) -> std::result::Result<(), String> {
    let Some(m) = v.as_mapping().map(Obj) else {
        return Ok(());
    };
    let Some(name) = m.obj("metadata").and_then(|md| md.str("name")) else {
        return Ok(());
    };
    let endpoint = m
        .obj("stringData")
        .and_then(|d| d.str("EndPoint"))
        .or_else(|| {
            m.obj("data")
                .and_then(|d| d.str("EndPoint"))
                .and_then(|b| base64_decode(&b))
        });
    if let Some(url) = endpoint {
        let hp = url_host_port(&url)
            .ok_or_else(|| format!("Secret {name}: EndPoint is not an http(s) URL with a host"))?;
        secrets.insert(name, hp);
    }
    Ok(())
}
