//! Denied-flow events, from the kernel's ring buffer to the operator: `record` decodes and
//! formats them, `explain` says what they mean in Trident's terms, `hub` keeps and fans them out,
//! `socket` serves them to `flows`, and `pump` drains the ring buffer into all of these.
pub mod explain;
pub mod hub;
pub mod pump;
pub mod record;
pub mod socket;

pub use record::{Clock, IfNames, Record, addr, decode, if_name, reason_name};

/// How events are written on stdout (and printed by `flows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Json,
    Text,
}
