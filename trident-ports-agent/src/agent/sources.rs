//! Where the agent's inputs come from: today the node configuration and backend files (the
//! cluster comes next). A source produces a [`Snapshot`]; compiling one is `reconcile`'s job.
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    backends::{self, Backend},
    config::{NodeConfig, Role},
    error::Result,
    policy::{Policy, compile::compile},
};

/// Everything one compilation reads.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: NodeConfig,
    pub backends: Vec<Backend>,
}

impl Snapshot {
    pub fn compile(&self) -> Policy {
        compile(&self.config, &self.backends)
    }
}

/// The configuration file (or the built-in defaults), the backend sources it names and those
/// given on the command line, and a role that overrides the configuration's.
#[derive(Clone, Debug, Default)]
pub struct FileSources {
    pub config: Option<PathBuf>,
    pub extra_backends: Vec<PathBuf>,
    pub role: Option<Role>,
}

/// Resolved path, size and modification time of every input file.
pub type Fingerprint = Vec<(PathBuf, u64, SystemTime)>;

impl FileSources {
    pub fn new(config: Option<&Path>, extra_backends: &[PathBuf], role: Option<Role>) -> Self {
        FileSources {
            config: config.map(Path::to_path_buf),
            extra_backends: extra_backends.to_vec(),
            role,
        }
    }

    /// Reads the configuration and every backend source.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut config = match &self.config {
            Some(p) => NodeConfig::load(p)?,
            None => NodeConfig::default(),
        };
        if let Some(r) = self.role {
            config.role = r;
        }
        let backends = backends::load(&self.backend_paths(&config))?;
        Ok(Snapshot { config, backends })
    }

    /// Reads and compiles: what `plan` prints.
    pub fn plan(&self) -> Result<(NodeConfig, Policy)> {
        let s = self.snapshot()?;
        let policy = s.compile();
        Ok((s.config, policy))
    }

    /// The configuration's backend sources (relative to the configuration file's directory),
    /// then the command line's.
    fn backend_paths(&self, config: &NodeConfig) -> Vec<PathBuf> {
        let base = self
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        config
            .backends
            .sources
            .iter()
            .map(|s| {
                if s.is_absolute() {
                    s.clone()
                } else {
                    base.join(s)
                }
            })
            .chain(self.extra_backends.iter().cloned())
            .collect()
    }

    /// A Kubernetes ConfigMap update swaps the `..data` symlink, which changes the resolved
    /// paths: that counts as a change as much as a new size or time does.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut paths: Vec<PathBuf> = self.config.iter().cloned().collect();
        let config = self
            .config
            .as_deref()
            .and_then(|c| NodeConfig::load(c).ok());
        let sources = match &config {
            Some(c) => self.backend_paths(c),
            None => self.extra_backends.clone(),
        };
        for s in sources {
            match std::fs::read_dir(&s) {
                Ok(rd) => paths.extend(rd.filter_map(|e| e.ok().map(|e| e.path()))),
                Err(_) => paths.push(s),
            }
        }
        let mut out: Fingerprint = paths
            .into_iter()
            .filter_map(|p| {
                let real = std::fs::canonicalize(&p).ok()?;
                let m = std::fs::metadata(&real).ok()?;
                Some((real, m.len(), m.modified().ok()?))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sources_are_relative_to_the_configuration() {
        let dir = std::env::temp_dir().join(format!("tp-sources-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("node.yaml"), "backends:\n  sources: [b]\n").unwrap();
        std::fs::write(
            dir.join("b/nas.yaml"),
            "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.5\n",
        )
        .unwrap();
        let s = FileSources::new(Some(&dir.join("node.yaml")), &[], Some(Role::Controller));
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.config.role, Role::Controller, "the override wins");
        assert_eq!(snap.backends.len(), 1);
        assert_eq!(snap.backends[0].name, "nas");
        let before = s.fingerprint();
        assert_eq!(before.len(), 2, "{before:?}");
        std::fs::write(dir.join("b/nas.yaml"), "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.60\n").unwrap();
        assert_ne!(
            s.fingerprint(),
            before,
            "a rewritten backend file is a change"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
