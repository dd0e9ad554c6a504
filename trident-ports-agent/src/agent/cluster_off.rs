//! The cluster source without the `kubernetes` feature: `connect` says the build has no
//! Kubernetes support when asked for it, and a [`Cluster`] cannot exist, so every use of one
//! is unreachable by construction.
use std::sync::Arc;

pub use super::cluster_types::{ClusterArgs, ClusterView, NodeFacts, Status, Unreachable};
use super::reconcile::Trigger;
use crate::config::Kubernetes;

/// No value of this type exists without the `kubernetes` feature.
pub enum Cluster {}

pub async fn connect(
    k: &Kubernetes,
    args: &ClusterArgs,
    _need_node: bool,
    _unreachable: Unreachable,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    if args.enabled(k) {
        anyhow::bail!(
            "kubernetes: this build has no Kubernetes support (the `kubernetes` feature)"
        );
    }
    Ok(None)
}

impl Cluster {
    pub fn view(&self) -> ClusterView {
        match *self {}
    }

    pub fn status(&self) -> Status {
        match *self {}
    }

    pub fn save(&self) {
        match *self {}
    }

    pub fn pending(&self) -> bool {
        match *self {}
    }

    pub fn debounce(
        &self,
        _requests: std::sync::mpsc::Sender<Trigger>,
    ) -> tokio::task::JoinHandle<()> {
        match *self {}
    }

    pub fn post_node_events(
        &self,
        _hub: &Arc<crate::events::hub::Hub>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match *self {}
    }
}
