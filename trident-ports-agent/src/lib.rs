//! trident-ports agent library. The data's way, one folder per stage:
//!
//! - `model` (Trident's port table) and `config` (the node configuration): what is wanted;
//! - `backends`: Trident backend definitions read from files, as Trident reads them;
//! - `sessions`: the node's live NFS mounts, iSCSI and NVMe-oF sessions;
//! - `policy`: model + configuration + backends compiled to one [`policy::Policy`], and rendered;
//! - `datapath`: a policy turned into kernel tables, loaded, switched by generation, attached;
//! - `events`: the kernel's denied-flow records decoded, explained and served;
//! - `agent`: `run`, which ties them together: sources, reconcile, servers.
//!
//! `net` holds the vocabulary all of them share, `memory` gives freed heap back. The binary is a
//! thin CLI over this library.
pub mod agent;
pub mod backends;
pub mod config;
pub mod datapath;
pub mod error;
pub mod events;
pub mod memory;
pub mod model;
pub mod net;
pub mod policy;
pub mod sessions;
mod text;
