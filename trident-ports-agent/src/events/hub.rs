//! Where events go once decoded: stdout and an optional size-rotated file (written in line, so
//! nothing is lost there), a bounded in-memory history for `flows --since`, and any number of
//! followers through a broadcast channel that never blocks the agent: a follower that falls
//! behind is told how many events it missed.
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::broadcast;

use super::Record;

/// A published event and its number: followers use the number to join history and live events
/// without a gap or a duplicate.
pub type Numbered = (u64, Arc<Record>);

pub struct Hub {
    tx: broadcast::Sender<Numbered>,
    history: Mutex<(u64, VecDeque<(SystemTime, Numbered)>)>,
    capacity: usize,
}

impl Hub {
    /// `history`: events kept for `--since`; `follower_buffer`: events a follower may lag.
    pub fn new(history: usize, follower_buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(follower_buffer.max(1));
        Hub {
            tx,
            history: Mutex::new((0, VecDeque::with_capacity(history.min(65_536)))),
            capacity: history,
        }
    }

    pub fn publish(&self, rec: Record) {
        let rec = Arc::new(rec);
        // Numbering and sending under one lock keeps numbers in broadcast order.
        let mut h = self.history.lock().unwrap();
        h.0 += 1;
        let item = (h.0, rec);
        if self.capacity > 0 {
            if h.1.len() == self.capacity {
                h.1.pop_front();
            }
            h.1.push_back((SystemTime::now(), item.clone()));
        }
        // No receiver is not an error: nobody is following.
        let _ = self.tx.send(item);
    }

    /// A live subscription, and the kept events of the last `age` (all when `None`) taken at the
    /// same instant: live events numbered up to the last one returned are already in it.
    pub fn follow(&self, age: Option<Duration>) -> (broadcast::Receiver<Numbered>, Vec<Numbered>) {
        let h = self.history.lock().unwrap();
        let rx = self.tx.subscribe();
        (rx, Self::filter(&h.1, age))
    }

    /// A receiver that is never used (for one-shot history requests).
    pub fn subscribe_none(&self) -> broadcast::Receiver<Numbered> {
        self.tx.subscribe()
    }

    /// The kept events of the last `age` (all when `None`).
    pub fn since(&self, age: Option<Duration>) -> Vec<Numbered> {
        Self::filter(&self.history.lock().unwrap().1, age)
    }

    fn filter(h: &VecDeque<(SystemTime, Numbered)>, age: Option<Duration>) -> Vec<Numbered> {
        let cutoff = age.and_then(|a| SystemTime::now().checked_sub(a));
        h.iter()
            .filter(|(t, _)| cutoff.is_none_or(|c| *t >= c))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A JSON-lines file rotated by size: `path` is current, `path.1` the previous one, up to `keep`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    written: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            max_bytes,
            keep,
            file,
            written,
        })
    }

    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.written += line.len() as u64 + 1;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(n: u32) -> Record {
        Record {
            ts: format!("t{n}"),
            verdict: "denied".into(),
            direction: "egress".into(),
            iface: "eth0".into(),
            src: "192.0.2.1:1".into(),
            dst: "192.0.2.2:2".into(),
            proto: "tcp".into(),
            reason: "no-rule".into(),
            tcp_flags: None,
            suppressed: n,
            backend: None,
            purpose: None,
            hint: None,
        }
    }

    #[test]
    fn history_is_bounded_and_followers_learn_what_they_missed() {
        let hub = Hub::new(3, 2);
        let (mut slow, past) = hub.follow(None);
        assert!(past.is_empty());
        for n in 0..5 {
            hub.publish(rec(n));
        }
        let kept: Vec<(u64, u32)> = hub
            .since(None)
            .iter()
            .map(|(i, r)| (*i, r.suppressed))
            .collect();
        assert_eq!(kept, vec![(3, 2), (4, 3), (5, 4)]);
        assert!(hub.since(Some(Duration::from_secs(60))).len() == 3);
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(slow.try_recv().unwrap().0, 4);
        // A follower joining now gets the history, and live events after it.
        let (mut rx, past) = hub.follow(None);
        assert_eq!(past.last().unwrap().0, 5);
        hub.publish(rec(9));
        assert_eq!(rx.try_recv().unwrap().0, 6);
    }

    #[test]
    fn file_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("tp-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for n in 0..10 {
            f.write_line(&format!("{{\"n\":{n},\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}}"))
                .unwrap();
        }
        let lines = |p: &PathBuf| std::fs::read_to_string(p).map_or(0, |s| s.lines().count());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(lines(&dir.join("events.json.1")) > 0 && lines(&dir.join("events.json.2")) > 0);
        assert!(
            !dir.join("events.json.3").exists(),
            "keeps two rotated files"
        );
        let total =
            lines(&path) + lines(&dir.join("events.json.1")) + lines(&dir.join("events.json.2"));
        assert!(total >= 6, "recent lines are kept: {total}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
