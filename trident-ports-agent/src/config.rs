//! The node configuration (see `config/node.example.yaml`).
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::{
    error::{Error, Result},
    policy::{Mode, PortRange, Proto},
};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    #[default]
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Controller => "controller",
            Role::Worker => "worker",
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub trident: Trident,
    #[serde(default)]
    pub nfs: Nfs,
    #[serde(default)]
    pub directory: Directory,
    #[serde(default)]
    pub backends: Backends,
    #[serde(default)]
    pub allow: Vec<Allow>,
    #[serde(default)]
    pub events: Events,
    /// A live session the policy would cut keeps what it uses for as long as it exists.
    #[serde(default = "yes")]
    pub protect_live_sessions: bool,
    #[serde(default)]
    pub kubernetes: Kubernetes,
}

/// The cluster source: what Trident knows, watched through the Kubernetes API.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kubernetes {
    /// `run --kubernetes` turns it on as well.
    #[serde(default)]
    pub enabled: bool,
    /// Unset: `KUBECONFIG`, `~/.kube/config`, then the pod's service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default = "default_trident_namespace")]
    pub trident_namespace: String,
    /// This node's name; unset: `NODE_NAME` (the DaemonSet sets it from the downward API).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Read Secrets in the Trident namespace, for fields that live only there (SolidFire
    /// `EndPoint`). Their values are never logged or kept.
    #[serde(default)]
    pub read_secrets: bool,
    /// Changes that come this close together are compiled and applied once.
    #[serde(default = "default_debounce", deserialize_with = "duration")]
    pub debounce: Duration,
    /// How long start-up waits for the first complete view of the cluster before it starts
    /// from the last state this node applied.
    #[serde(default = "default_start_timeout", deserialize_with = "duration")]
    pub start_timeout: Duration,
    /// Where the cluster state of the last applied policy is kept, for a start without the
    /// API server ("none": not kept).
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// Post denied flows that involve storage as Events on this node's Node object.
    #[serde(default = "yes")]
    pub node_events: bool,
    /// How often those Events are written (aggregated per flow and reason in between).
    #[serde(default = "default_node_event_interval", deserialize_with = "duration")]
    pub node_event_interval: Duration,
}

impl Default for Kubernetes {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("an empty kubernetes section is valid")
    }
}

fn default_trident_namespace() -> String {
    "trident".into()
}
fn default_debounce() -> Duration {
    Duration::from_millis(500)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_node_event_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_state_file() -> PathBuf {
    PathBuf::from("/var/lib/trident-ports/cluster-state.json")
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Sources allowed to reach Trident's node ports (8000, 8443, 8001).
    #[serde(default, deserialize_with = "nets")]
    pub cidrs: Vec<IpNet>,
}

/// This node, as the cluster knows it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// The Node object's labels, for backends' `supportedTopologies`; unset: not known, and no
    /// backend is left out for its topology.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The node's own addresses, where Trident's node pod listens (it uses the host network).
    /// `run` adds the addresses of its network namespace.
    #[serde(default, deserialize_with = "nets")]
    pub addresses: Vec<IpNet>,
    /// The host's /proc and /sys, where live sessions are read (a pod mounts them read-only).
    #[serde(default = "default_proc")]
    pub host_proc: PathBuf,
    #[serde(default = "default_sys")]
    pub host_sys: PathBuf,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            labels: None,
            addresses: Vec::new(),
            host_proc: default_proc(),
            host_sys: default_sys(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trident {
    #[serde(default = "default_probe_port")]
    pub probe_port: u16,
    #[serde(default = "yes")]
    pub metrics: bool,
    /// The controller's HTTPS metrics port (8444), off unless Trident runs with `--https_metrics`.
    #[serde(default)]
    pub https_metrics: bool,
    /// Addresses of the Trident controller pod when it runs on this node: its ports are guarded
    /// there (and on the node's own addresses when the pod uses the host network).
    #[serde(default, deserialize_with = "nets")]
    pub controller_addresses: Vec<IpNet>,
}

impl Default for Trident {
    fn default() -> Self {
        Trident {
            probe_port: default_probe_port(),
            metrics: true,
            https_metrics: false,
            controller_addresses: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nfs {
    /// NFSv3 lock and status callbacks from storage to the node.
    #[serde(default = "yes")]
    pub callbacks: bool,
}

impl Default for Nfs {
    fn default() -> Self {
        Nfs { callbacks: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Directory {
    #[serde(default, deserialize_with = "nets")]
    pub kerberos: Vec<IpNet>,
    #[serde(default, deserialize_with = "nets")]
    pub ldap: Vec<IpNet>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backends {
    /// Backend definition files or directories.
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    /// Data addresses a definition cannot name (discovered SAN portals, SVM data LIFs), keyed
    /// by backendName.
    #[serde(default, deserialize_with = "net_map")]
    pub data_addresses: BTreeMap<String, Vec<IpNet>>,
    /// Ports an SVM moved its NFSv3 services to, keyed by backendName (ONTAP lets an SVM move
    /// mountd, NLM, NSM and rquotad off 635, 4045, 4046 and 4049).
    #[serde(default)]
    pub nfs_ports: BTreeMap<String, NfsPorts>,
    /// How often host names in backend definitions are resolved again.
    #[serde(default = "default_resolve_interval", deserialize_with = "duration")]
    pub resolve_interval: Duration,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            sources: Vec::new(),
            data_addresses: BTreeMap::new(),
            nfs_ports: BTreeMap::new(),
            resolve_interval: default_resolve_interval(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NfsPorts {
    pub mountd: Option<u16>,
    pub nlm: Option<u16>,
    pub nsm: Option<u16>,
    pub rquota: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    #[serde(deserialize_with = "net")]
    pub dst: IpNet,
    #[serde(deserialize_with = "port_range")]
    pub ports: PortRange,
    pub proto: Proto,
    /// Shared among the entries that give the same reason (see `NodeConfig::from_yaml`).
    #[serde(deserialize_with = "text")]
    pub reason: Arc<str>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Events {
    /// At most one event per flow and direction per interval ("1s", "250ms", "0s" for all).
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// At most this many events per second from each CPU, in bursts of up to a second's worth
    /// (0: no limit). Denials past it are counted (`rate_limited`), and each flow's next event
    /// says how many packets it stands for.
    #[serde(default = "default_rate_per_cpu")]
    pub rate_per_cpu: u32,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            interval: default_interval(),
            rate_per_cpu: default_rate_per_cpu(),
        }
    }
}

fn default_rate_per_cpu() -> u32 {
    10_000
}

fn default_probe_port() -> u16 {
    17546
}
fn yes() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_proc() -> PathBuf {
    PathBuf::from("/proc")
}
fn default_sys() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

/// An address or a prefix: `192.0.2.10`, `192.0.2.0/24`, `2001:db8::1`, `[2001:db8::1]`.
pub fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

fn net<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<IpNet, D::Error> {
    let s = String::deserialize(d)?;
    parse_net(&s).map_err(serde::de::Error::custom)
}

fn nets<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<IpNet>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| parse_net(s).map_err(serde::de::Error::custom))
        .collect()
}

fn net_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, Vec<IpNet>>, D::Error> {
    let m = BTreeMap::<String, Vec<String>>::deserialize(d)?;
    m.into_iter()
        .map(|(k, v)| {
            let nets = v
                .iter()
                .map(|s| parse_net(s).map_err(|e| serde::de::Error::custom(format!("{k}: {e}"))))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((k, nets))
        })
        .collect()
}

fn text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Arc<str>, D::Error> {
    String::deserialize(d).map(Arc::from)
}

fn port_range<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<PortRange, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(u64),
        S(String),
    }
    match P::deserialize(d)? {
        P::N(n) => PortRange::parse(&n.to_string()),
        P::S(s) => PortRange::parse(&s),
    }
    .map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

/// Formats a serde_yaml error with its line and column.
pub fn yaml_error(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(l) => format!(
            "line {} column {}: {}",
            l.line(),
            l.column(),
            strip_location(e)
        ),
        None => e.to_string(),
    }
}

fn strip_location(e: &serde_yaml::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The built-in defaults are exactly those of an empty configuration file.
impl Default for NodeConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("an empty configuration is valid")
    }
}

impl NodeConfig {
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self> {
        let mut c: Self = serde_yaml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: yaml_error(&e),
        })?;
        // A long allow list repeats a few reasons: one copy of each lives on (see `text`).
        let mut texts = crate::text::Texts::default();
        for a in &mut c.allow {
            texts.share(&mut a.reason);
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
        Self::from_yaml(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = include_str!("../../config/node.example.yaml");
        let c = NodeConfig::from_yaml(Path::new("node.example.yaml"), text).unwrap();
        assert_eq!(c.role, Role::Worker);
        assert_eq!(c.trident.probe_port, 17546);
        assert_eq!(c.cluster.cidrs.len(), 3);
        assert_eq!(c.allow[0].ports, PortRange::single(8009));
        assert_eq!(c.events.rate_per_cpu, 10_000);
        assert_eq!(c.directory.kerberos[0].to_string(), "192.0.2.60/32");
        assert_eq!(
            c.backends.data_addresses["san-prod"][0].to_string(),
            "192.0.2.16/28"
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "role: worker\nallow:\n  - {dst: 198.51.100.10, ports: \"99999\", proto: tcp, reason: x}\n";
        let e = NodeConfig::from_yaml(Path::new("/etc/tp.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/tp.yaml: line 3"), "{e}");
        assert!(e.contains("99999"), "{e}");
        let e = NodeConfig::from_yaml(Path::new("c.yaml"), "rol: worker\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `rol`"), "{e}");
        let e = NodeConfig::from_yaml(Path::new("c.yaml"), "cluster: {cidrs: [nope]}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nope` is not an IP address or CIDR"), "{e}");
    }

    #[test]
    fn an_unreadable_file_keeps_the_os_error_as_its_source() {
        let e = NodeConfig::load(Path::new("/nonexistent/tp.yaml")).unwrap_err();
        match &e {
            Error::Io {
                action,
                path,
                source,
            } => {
                assert_eq!(*action, "reading");
                assert_eq!(path, Path::new("/nonexistent/tp.yaml"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        let chain = format!("{:#}", anyhow::Error::new(e));
        assert!(
            chain.starts_with("reading /nonexistent/tp.yaml: "),
            "{chain}"
        );
    }
}
