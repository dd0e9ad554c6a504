//! The one step that changes what the kernel enforces: a snapshot compiled, compared with the
//! running policy and, when it differs, switched in by generation. Also the per-node mode
//! override, which changes only the configuration entry. A failure keeps the running policy.
use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicBool, Ordering},
};

use tracing::{error, info, warn};

use super::{metrics::Metrics, sources::Snapshot};
use crate::{
    datapath::Datapath,
    error::Result,
    events::{
        Record,
        explain::{Explainer, Explainers},
    },
    policy::{Mode, Policy, widen::widen},
};

/// Why a reconcile runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP or changed files: apply even an equal policy, and report a failure.
    Changed,
    /// The periodic look (host names may resolve differently): apply only a change, quietly.
    Periodic,
    /// The cluster changed: apply only a change, and report a failure.
    Cluster,
    /// The cluster just changed: apply at once what the change adds (`policy::widen`), if
    /// anything; a `Cluster` reconcile follows the debounce with the rest.
    Widen,
}

pub struct Reconciler {
    dp: Mutex<Datapath>,
    /// The policy in force (with the mode in force), shared with the explainer.
    policy: Mutex<Arc<Policy>>,
    /// The configuration's mode, and a per-node override set with `trident-ports-agent mode`.
    config_mode: Mutex<Mode>,
    mode_override: Mutex<Option<Mode>>,
    explainers: Arc<RwLock<Explainers>>,
    /// The last apply failed: the kernel may hold part of an update in place (each entry the
    /// old policy's or the new one's) or a configuration entry widened for one, so the next
    /// reconcile applies even a policy equal to `policy`, which writes it whole.
    in_doubt: AtomicBool,
    metrics: Arc<Metrics>,
    notices: tokio::sync::mpsc::UnboundedSender<Record>,
}

impl Reconciler {
    /// Takes over a datapath that already enforces `policy`; notices go to `notices`.
    pub fn new(
        dp: Datapath,
        policy: Policy,
        metrics: Arc<Metrics>,
        notices: tokio::sync::mpsc::UnboundedSender<Record>,
    ) -> Self {
        notify(&notices, &policy, None);
        // A configuration that cannot be read leaves sequence 0, which no event of the policy
        // carries: its events are then explained by the policy in force, as they should be.
        let seq = dp.config().map_or(0, |c| c.seq);
        let policy = Arc::new(policy);
        Reconciler {
            notices,
            dp: Mutex::new(dp),
            config_mode: Mutex::new(policy.mode),
            mode_override: Mutex::new(None),
            explainers: Arc::new(RwLock::new(Explainers::new(
                seq,
                Explainer::new(policy.clone()),
            ))),
            policy: Mutex::new(policy),
            in_doubt: AtomicBool::new(false),
            metrics,
        }
    }

    /// The explainers of the policy in force and the one before, for the event pump.
    pub fn explainers(&self) -> Arc<RwLock<Explainers>> {
        self.explainers.clone()
    }

    /// Refreshes the metrics from the kernel's counters.
    pub fn scrape(&self) {
        if let Ok(c) = self.dp.lock().unwrap().counters() {
            self.metrics.update(&c);
        }
    }

    pub fn persistence(&self) -> crate::datapath::Persistence {
        self.dp.lock().unwrap().persistence()
    }

    /// Compiles `snapshot` (or reports why there is none) and applies the result (for `Widen`,
    /// the running policy with what the result adds). Returns the snapshot when the policy in
    /// force is now the one it compiles to. `started` is when the sources were read: the log
    /// says how long after that the policy was in force.
    pub fn reconcile(
        &self,
        snapshot: Result<Snapshot>,
        trigger: Trigger,
        started: std::time::Instant,
    ) -> Option<Snapshot> {
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                // A widening's failure is the `Cluster` reconcile's to report.
                if !matches!(trigger, Trigger::Periodic | Trigger::Widen) {
                    error!(
                        "reload failed, keeping the running policy: {:#}",
                        anyhow::Error::new(e)
                    );
                    self.metrics.reload(false, None);
                }
                return None;
            }
        };
        let mut policy = snapshot.compile();
        *self.config_mode.lock().unwrap() = policy.mode;
        if let Some(m) = *self.mode_override.lock().unwrap() {
            policy.mode = m;
        }
        let mut current = self.policy.lock().unwrap();
        let widening = trigger == Trigger::Widen;
        if widening {
            policy = widen(&current, policy)?;
        } else if trigger != Trigger::Changed
            && !self.in_doubt.load(Ordering::Relaxed)
            && **current == policy
        {
            return Some(snapshot);
        }
        let interval_ns = snapshot.config.events.interval.as_nanos() as u64;
        let policy = Arc::new(policy);
        let applied = {
            let mut dp = self.dp.lock().unwrap();
            // A budget that cannot be written leaves the previous one: events, not verdicts.
            if let Err(e) = dp.set_event_rate(snapshot.config.events.rate_per_cpu) {
                warn!("event rate not changed: {e}");
            }
            // The event pump explains a denial by the explainer of the sequence it was judged
            // under: the new policy's must be there as soon as the kernel judges by it, or its
            // first denials read as the old policy's (a newly protected address then named
            // unprotected, and its Node event never written). It is built then, not before:
            // its index of the entries (milliseconds at 100,000) would delay the policy itself.
            dp.apply_announced(&policy, interval_ns, |cfg| {
                let explainer = Explainer::new(policy.clone());
                self.explainers.write().unwrap().install(cfg.seq, explainer);
            })
        };
        let took = started.elapsed();
        self.in_doubt.store(applied.is_err(), Ordering::Relaxed);
        match applied {
            Ok(mut a) => {
                let what = if widening {
                    "policy widened: what the change adds is in force, what it takes away follows the debounce"
                } else {
                    "policy reloaded"
                };
                info!(entries = policy.entries.len(), generation = a.config.generation, seq = a.config.seq, in_place_steps = ?a.steps, compiled_alone = a.compiled_alone, in_force_after = ?a.in_force, took = ?took, mode = ?policy.mode, "{what}");
                if let Some(e) = a.leftover.take() {
                    warn!(
                        "the generation the switch left could not be emptied; it is emptied before the next switch writes there: {:#}",
                        anyhow::Error::new(e)
                    );
                }
                for w in news(trigger, &current, &policy) {
                    warn!("{w}");
                }
                self.metrics.reload(true, Some(&a.sizes));
                self.metrics.policy(&policy);
                let changes = changes(&current, &policy);
                for (backend, added, removed) in &changes {
                    info!(backend, added, removed, "policy entries changed");
                }
                self.metrics.changed(&changes);
                notify(&self.notices, &policy, Some(&current));
                *current = policy;
                // A widened policy is not the one the snapshot compiles to.
                (!widening).then_some(snapshot)
            }
            Err(e) => {
                error!(
                    "reload failed, keeping the running policy: {:#}",
                    anyhow::Error::new(e)
                );
                self.metrics.reload(false, None);
                None
            }
        }
    }

    /// Sets (or with `None` clears) the per-node mode override; returns the mode now in force.
    /// Only the configuration entry changes: programs and policy maps stay as they are.
    pub fn set_mode(&self, mode: Option<Mode>) -> std::result::Result<Mode, String> {
        let mut policy = self.policy.lock().unwrap();
        *self.mode_override.lock().unwrap() = mode;
        let effective = mode.unwrap_or(*self.config_mode.lock().unwrap());
        self.dp
            .lock()
            .unwrap()
            .set_mode(effective)
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        if policy.mode != effective {
            let mut next = (**policy).clone();
            next.mode = effective;
            let next = Arc::new(next);
            self.explainers
                .write()
                .unwrap()
                .replace_current(Explainer::new(next.clone()));
            *policy = next;
        }
        info!(mode = ?effective, "mode switched");
        Ok(effective)
    }
}

/// The warnings of `after` to log: all of them when the operator asked for the reload (SIGHUP,
/// changed files), else those `before` did not have. A cluster change is applied twice (widened
/// at once, whole after the debounce) and a cluster of many backends changes often: its standing
/// warnings are told once, as the notices are.
fn news<'a>(trigger: Trigger, before: &Policy, after: &'a Policy) -> Vec<&'a str> {
    let told: std::collections::HashSet<&str> = if trigger == Trigger::Changed {
        std::collections::HashSet::new()
    } else {
        before.warnings.iter().map(String::as_str).collect()
    };
    after
        .warnings
        .iter()
        .map(String::as_str)
        .filter(|w| !told.contains(w))
        .collect()
}

/// Entries added and removed between `before` and `after`, by backend (`-` for entries of
/// none: the configuration's, the node ports'), in backend order.
fn changes(before: &Policy, after: &Policy) -> Vec<(String, usize, usize)> {
    use std::collections::{BTreeMap, BTreeSet};
    let (old, new): (BTreeSet<_>, BTreeSet<_>) = (
        before.entries.iter().collect(),
        after.entries.iter().collect(),
    );
    let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    fn backend(e: &crate::policy::Entry) -> &str {
        e.backend.as_deref().unwrap_or("-")
    }
    for e in new.difference(&old) {
        by.entry(backend(e)).or_default().0 += 1;
    }
    for e in old.difference(&new) {
        by.entry(backend(e)).or_default().1 += 1;
    }
    by.into_iter()
        .map(|(b, (a, r))| (b.to_string(), a, r))
        .collect()
}

/// One notice per definition the policy leaves out, and per live session it lacks something
/// for, that `before` did not: operators following `flows` see them beside the denials they may
/// explain.
fn notify(
    notices: &tokio::sync::mpsc::UnboundedSender<Record>,
    policy: &Policy,
    before: Option<&Policy>,
) {
    for (i, what) in policy.skipped.iter().enumerate() {
        if before.is_some_and(|b| b.skipped.contains(what)) {
            continue;
        }
        let why = policy
            .warnings
            .iter()
            .find(|w| w.contains(what.as_str()) && w.contains("skipped"))
            .cloned()
            .unwrap_or_else(|| format!("definition {i} skipped"));
        let _ = notices.send(Record::notice("backend-skipped", Some(what), why));
    }
    let uncovered = |p: &Policy| -> Vec<crate::policy::live::LiveReport> {
        p.live
            .iter()
            .flatten()
            .filter(|r| !r.missing.is_empty())
            .cloned()
            .collect()
    };
    let known = before.map(uncovered).unwrap_or_default();
    for r in uncovered(policy) {
        if known.iter().any(|k| k.session == r.session) {
            continue;
        }
        let what = if r.protected {
            "allowed while it exists"
        } else {
            "it will be cut"
        };
        let hint = format!(
            "live session {} needs {} that the policy does not allow: {what}",
            r.session,
            r.missing.join(", ")
        );
        let _ = notices.send(Record::notice("live-session-uncovered", None, hint));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(warnings: &[&str]) -> Policy {
        Policy {
            warnings: warnings.iter().map(ToString::to_string).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn a_standing_warning_is_told_again_only_when_the_operator_reloads() {
        let before = warned(&["backend a skipped: no address", "LIF b is a host name"]);
        let after = warned(&["backend a skipped: no address", "backend c skipped: no SVM"]);
        // The widening step and the debounced reload after it: the second tells nothing new.
        for trigger in [Trigger::Widen, Trigger::Cluster, Trigger::Periodic] {
            assert_eq!(
                news(trigger, &before, &after),
                ["backend c skipped: no SVM"],
                "{trigger:?}"
            );
            assert!(news(trigger, &after, &after).is_empty(), "{trigger:?}");
        }
        assert_eq!(
            news(Trigger::Changed, &after, &after),
            ["backend a skipped: no address", "backend c skipped: no SVM"]
        );
    }
}
