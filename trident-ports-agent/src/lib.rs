//! trident-ports agent library: the port model, the policy compiler, the eBPF loader and the
//! denied-flow stream. The binary is a thin CLI over it.
pub mod backends;
pub mod compiler;
pub mod config;
pub mod datapath;
pub mod error;
pub mod events;
pub mod explain;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod policy;
pub mod privileges;
pub mod run;
pub mod socket;
