//! A node's configuration directory for a test: `node.yaml` and backend files under `backends/`,
//! in a fresh directory named after the test. The agent under test reads it as a node would.
use std::path::{Path, PathBuf};

pub struct NodeDir {
    pub dir: PathBuf,
}

impl NodeDir {
    /// A fresh `tp-<pid>-<name>` directory with an empty `backends/`, and a `node.yaml` that
    /// reads it.
    pub fn new(name: &str) -> Self {
        Self::at(std::env::temp_dir().join(format!("tp-{}-{name}", std::process::id())))
    }

    /// The same under `dir` (the storage lab keeps its agents beside its servers).
    pub fn at(dir: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("backends")).expect("creating the node directory");
        let node = NodeDir { dir };
        node.config("")
    }

    /// Writes `node.yaml`: the backend sources, then `extra` (YAML lines).
    #[must_use]
    pub fn config(self, extra: &str) -> Self {
        self.raw_config(&format!("backends: {{sources: [backends]}}\n{extra}"))
    }

    /// Writes `node.yaml` as given (it names the backend sources itself).
    #[must_use]
    pub fn raw_config(self, text: &str) -> Self {
        std::fs::write(self.config_path(), text).expect("writing node.yaml");
        self
    }

    /// Writes (or replaces) `backends/<file>`.
    #[must_use]
    pub fn backend(self, file: &str, text: &str) -> Self {
        self.write_backend(file, text);
        self
    }

    /// Like `backend`, for a directory already in use (a reload).
    pub fn write_backend(&self, file: &str, text: &str) {
        std::fs::write(self.dir.join("backends").join(file), text).expect("writing a backend");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl AsRef<Path> for NodeDir {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}
