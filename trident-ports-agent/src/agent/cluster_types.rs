//! The cluster source's plain types, compiled with or without the `kubernetes` feature: the
//! command line, what a compilation reads from the cluster, and how the source stands.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use ipnet::IpNet;

use crate::config::Kubernetes;

/// The command line's say about the cluster source (`run` and `plan`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// Learn backends, classes, volumes and this node from the Kubernetes API (also
    /// `kubernetes.enabled`, or implied by --kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
    /// The kubeconfig to use; default: KUBECONFIG, ~/.kube/config, then the pod's service
    /// account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster (default: kubernetes.nodeName, then NODE_NAME).
    #[arg(long)]
    pub node_name: Option<String>,
}

impl ClusterArgs {
    pub fn enabled(&self, k: &Kubernetes) -> bool {
        self.kubernetes || self.kubeconfig.is_some() || k.enabled
    }
}

/// How a start-up without the API server goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// From the state saved with the last applied policy, or files alone (`run`).
    Restore,
    /// An error (`plan`: it prints what the cluster says, or nothing).
    Fail,
}

/// How the source stands, for the metrics and health endpoints.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Every watcher has its complete list and no error since.
    pub connected: bool,
    /// How long some watcher has been failing (zero when connected).
    pub stale: Duration,
    /// The state came from disk and the API server has not answered since.
    pub from_disk: bool,
    pub objects: BTreeMap<&'static str, usize>,
    /// RBAC refusals, as ``kubernetes: RBAC refuses `list` on tridentbackends.trident.netapp.io
    /// in namespace trident: ...``.
    pub refused: Vec<String>,
}

/// What one compilation reads from the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The objects the backend reader takes, as their kept text.
    pub docs: Vec<crate::backends::Doc>,
    pub facts: NodeFacts,
    /// Every watcher had its complete list.
    pub complete: bool,
    pub from_disk: bool,
}

/// What the cluster says about this node, besides the storage objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Node object's labels (`None` when the Node is not seen).
    pub labels: Option<BTreeMap<String, String>>,
    /// Its InternalIP and ExternalIP addresses.
    pub addresses: Vec<IpNet>,
    /// The Trident controller pod's addresses when it runs on this node.
    pub controller: Vec<IpNet>,
}
