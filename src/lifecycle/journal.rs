//! The single node's events journal: an append-only file of JSON lines that holds every event
//! not yet acknowledged by the events service and every connection still open, so that a crash
//! loses neither. Written with one `write` per line (`O_APPEND`) before the event is acknowledged
//! to anyone: it survives the process dying (`kill -9`); a machine crash can lose what the kernel
//! had not written back.
//!
//! Lines: an event `{"seq":N,"event":..,...}` (exactly what is POSTed); `{"ack":N}` when the
//! service took every event up to `N`; and, written by compaction, `{"next":N}` and
//! `{"open":"<conn>","user":"<user>","node":"<node>"}`. Compaction rewrites the file (to a temporary file, then
//! renamed over it) once it is mostly acknowledged history.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Event, LifecycleError};
use crate::config::events::EventKind;

/// Lines written before a compaction is considered.
const COMPACT_AFTER: usize = 4096;

/// The journal and what it implies: the open connections and the unsent events.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file (for deciding on compaction).
    lines: usize,
    next_seq: u64,
    /// Open connections: conn -> (user, the node that held it).
    open: HashMap<Arc<str>, Open>,
    /// Events not yet acknowledged, oldest first: (seq, the JSON object).
    unsent: VecDeque<(u64, Bytes)>,
}

/// An open connection's user and node (a previous run's node id may differ from this one's).
type Open = (Arc<str>, Arc<str>);

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LifecycleError + '_ {
    move |source| LifecycleError::Journal {
        path: path.display().to_string(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (or creates) the journal at `path`, and records a disconnect (reason
    /// `node_restart`) for every connection a previous run left open. Returns the journal and
    /// the number of those disconnects.
    pub(crate) fn open(path: &Path, node: &str) -> Result<(Journal, usize), LifecycleError> {
        let err = io_err(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(&err)?;
        }
        let mut acked = 0u64;
        let mut next_seq = 1u64;
        let mut open: HashMap<Arc<str>, Open> = HashMap::new();
        let mut events: Vec<(u64, Bytes)> = Vec::new();
        if path.exists() {
            let reader = BufReader::new(File::open(path).map_err(&err)?);
            for line in reader.split(b'\n') {
                let line = line.map_err(&err)?;
                // A line cut short by a crash mid-write is the only kind that does not parse.
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let text = |k: &str| v.get(k).and_then(Value::as_str).map(Arc::<str>::from);
                let held = || {
                    let user = text("user").unwrap_or_else(|| "".into());
                    (user, text("node").unwrap_or_else(|| node.into()))
                };
                if let Some(n) = v.get("ack").and_then(Value::as_u64) {
                    acked = acked.max(n);
                } else if let Some(n) = v.get("next").and_then(Value::as_u64) {
                    next_seq = next_seq.max(n);
                } else if let Some(conn) = text("open") {
                    open.insert(conn, held());
                } else if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                    next_seq = next_seq.max(seq + 1);
                    match (v.get("event").and_then(Value::as_str), text("conn")) {
                        (Some("connect"), Some(conn)) => {
                            open.insert(conn, held());
                        }
                        (Some("disconnect"), Some(conn)) => {
                            open.remove(&conn);
                        }
                        _ => {}
                    }
                    events.push((seq, Bytes::from(line)));
                }
            }
        }
        let unsent: VecDeque<(u64, Bytes)> =
            events.into_iter().filter(|(s, _)| *s > acked).collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(&err)?;
        let mut j = Journal {
            path: path.to_owned(),
            file,
            lines: 0,
            next_seq,
            open: HashMap::new(),
            unsent,
        };
        let left: Vec<(Arc<str>, Open)> = open.into_iter().collect();
        for (conn, (user, held_by)) in &left {
            let e = Event {
                kind: EventKind::Disconnect,
                conn: conn.clone(),
                user: user.clone(),
                topic: None,
                code: Some(crate::protocol::close::ABNORMAL),
            };
            j.append(&e, held_by, Some(node))?;
        }
        j.compact()?;
        Ok((j, left.len()))
    }

    /// Appends `e` of a connection held by `node` and queues it for sending. `restart_by`: a
    /// disconnect that this node (its id) records for a previous run (`node_restart`).
    pub(crate) fn append(
        &mut self,
        e: &Event,
        node: &str,
        restart_by: Option<&str>,
    ) -> Result<(), LifecycleError> {
        let seq = self.next_seq;
        let mut v = json!({
            "seq": seq,
            "event": e.kind.name(),
            "conn": &*e.conn,
            "user": &*e.user,
            "node": node,
            "ts": now_ms(),
        });
        if let Some(t) = &e.topic {
            v["topic"] = json!(t.as_str());
        }
        if e.kind == EventKind::Disconnect {
            v["code"] = json!(e.code.unwrap_or(crate::protocol::close::ABNORMAL));
            match restart_by {
                None => v["reason"] = json!("closed"),
                Some(by) => {
                    v["reason"] = json!("node_restart");
                    v["by"] = json!(by);
                }
            }
        }
        let mut line = serde_json::to_vec(&v).expect("a JSON value serialises");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        line.pop();
        self.lines += 1;
        self.next_seq += 1;
        match e.kind {
            EventKind::Connect => {
                self.open
                    .insert(e.conn.clone(), (e.user.clone(), Arc::from(node)));
            }
            EventKind::Disconnect => {
                self.open.remove(&e.conn);
            }
            _ => {}
        }
        self.unsent.push_back((seq, Bytes::from(line)));
        Ok(())
    }

    /// Events not yet acknowledged.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent.len()
    }

    /// True when `conn`'s connect is recorded and its disconnect is not.
    pub(crate) fn is_open(&self, conn: &str) -> bool {
        self.open.contains_key(conn)
    }

    /// Up to `max` of the oldest unsent events: the last one's seq and the JSON objects.
    pub(crate) fn batch(&self, max: usize) -> Option<(u64, Vec<Bytes>)> {
        let last = self.unsent.iter().take(max).last()?.0;
        let events = self
            .unsent
            .iter()
            .take(max)
            .map(|(_, b)| b.clone())
            .collect();
        Some((last, events))
    }

    /// The service took every event up to `seq`.
    pub(crate) fn ack(&mut self, seq: u64) -> Result<(), LifecycleError> {
        while self.unsent.front().is_some_and(|(s, _)| *s <= seq) {
            self.unsent.pop_front();
        }
        let line = format!("{{\"ack\":{seq}}}\n");
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))?;
        self.lines += 1;
        if self.lines > COMPACT_AFTER && self.lines > 2 * (self.open.len() + self.unsent.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file as just what matters: the next seq, the open connections, the unsent
    /// events. Through a temporary file renamed over the journal, so a crash leaves one or the
    /// other, whole.
    fn compact(&mut self) -> Result<(), LifecycleError> {
        let err = io_err(&self.path);
        let tmp = self.path.with_extension("compacting");
        let mut out = Vec::with_capacity(64 * (1 + self.open.len() + self.unsent.len()));
        out.extend_from_slice(format!("{{\"next\":{}}}\n", self.next_seq).as_bytes());
        for (conn, (user, node)) in &self.open {
            let v = json!({"open": &**conn, "user": &**user, "node": &**node});
            serde_json::to_writer(&mut out, &v).expect("a JSON value serialises");
            out.push(b'\n');
        }
        for (_, e) in &self.unsent {
            out.extend_from_slice(e);
            out.push(b'\n');
        }
        let mut f = File::create(&tmp).map_err(&err)?;
        f.write_all(&out).map_err(&err)?;
        f.sync_all().map_err(&err)?;
        std::fs::rename(&tmp, &self.path).map_err(&err)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(&err)?;
        self.lines = 1 + self.open.len() + self.unsent.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, conn: &str) -> Event {
        Event {
            kind,
            conn: conn.into(),
            user: "alice".into(),
            topic: None,
            code: None,
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        std::env::temp_dir()
            .join(format!("herald-journal-{:016x}", u64::from_le_bytes(r)))
            .join(name)
    }

    #[test]
    fn a_restart_records_disconnects_for_open_connections_and_keeps_unsent_events() {
        let path = temp_path("events.journal");
        let (mut j, left) = Journal::open(&path, "n1").unwrap();
        assert_eq!(left, 0);
        j.append(&event(EventKind::Connect, "c1"), "n1", None)
            .unwrap();
        j.append(&event(EventKind::Connect, "c2"), "n1", None)
            .unwrap();
        let (last, _) = j.batch(10).unwrap();
        j.ack(last).unwrap();
        j.append(&event(EventKind::Disconnect, "c1"), "n1", None)
            .unwrap();
        drop(j);
        // The process "dies" here: c2 is still open, c1's disconnect is unsent. It comes back
        // under another node id (the default id is random).
        let (j, left) = Journal::open(&path, "n2").unwrap();
        assert_eq!(left, 1);
        let (_, events) = j.batch(10).unwrap();
        let events: Vec<Value> = events
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            (events[0]["event"].as_str(), events[0]["conn"].as_str()),
            (Some("disconnect"), Some("c1"))
        );
        assert_eq!(events[0]["reason"], "closed");
        assert_eq!(
            (events[1]["conn"].as_str(), events[1]["reason"].as_str()),
            (Some("c2"), Some("node_restart"))
        );
        assert_eq!(
            (events[1]["node"].as_str(), events[1]["by"].as_str()),
            (Some("n1"), Some("n2")),
            "the node that held it, and the one that recorded it"
        );
        assert!(events[0]["seq"].as_u64() < events[1]["seq"].as_u64());
        assert!(!j.is_open("c2"));
    }

    #[test]
    fn compaction_keeps_sequence_numbers_increasing_and_open_connections() {
        let path = temp_path("events.journal");
        let (mut j, _) = Journal::open(&path, "n1").unwrap();
        j.append(&event(EventKind::Connect, "keep"), "n1", None)
            .unwrap();
        for i in 0..3000 {
            let c = format!("c{i}");
            j.append(&event(EventKind::Connect, &c), "n1", None)
                .unwrap();
            j.append(&event(EventKind::Disconnect, &c), "n1", None)
                .unwrap();
            let (last, _) = j.batch(usize::MAX).unwrap();
            j.ack(last).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(
            lines <= COMPACT_AFTER + 1,
            "9000 lines written, {lines} kept"
        );
        drop(j);
        let (mut j, left) = Journal::open(&path, "n1").unwrap();
        assert_eq!(left, 1, "the one open connection gets its disconnect");
        let (seq, _) = j.batch(10).unwrap();
        assert!(
            seq > 6000,
            "sequence numbers continue after compaction: {seq}"
        );
        j.ack(seq).unwrap();
        assert_eq!(j.unsent(), 0);
    }
}
