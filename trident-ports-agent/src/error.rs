//! Errors of the agent library. Each names what failed: the file, the interface, the map.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "trident-ports needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (missing: {missing})"
    )]
    Privileges { missing: String },
    #[error("unknown interface `{0}`")]
    UnknownInterface(String),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("the kernel lacks {feature}: {detail}")]
    KernelFeature {
        feature: &'static str,
        detail: String,
    },
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching {program} to {iface}: {detail}")]
    Attach {
        program: &'static str,
        iface: String,
        detail: String,
    },
    #[error("writing map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("the policy has {entries} kernel entries, more than map {map} holds ({limit})")]
    TooLarge {
        map: &'static str,
        entries: usize,
        limit: u32,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
