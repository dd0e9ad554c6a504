//! `trident-ports-agent run`, shaped as a controller: `sources` produce snapshots of what the
//! node should enforce, `reconcile` compiles a snapshot and applies it to the datapath, and the
//! servers (the flows socket, `metrics`, the event pump) are tasks of their own. `run` only
//! starts them and turns signals and file changes into reconcile requests.
/// The cluster source; without the `kubernetes` feature (the fuzz targets' build), a source
/// that can never be started, so that nothing else changes.
#[cfg_attr(not(feature = "kubernetes"), path = "cluster_off.rs")]
pub mod cluster;
pub mod cluster_types;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod sources;

pub use run::{RunOptions, run};
pub use sources::{FileSources, Snapshot};
