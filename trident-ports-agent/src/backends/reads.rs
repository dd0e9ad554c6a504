//! What reading each cluster object gave, kept while its text stays the same. A change of one
//! backend among a thousand, with ten thousand volumes, then parses and reads one object, not
//! eleven thousand (the snapshot took 142 ms before, about 100 of it here; now about 10).
//!
//! A kept reading is used only when nothing it depended on moved: the object's text is the
//! same, the Secrets are the same (a SolidFire backend reads its endpoint from one), and reading
//! it resolved no host name (a name may resolve differently next time, which the periodic look
//! is there to notice). Anything else is read again, exactly as without this memo.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use serde_yaml::Value;

use super::{Inventory, Skipped, endpoint::host_names};

/// One object from elsewhere (the cluster source): where it comes from and its JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub origin: Arc<str>,
    pub text: Arc<str>,
}

/// The readings of the last snapshot's cluster objects, by origin.
#[derive(Default)]
pub struct Reads {
    /// The Secrets the kept readings were made with.
    secrets: Secrets,
    by_origin: HashMap<Arc<str>, Read>,
    /// The readings made by the last pass (the others were kept from before).
    fresh: Vec<Arc<str>>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reads({} objects)", self.by_origin.len())
    }
}

pub(super) type Secrets = BTreeMap<String, (String, u16)>;

/// The Secrets one document defines: name, then the host and port of their endpoint.
type Defined = Vec<(String, (String, u16))>;

#[derive(Clone, Debug)]
struct Read {
    text: Arc<str>,
    /// The Secrets it defines, in order, and those it fails to.
    secrets: Defined,
    refused: Vec<Skipped>,
    /// What reading it gave, unless that resolved a host name.
    found: Option<Inventory>,
}

/// One snapshot's pass over the cluster's documents: [`Pass::secrets`] first (every source's
/// Secrets are known before any backend is read), then [`Pass::read`].
pub(super) struct Pass<'a> {
    reads: &'a mut Reads,
    docs: &'a [Doc],
    items: Vec<Item>,
}

/// A document whose kept reading is of the same text (`Kept`), or one read now.
enum Item {
    Kept,
    /// Its Secrets read (after `secrets`), and its parse (`None` inside: a text that does not
    /// parse is left out, as it always was).
    New(Box<(Option<Read>, Option<Value>)>),
}

impl<'a> Pass<'a> {
    pub(super) fn new(reads: &'a mut Reads, docs: &'a [Doc]) -> Self {
        let items = docs
            .iter()
            .map(|d| match reads.by_origin.get(&d.origin) {
                Some(r) if Arc::ptr_eq(&r.text, &d.text) || r.text == d.text => Item::Kept,
                _ => Item::New(Box::new((None, serde_json::from_str(&d.text).ok()))),
            })
            .collect();
        Pass { reads, docs, items }
    }

    /// Adds the documents' Secrets to `secrets` and their refusals to `skipped`, in order.
    pub(super) fn secrets(&mut self, secrets: &mut Secrets, skipped: &mut Vec<Skipped>) {
        for (item, d) in self.items.iter_mut().zip(self.docs) {
            let r = match item {
                Item::Kept => &self.reads.by_origin[&d.origin],
                Item::New(new) => new.0.get_or_insert_with(|| {
                    let v = &new.1;
                    let (secrets, refused) = v
                        .as_ref()
                        .map(|v| read_secrets(&d.origin, v))
                        .unwrap_or_default();
                    Read {
                        text: d.text.clone(),
                        secrets,
                        refused,
                        found: None,
                    }
                }),
            };
            secrets.extend(r.secrets.iter().cloned());
            skipped.extend(r.refused.iter().cloned());
        }
    }

    /// Adds what the documents say to `inv`, reading again only what the memo cannot answer
    /// with the same `secrets`; keeps the readings of these documents (and only these).
    pub(super) fn read(self, secrets: &Secrets, inv: &mut Inventory) {
        let Pass { reads, docs, items } = self;
        let same_secrets = reads.secrets == *secrets;
        reads.fresh.clear();
        for (item, d) in items.into_iter().zip(docs) {
            let (mut r, v) = match item {
                Item::Kept => {
                    let kept = &reads.by_origin[&d.origin];
                    if let Some(fragment) = kept.found.as_ref().filter(|_| same_secrets) {
                        inv.append(fragment.clone());
                        continue;
                    }
                    (kept.clone(), parse(d))
                }
                Item::New(new) => {
                    let (r, v) = *new;
                    (r.expect("`secrets` ran first"), v)
                }
            };
            let before = host_names();
            let mut fragment = Inventory::default();
            if let Some(v) = &v {
                let mut objects = Vec::new();
                super::flatten(d.origin.to_string(), v, &mut objects);
                for (origin, o) in objects {
                    super::read_object(&origin, o, secrets, &mut fragment);
                }
            }
            r.found = (host_names() == before).then(|| fragment.clone());
            inv.append(fragment);
            reads.by_origin.insert(d.origin.clone(), r);
            reads.fresh.push(d.origin.clone());
        }
        if reads.by_origin.len() > docs.len() {
            let present: HashSet<&str> = docs.iter().map(|d| &*d.origin).collect();
            reads.by_origin.retain(|o, _| present.contains(&**o));
        }
        reads.secrets.clone_from(secrets);
    }
}

impl Reads {
    /// Copies the last pass's new readings: a pass runs on a thread of its own, whose heap
    /// the agent gives back, and what stays in this memo must not pin it (it did: 86 MiB
    /// resident instead of 50 with the thousand-backend cluster).
    pub fn settle(&mut self) {
        let fresh = std::mem::take(&mut self.fresh);
        if fresh.len() * 2 > self.by_origin.len() {
            let copy = self.by_origin.clone();
            self.by_origin = copy;
        } else {
            for origin in fresh {
                if let Some((k, r)) = self.by_origin.remove_entry(&origin) {
                    let copy = (k.clone(), r.clone());
                    self.by_origin.insert(copy.0, copy.1);
                }
            }
        }
        let copy = self.secrets.clone();
        self.secrets = copy;
    }
}

fn parse(d: &Doc) -> Option<Value> {
    serde_json::from_str(&d.text).ok()
}

fn read_secrets(origin: &str, v: &Value) -> (Defined, Vec<Skipped>) {
    let mut objects = Vec::new();
    super::flatten(origin.to_string(), v, &mut objects);
    let (mut defined, mut refused) = (Secrets::new(), Vec::new());
    for (origin, o) in objects {
        if super::kind(o) == Some("Secret") {
            if let Err(why) = super::collect_secret(o, &mut defined) {
                refused.push(Skipped {
                    origin,
                    name: None,
                    why,
                });
            }
        }
    }
    (defined.into_iter().collect(), refused)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::backends::load_with;

    fn doc(origin: &str, v: &serde_json::Value) -> Doc {
        Doc {
            origin: origin.into(),
            text: v.to_string().into(),
        }
    }

    fn nas(name: &str, mgmt: &str) -> serde_json::Value {
        json!({"apiVersion": "trident.netapp.io/v1", "kind": "TridentBackendConfig",
            "metadata": {"name": name},
            "spec": {"version": 1, "storageDriverName": "ontap-nas", "backendName": name,
                "managementLIF": mgmt, "dataLIF": "192.0.2.20"}})
    }

    fn secret(host: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sf"},
            "stringData": {"EndPoint": format!("https://u:p@{host}/json-rpc/8.0")}})
    }

    fn cluster() -> Vec<Doc> {
        vec![
            doc("secret/trident/sf", &secret("198.51.100.70")),
            doc("tridentbackendconfig/trident/a", &nas("a", "192.0.2.10")),
            // A host name: read again every time, since it may resolve differently.
            doc("tridentbackendconfig/trident/b", &nas("b", "localhost")),
            doc(
                "tridentbackendconfig/trident/sf",
                &json!({"apiVersion": "trident.netapp.io/v1", "kind": "TridentBackendConfig",
                    "metadata": {"name": "sf"},
                    "spec": {"version": 1, "storageDriverName": "solidfire-san",
                        "credentials": {"name": "sf"}, "SVIP": "198.51.100.71:3260"}}),
            ),
            doc(
                "persistentvolume/pv-1",
                &json!({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": "pv-1"},
                    "spec": {"mountOptions": ["nfsvers=3"], "csi": {"driver": "csi.trident.netapp.io",
                        "volumeHandle": "pv-1", "volumeAttributes": {"backendUUID": "u-a"}}}}),
            ),
            doc(
                "tridentbackendconfig/trident/bad",
                &json!({"kind": "TridentBackendConfig"}),
            ),
            Doc {
                origin: "persistentvolume/not-json".into(),
                text: "{".into(),
            },
        ]
    }

    /// What reading `docs` from scratch gives.
    fn fresh(docs: &[Doc]) -> Inventory {
        load_with(
            &[],
            Some((Path::new("kubernetes"), docs)),
            &mut Reads::default(),
        )
        .unwrap()
    }

    fn read(docs: &[Doc], reads: &mut Reads) -> Inventory {
        let inv = load_with(&[], Some((Path::new("kubernetes"), docs)), reads).unwrap();
        reads.settle();
        inv
    }

    #[test]
    fn kept_readings_read_as_the_objects_do() {
        let mut docs = cluster();
        let mut reads = Reads::default();
        let first = read(&docs, &mut reads);
        assert_eq!(first, fresh(&docs));
        assert_eq!(first.backends.len(), 3, "{first:#?}");
        assert_eq!(first.volumes.len(), 1);
        assert_eq!(first.skipped.len(), 1);

        // Unchanged: only the object that names a host is read again.
        let again = load_with(&[], Some((Path::new("kubernetes"), &docs)), &mut reads).unwrap();
        assert_eq!(again, first);
        assert_eq!(reads.fresh, [Arc::from("tridentbackendconfig/trident/b")]);

        // One object changes: it alone is read again, and the result is what reading
        // everything gives.
        docs[1] = doc("tridentbackendconfig/trident/a", &nas("a", "192.0.2.11"));
        let changed = read(&docs, &mut reads);
        assert_eq!(changed, fresh(&docs));
        assert_ne!(changed, first);

        // A Secret changes: what read it (the SolidFire backend) follows.
        docs[0] = doc("secret/trident/sf", &secret("198.51.100.80"));
        let moved = read(&docs, &mut reads);
        assert_eq!(moved, fresh(&docs));
        let sf = moved
            .backends
            .iter()
            .find(|b| b.name.contains("sf") || b.origin.contains("/sf"))
            .unwrap();
        assert_eq!(
            sf.mgmt[0].net.addr().to_string(),
            "198.51.100.80",
            "{sf:#?}"
        );

        // Objects go: so do their readings.
        docs.truncate(2);
        assert_eq!(read(&docs, &mut reads), fresh(&docs));
        assert_eq!(reads.by_origin.len(), 2);
    }
}
