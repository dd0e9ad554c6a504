//! Errors of the agent library. Each names what failed (the file, the interface, the map, the
//! program) and keeps the error underneath as its source, so that callers match on kinds and
//! `{:#}` prints the whole chain.
use std::path::PathBuf;

/// Any error a lower layer (aya, the OS) reports, kept whole.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "trident-ports needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (missing: {missing})"
    )]
    Privileges { missing: String },
    #[error("unknown interface `{0}`")]
    UnknownInterface(String),
    /// A file whose content is wrong: the message carries the line, column or field.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A file or directory that could not be read, written or created.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel lacks {feature}")]
    KernelFeature {
        feature: &'static str,
        #[source]
        source: Source,
    },
    /// The embedded eBPF object lacks something this build expects.
    #[error("the eBPF object has no {0}")]
    Object(String),
    #[error("loading {what}")]
    Load {
        what: String,
        #[source]
        source: Source,
    },
    #[error("attaching {program} to {iface}: {step}")]
    Attach {
        program: &'static str,
        iface: String,
        step: String,
        #[source]
        source: Source,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: batch operation")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy has {entries} kernel entries, more than map {map} holds ({limit})")]
    TooLarge {
        map: &'static str,
        entries: usize,
        limit: u32,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
