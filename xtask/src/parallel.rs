//! Work that waits more than it computes (guests under emulation, test binaries, fuzzers on one
//! core each) run from a queue, a few at a time.
use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

/// How many at a time: the environment variable `var` when it holds a positive number, else
/// `default`.
pub(crate) fn jobs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// `f` of every item, `jobs` at a time, taken in order from a queue (a worker that finishes
/// takes the next item at once); the results in the items' order.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .expect("every item was taken by a worker that finished")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_item_once_in_order_at_any_width() {
        let items: Vec<u32> = (0..17).collect();
        for jobs in [1, 2, 3, 40] {
            let seen = std::sync::Mutex::new(Vec::new());
            let out = super::map(&items, jobs, |i| {
                seen.lock().unwrap().push(*i);
                i * 2
            });
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
            let mut seen = seen.into_inner().unwrap();
            seen.sort_unstable();
            assert_eq!(seen, items);
        }
        assert!(super::map(&[] as &[u32], 2, |i| *i).is_empty());
    }
}
