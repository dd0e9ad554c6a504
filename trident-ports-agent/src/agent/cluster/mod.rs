//! The cluster source: what Trident knows, from the Kubernetes API. One kube-rs watcher (plain
//! list+watch) per kind keeps a trimmed copy of the objects (see `objects`); a change wakes the
//! debouncer, which asks the reconcile worker for one compile-and-apply. The worker reads a
//! [`ClusterView`]: the objects as documents for the backend reader (one model, two sources),
//! and this node's facts.
//!
//! Faults never weaken the running policy: while the API server is unreachable the copy stays
//! as it was (the watchers retry with backoff) and the metrics say for how long; at start
//! without it, the state of the last applied policy is read back from disk (`saved`).
pub mod node_events;
mod objects;
mod saved;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    core::DynamicObject,
    runtime::{WatchStreamExt as _, watcher},
};
pub use objects::Kind;
use objects::{Key, Scope};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{error, info, warn};

pub use super::cluster_types::{ClusterArgs, ClusterView, NodeFacts, Status, Unreachable};
use crate::{backends::Doc, config::Kubernetes};

/// Where the agent finds the cluster and itself in it, after the command line and the
/// environment had their say.
#[derive(Clone, Debug)]
pub struct Settings {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub node: Option<String>,
    pub read_secrets: bool,
    pub debounce: Duration,
    pub start_timeout: Duration,
    pub state_file: Option<PathBuf>,
    /// Post denied storage flows as Events on the Node, at most every this often (`None`: off).
    pub node_events: Option<Duration>,
}

impl Settings {
    /// The configuration's `kubernetes` section, overridden by `--kubeconfig`/`--node-name`;
    /// the node name falls back to `NODE_NAME` (the downward API).
    pub fn new(k: &Kubernetes, kubeconfig: Option<&Path>, node: Option<&str>) -> Self {
        Settings {
            kubeconfig: kubeconfig
                .map(Path::to_path_buf)
                .or_else(|| k.kubeconfig.clone()),
            namespace: k.trident_namespace.clone(),
            node: node
                .map(str::to_string)
                .or_else(|| k.node_name.clone())
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())),
            read_secrets: k.read_secrets,
            debounce: k.debounce,
            start_timeout: k.start_timeout,
            state_file: (k.state_file.as_os_str() != "none").then(|| k.state_file.clone()),
            node_events: k.node_events.then_some(k.node_event_interval),
        }
    }
}

/// Connects, starts the watchers and waits for the first complete view (up to
/// `kubernetes.startTimeout`). `None` when the cluster is not a source.
pub async fn connect(
    k: &Kubernetes,
    args: &ClusterArgs,
    need_node: bool,
    unreachable: Unreachable,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    if !args.enabled(k) {
        return Ok(None);
    }
    let settings = Settings::new(k, args.kubeconfig.as_deref(), args.node_name.as_deref());
    if need_node && settings.node.is_none() {
        anyhow::bail!(
            "kubernetes: this node's name is unknown: give --node-name, kubernetes.nodeName or NODE_NAME"
        );
    }
    let client = client(settings.kubeconfig.as_deref()).await?;
    let timeout = settings.start_timeout;
    let cluster = Cluster::start(&client, settings);
    match cluster.wait_synced(timeout).await {
        Err(refused) => anyhow::bail!(refused),
        Ok(true) => {
            let st = cluster.status();
            info!(objects = ?st.objects, node = ?cluster.settings.node, "kubernetes: watching the cluster");
        }
        Ok(false) if unreachable == Unreachable::Fail => {
            anyhow::bail!("kubernetes: no complete answer from the API server in {timeout:?}")
        }
        Ok(false) => match cluster.restore() {
            Ok(n) => warn!(
                "kubernetes: no complete answer from the API server in {timeout:?}: starting from \
                 the cluster state saved with the last applied policy ({n} objects) plus files; \
                 watching goes on"
            ),
            Err(e) => warn!(
                "kubernetes: no complete answer from the API server in {timeout:?} and no saved \
                 state ({e}): starting from files and what has been listed; watching goes on"
            ),
        },
    }
    Ok(Some(Arc::new(cluster)))
}

/// A client for `kubeconfig`, or (without one) `KUBECONFIG`, `~/.kube/config`, then the pod's
/// service account.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("no Kubernetes configuration: {e}"))?,
    };
    Client::try_from(config).map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))
}

#[derive(Default)]
struct State {
    /// The kinds watched.
    kinds: BTreeSet<Kind>,
    objects: BTreeMap<Key, Kept>,
    /// Objects of a kind being listed again (Init..InitDone), swapped in whole at the end.
    listing: BTreeMap<Kind, BTreeMap<Key, Kept>>,
    synced: BTreeSet<Kind>,
    failing: BTreeMap<Kind, (Instant, String)>,
    /// RBAC refusals: the verb refused and the server's message.
    refused: BTreeMap<Kind, (&'static str, String)>,
    from_disk: bool,
    /// Counts the changes of `objects`, so that `save` can tell an unchanged state.
    revision: u64,
    /// The revision last saved.
    saved: Option<u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    /// A change waits out its debounce: only its widening is in force.
    pending: AtomicBool,
}

/// The running source: its watchers stop when it drops.
pub struct Cluster {
    client: Client,
    shared: Arc<Shared>,
    settings: Settings,
    kinds: Vec<Kind>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    /// Starts one watcher per kind the settings call for.
    pub fn start(client: &Client, settings: Settings) -> Cluster {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Secret || settings.read_secrets)
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                kinds: kinds.iter().copied().collect(),
                ..State::default()
            }),
            changed: Notify::new(),
            pending: AtomicBool::new(false),
        });
        let tasks = kinds
            .iter()
            .map(|&kind| {
                let api: Api<DynamicObject> = match kind.scope() {
                    Scope::Trident => Api::namespaced_with(
                        client.clone(),
                        &settings.namespace,
                        &kind.api_resource(),
                    ),
                    Scope::Cluster => Api::all_with(client.clone(), &kind.api_resource()),
                };
                let mut config = watcher::Config::default();
                match (kind, &settings.node) {
                    (Kind::Node, Some(n)) => config = config.fields(&format!("metadata.name={n}")),
                    (Kind::Pod, _) => config = config.labels(objects::CONTROLLER_LABEL),
                    _ => {}
                }
                let (shared, ns) = (shared.clone(), settings.namespace.clone());
                tokio::spawn(watch(kind, api, config, shared, ns))
            })
            .collect();
        Cluster {
            client: client.clone(),
            shared,
            settings,
            kinds,
            tasks,
        }
    }

    /// Starts posting denied storage flows as Events on this Node, when configured to.
    pub fn post_node_events(
        &self,
        hub: &Arc<crate::events::hub::Hub>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (interval, node) = (self.settings.node_events?, self.settings.node.clone()?);
        info!(
            ?interval,
            node, "posting denied storage flows as Events on the Node"
        );
        let poster = node_events::NodeEvents {
            client: self.client.clone(),
            node,
            interval,
            budget: 10,
        };
        Some(tokio::spawn(poster.run(hub.clone())))
    }

    /// Waits until every watcher has its first complete list, or `timeout`; true when they do.
    /// An RBAC refusal ends the wait at once: it is an error, not a delay.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            {
                let s = self.shared.state.lock().unwrap();
                if let Some((kind, (verb, why))) = s.refused.iter().next() {
                    return Err(refusal(*kind, verb, &self.settings.namespace, why));
                }
                if self.kinds.iter().all(|k| s.synced.contains(k)) {
                    return Ok(true);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(false);
            }
        }
    }

    /// What the worker compiles: the documents and node facts of the objects now known.
    pub fn view(&self) -> ClusterView {
        let s = self.shared.state.lock().unwrap();
        let node = self.settings.node.as_deref();
        // The few objects the node's facts and its volumes come from, parsed once.
        let about_node: Vec<(&Key, Value)> = s
            .objects
            .iter()
            .filter(|(k, _)| matches!(k.0, Kind::Node | Kind::Pod | Kind::TridentVolumePublication))
            .map(|(k, v)| (k, v.value()))
            .collect();
        let published =
            node.map(|n| objects::published_volumes(n, about_node.iter().map(|(k, v)| (*k, v))));
        let facts = node
            .map(|n| objects::node_facts(n, about_node.iter().map(|(k, v)| (*k, v))))
            .unwrap_or_default();
        let mut docs = Vec::new();
        for (k, v) in &s.objects {
            let keep = match k.0 {
                Kind::TridentVolumePublication | Kind::Node | Kind::Pod => false,
                // Without a node name every volume counts: a plan of the whole cluster.
                Kind::TridentVolume => published.as_ref().is_none_or(|p| p.contains(&k.2)),
                Kind::VolumeAttachment => node.is_none_or(|n| {
                    v.value().pointer("/spec/nodeName").and_then(Value::as_str) == Some(n)
                }),
                _ => true,
            };
            if keep {
                docs.push(Doc {
                    origin: v.origin.clone(),
                    text: v.text.clone(),
                });
            }
        }
        ClusterView {
            docs,
            facts,
            complete: self.kinds.iter().all(|k| s.synced.contains(k)),
            from_disk: s.from_disk,
        }
    }

    pub fn status(&self) -> Status {
        let s = self.shared.state.lock().unwrap();
        let mut objects = BTreeMap::new();
        for k in s.objects.keys() {
            *objects.entry(k.0.name()).or_insert(0) += 1;
        }
        let connected = s.failing.is_empty() && self.kinds.iter().all(|k| s.synced.contains(k));
        Status {
            connected,
            stale: s
                .failing
                .values()
                .map(|(since, _)| since.elapsed())
                .max()
                .unwrap_or_default(),
            from_disk: s.from_disk,
            objects,
            refused: s
                .refused
                .iter()
                .map(|(k, (verb, why))| refusal(*k, verb, &self.settings.namespace, why))
                .collect(),
        }
    }

    /// Starts from the state saved with the last applied policy (the API server did not answer
    /// in time); watchers that list later replace it kind by kind.
    pub fn restore(&self) -> Result<usize, String> {
        let Some(path) = &self.settings.state_file else {
            return Err("no state file (kubernetes.stateFile: none)".into());
        };
        let saved = saved::load(path)?;
        let mut s = self.shared.state.lock().unwrap();
        let n = saved.len();
        for (k, v) in saved {
            if !s.synced.contains(&k.0) {
                let kept = Kept::new(&k, &v);
                s.objects.insert(k, kept);
            }
        }
        s.from_disk = true;
        Ok(n)
    }

    /// Keeps the state the policy just applied was compiled from, for a start without the API
    /// server. Only complete views are kept, never one restored from disk, and an unchanged
    /// one is not written again.
    pub fn save(&self) {
        let Some(path) = &self.settings.state_file else {
            return;
        };
        let (objects, revision) = {
            let s = self.shared.state.lock().unwrap();
            if s.from_disk
                || !self.kinds.iter().all(|k| s.synced.contains(k))
                || s.saved == Some(s.revision)
            {
                return;
            }
            let objects: Vec<(Key, Arc<str>)> = s
                .objects
                .iter()
                .map(|(k, v)| (k.clone(), v.text.clone()))
                .collect();
            (objects, s.revision)
        };
        match saved::store(path, objects.iter().map(|(k, t)| (k, &**t))) {
            Ok(()) => self.shared.state.lock().unwrap().saved = Some(revision),
            Err(e) => warn!(
                "kubernetes: keeping the cluster state in {}: {e}",
                path.display()
            ),
        }
    }

    /// True while a change waits out its debounce: a periodic reconcile then leaves it to the
    /// debounced one, which follows shortly (it would apply what the change takes away early).
    pub fn pending(&self) -> bool {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Turns changes into reconcile requests. What a change adds is applied at once (`Widen`);
    /// the whole change waits until no change has come for `debounce`, so that what arrives
    /// meanwhile is compiled with it and nothing is taken away on the way (an object deleted
    /// and created again). Every change restarts the wait: what a change takes away waits a
    /// whole debounce after it, never only what was left of an earlier change's (which applied
    /// it early, and held its additions back until then: nineteenth session). A cluster that
    /// never goes quiet for a debounce keeps what its changes took away until it does.
    pub fn debounce(
        &self,
        requests: std::sync::mpsc::Sender<super::reconcile::Trigger>,
    ) -> tokio::task::JoinHandle<()> {
        let (shared, wait) = (self.shared.clone(), self.settings.debounce);
        tokio::spawn(async move {
            loop {
                shared.changed.notified().await;
                shared.pending.store(true, Ordering::SeqCst);
                if requests.send(super::reconcile::Trigger::Widen).is_err() {
                    return;
                }
                let quiet = tokio::time::sleep(wait);
                tokio::pin!(quiet);
                loop {
                    tokio::select! {
                        () = &mut quiet => break,
                        () = shared.changed.notified() => {
                            if requests.send(super::reconcile::Trigger::Widen).is_err() {
                                return;
                            }
                            quiet.as_mut().reset(tokio::time::Instant::now() + wait);
                        }
                    }
                }
                shared.pending.store(false, Ordering::SeqCst);
                if requests.send(super::reconcile::Trigger::Cluster).is_err() {
                    return;
                }
            }
        })
    }
}

fn refusal(kind: Kind, verb: &str, namespace: &str, why: &str) -> String {
    let scope = match kind.scope() {
        Scope::Trident => format!(" in namespace {namespace}"),
        Scope::Cluster => String::new(),
    };
    format!(
        "kubernetes: RBAC refuses `{verb}` on {}{scope}: {why}",
        kind.resource()
    )
}

async fn watch(
    kind: Kind,
    api: Api<DynamicObject>,
    config: watcher::Config,
    shared: Arc<Shared>,
    namespace: String,
) {
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let changed = {
            let mut s = shared.state.lock().unwrap();
            match ev {
                Ok(ev) => {
                    if let Some((since, _)) = s.failing.remove(&kind) {
                        info!(kind = kind.name(), after = ?since.elapsed(), "kubernetes: watching again");
                    }
                    s.refused.remove(&kind);
                    apply(&mut s, kind, ev)
                }
                Err(e) => {
                    fail(&mut s, kind, &e, &namespace);
                    false
                }
            }
        };
        if changed {
            shared.state.lock().unwrap().revision += 1;
            shared.changed.notify_one();
        }
    }
}

/// A kept object as compact JSON: ten thousand PVs as trees of maps cost several times the
/// memory of their text, and they are read only when a snapshot is taken. Shared, so that a
/// snapshot's documents are the kept texts themselves (the backend reader knows an unchanged
/// object by its text).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    text: Arc<str>,
    /// Where the backend reader says it comes from (`objects::origin`).
    origin: Arc<str>,
}

impl Kept {
    fn new(k: &Key, v: &Value) -> Kept {
        Kept {
            text: v.to_string().into(),
            origin: objects::origin(k).into(),
        }
    }

    fn value(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// Records one watch event; true when the kept objects changed.
fn apply(s: &mut State, kind: Kind, ev: watcher::Event<DynamicObject>) -> bool {
    match ev {
        watcher::Event::Init => {
            s.listing.insert(kind, BTreeMap::new());
            false
        }
        watcher::Event::InitApply(o) => {
            if let Some(v) = objects::trim(kind, &o) {
                let k = objects::key(kind, &o);
                let kept = Kept::new(&k, &v);
                s.listing.entry(kind).or_default().insert(k, kept);
            }
            false
        }
        watcher::Event::InitDone => {
            let fresh = s.listing.remove(&kind).unwrap_or_default();
            let old: BTreeMap<Key, Kept> = s
                .objects
                .iter()
                .filter(|(k, _)| k.0 == kind)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            s.objects.retain(|k, _| k.0 != kind);
            let changed = old != fresh || !s.synced.contains(&kind) || s.from_disk;
            s.objects.extend(fresh);
            s.synced.insert(kind);
            if s.from_disk && s.kinds.iter().all(|k| s.synced.contains(k)) {
                // Every watcher listed: nothing restored is left.
                s.from_disk = false;
            }
            changed
        }
        watcher::Event::Apply(o) => {
            let k = objects::key(kind, &o);
            match objects::trim(kind, &o).map(|v| Kept::new(&k, &v)) {
                Some(v) => s.objects.insert(k, v.clone()) != Some(v),
                None => s.objects.remove(&k).is_some(),
            }
        }
        watcher::Event::Delete(o) => s.objects.remove(&objects::key(kind, &o)).is_some(),
    }
}

fn fail(s: &mut State, kind: Kind, e: &watcher::Error, namespace: &str) {
    // The watcher lists first, then watches: which call failed names the verb.
    let api_status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(st)) => Some(("list", st.as_ref())),
        watcher::Error::WatchStartFailed(kube::Error::Api(st))
        | watcher::Error::WatchFailed(kube::Error::Api(st)) => Some(("watch", st.as_ref())),
        _ => None,
    };
    if let Some((verb, st)) = api_status.filter(|(_, st)| st.is_forbidden()) {
        if s.refused.insert(kind, (verb, st.message.clone())).is_none() {
            error!("{}", refusal(kind, verb, namespace, &st.message));
        }
    }
    let msg = e.to_string();
    match s.failing.get_mut(&kind) {
        Some((_, last)) if *last == msg => {}
        Some((_, last)) => *last = msg,
        None => {
            warn!(
                kind = kind.name(),
                "kubernetes: {msg}; the running policy stays, retrying"
            );
            s.failing.insert(kind, (Instant::now(), msg));
        }
    }
}
