//! The owner's transactions, sans-IO: which references exist, which receivers pull them and how far they got,
//! and when a transaction ends. Fed with events and an explicit `now`; [`Transactions::poll`] returns the
//! transactions that ended and the next deadline.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// How a transaction ended (NVFlare's `TransactionDoneStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// Every reference was downloaded by every expected receiver.
    Finished,
    /// Nobody pulled for the transaction's idle timeout.
    Timeout,
    /// The owner deleted it.
    Deleted,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Finished => "finished",
            TxStatus::Timeout => "timeout",
            TxStatus::Deleted => "deleted",
        }
    }
}

/// Where one receiver stands with one reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverStatus {
    InProgress,
    Success,
    Failed(String),
}

impl ReceiverStatus {
    /// NVFlare's `DownloadStatus` names; a receiver still in progress when its transaction ends has failed.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReceiverStatus::Success => "success",
            ReceiverStatus::InProgress | ReceiverStatus::Failed(_) => "failed",
        }
    }
}

/// A transaction that ended: its status and, per (receiver, reference), how the receiver fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxOutcome {
    pub tx_id: String,
    pub status: TxStatus,
    pub refs: Vec<String>,
    pub receivers: Vec<(String, String, ReceiverStatus)>,
}

/// A snapshot of a live transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxInfo {
    pub refs: Vec<String>,
    pub num_receivers: usize,
    /// Receivers with a download in progress (whose state the owner holds).
    pub active_receivers: usize,
    pub receivers: Vec<(String, String, ReceiverStatus)>,
    pub timeout: Duration,
}

/// A receiver's status changed: reported to the owner as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverEvent {
    pub tx_id: String,
    pub ref_id: String,
    pub receiver: String,
    pub status: ReceiverStatus,
}

/// What a request's reference resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Active {
        tx_id: String,
        num_receivers: usize,
    },
    /// Its transaction ended recently; late requests are told so.
    Ended(TxStatus),
    /// Its transaction ended, and this receiver had it all: a retry of a lost last reply.
    AlreadyDone,
    Unknown,
}

struct Progress {
    status: ReceiverStatus,
    last_active: Instant,
}

struct Tx {
    timeout: Duration,
    last_active: Instant,
    num_receivers: usize,
    refs: Vec<String>,
    progress: HashMap<(String, String), Progress>,
}

impl Tx {
    fn finished(&self) -> bool {
        self.num_receivers > 0
            && !self.refs.is_empty()
            && self.refs.iter().all(|r| {
                self.progress
                    .iter()
                    .filter(|((_, rid), p)| rid == r && p.status == ReceiverStatus::Success)
                    .count()
                    >= self.num_receivers
            })
    }

    fn statuses(&self) -> Vec<(String, String, ReceiverStatus)> {
        let mut v: Vec<_> = self
            .progress
            .iter()
            .map(|((receiver, rid), p)| (receiver.clone(), rid.clone(), p.status.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }
}

struct Tombstone {
    status: TxStatus,
    at: Instant,
    /// Receivers that had the whole reference.
    done: HashSet<String>,
}

/// Ended references are remembered this long, so that late requests get a clear answer.
const TOMBSTONE_TTL: Duration = Duration::from_secs(1800);

pub struct Transactions {
    receiver_idle_timeout: Duration,
    txs: HashMap<String, Tx>,
    refs: HashMap<String, String>,
    tombstones: HashMap<String, Tombstone>,
    events: Vec<ReceiverEvent>,
}

impl Transactions {
    pub fn new(receiver_idle_timeout: Duration) -> Self {
        Transactions {
            receiver_idle_timeout,
            txs: HashMap::new(),
            refs: HashMap::new(),
            tombstones: HashMap::new(),
            events: Vec::new(),
        }
    }

    pub fn contains(&self, tx_id: &str) -> bool {
        self.txs.contains_key(tx_id)
    }

    pub fn new_transaction(&mut self, tx_id: &str, timeout: Duration, num_receivers: usize, now: Instant) {
        self.txs.insert(
            tx_id.to_string(),
            Tx {
                timeout,
                last_active: now,
                num_receivers,
                refs: Vec::new(),
                progress: HashMap::new(),
            },
        );
    }

    /// False if the transaction does not exist or the reference is taken.
    pub fn add_ref(&mut self, tx_id: &str, ref_id: &str) -> bool {
        if self.refs.contains_key(ref_id) || self.tombstones.contains_key(ref_id) {
            return false;
        }
        let Some(tx) = self.txs.get_mut(tx_id) else {
            return false;
        };
        tx.refs.push(ref_id.to_string());
        self.refs.insert(ref_id.to_string(), tx_id.to_string());
        true
    }

    /// A receiver asked for a piece of `ref_id`: the transaction and the receiver are active.
    pub fn on_request(&mut self, ref_id: &str, receiver: &str, now: Instant) -> Lookup {
        let Some(tx_id) = self.refs.get(ref_id) else {
            return match self.tombstones.get(ref_id) {
                Some(t) if t.done.contains(receiver) => Lookup::AlreadyDone,
                Some(t) => Lookup::Ended(t.status),
                None => Lookup::Unknown,
            };
        };
        let tx = self.txs.get_mut(tx_id).expect("ref points at a live transaction");
        tx.last_active = now;
        let key = (receiver.to_string(), ref_id.to_string());
        let progress = tx.progress.entry(key).or_insert(Progress {
            status: ReceiverStatus::InProgress,
            last_active: now,
        });
        progress.last_active = now;
        if progress.status != ReceiverStatus::InProgress {
            // Asking again after finishing (or failing) starts over; that is always allowed.
            progress.status = ReceiverStatus::InProgress;
        }
        Lookup::Active {
            tx_id: tx_id.clone(),
            num_receivers: tx.num_receivers,
        }
    }

    /// The receiver got the end of `ref_id` (success) or gave up on it / could not be served (failure).
    pub fn on_done(&mut self, ref_id: &str, receiver: &str, status: ReceiverStatus, now: Instant) {
        let Some(tx_id) = self.refs.get(ref_id).cloned() else {
            return;
        };
        let tx = self.txs.get_mut(&tx_id).expect("ref points at a live transaction");
        tx.last_active = now;
        let key = (receiver.to_string(), ref_id.to_string());
        let progress = tx.progress.entry(key).or_insert(Progress {
            status: ReceiverStatus::InProgress,
            last_active: now,
        });
        if progress.status == status {
            return;
        }
        progress.status = status.clone();
        self.events.push(ReceiverEvent {
            tx_id,
            ref_id: ref_id.to_string(),
            receiver: receiver.to_string(),
            status,
        });
    }

    /// A receiver is gone (its connection dropped): every download it had in progress failed.
    pub fn on_receiver_lost(&mut self, receiver: &str, reason: &str) {
        for (tx_id, tx) in &mut self.txs {
            for ((who, rid), p) in &mut tx.progress {
                if who == receiver && p.status == ReceiverStatus::InProgress {
                    p.status = ReceiverStatus::Failed(reason.to_string());
                    self.events.push(ReceiverEvent {
                        tx_id: tx_id.clone(),
                        ref_id: rid.clone(),
                        receiver: who.clone(),
                        status: p.status.clone(),
                    });
                }
            }
        }
    }

    /// Ends a transaction at the owner's request.
    pub fn delete(&mut self, tx_id: &str, now: Instant) -> Option<TxOutcome> {
        self.txs
            .contains_key(tx_id)
            .then(|| self.end(tx_id, TxStatus::Deleted, now))
    }

    fn end(&mut self, tx_id: &str, status: TxStatus, now: Instant) -> TxOutcome {
        let tx = self.txs.remove(tx_id).expect("live transaction");
        for rid in &tx.refs {
            self.refs.remove(rid);
            let done = tx
                .progress
                .iter()
                .filter(|((_, r), p)| r == rid && p.status == ReceiverStatus::Success)
                .map(|((who, _), _)| who.clone())
                .collect();
            self.tombstones.insert(rid.clone(), Tombstone { status, at: now, done });
        }
        TxOutcome {
            tx_id: tx_id.to_string(),
            status,
            receivers: tx.statuses(),
            refs: tx.refs,
        }
    }

    /// Receiver status changes since the last call.
    pub fn take_events(&mut self) -> Vec<ReceiverEvent> {
        std::mem::take(&mut self.events)
    }

    /// Applies every rule due at `now`: idle receivers fail, finished and idle transactions end, old tombstones go.
    /// Returns the transactions that ended and when to call again.
    pub fn poll(&mut self, now: Instant) -> (Vec<TxOutcome>, Option<Instant>) {
        let idle = self.receiver_idle_timeout;
        for (tx_id, tx) in &mut self.txs {
            for ((who, rid), p) in &mut tx.progress {
                if p.status == ReceiverStatus::InProgress && now.saturating_duration_since(p.last_active) >= idle {
                    p.status =
                        ReceiverStatus::Failed(format!("no request for {idle:?} (download_receiver_idle_timeout)"));
                    self.events.push(ReceiverEvent {
                        tx_id: tx_id.clone(),
                        ref_id: rid.clone(),
                        receiver: who.clone(),
                        status: p.status.clone(),
                    });
                }
            }
        }
        let due: Vec<(String, TxStatus)> = self
            .txs
            .iter()
            .filter_map(|(id, tx)| {
                if tx.finished() {
                    Some((id.clone(), TxStatus::Finished))
                } else if now.saturating_duration_since(tx.last_active) >= tx.timeout {
                    Some((id.clone(), TxStatus::Timeout))
                } else {
                    None
                }
            })
            .collect();
        let ended = due.into_iter().map(|(id, status)| self.end(&id, status, now)).collect();
        self.tombstones
            .retain(|_, t| now.saturating_duration_since(t.at) < TOMBSTONE_TTL);

        let next = self
            .txs
            .values()
            .flat_map(|tx| {
                let receivers = tx
                    .progress
                    .values()
                    .filter(|p| p.status == ReceiverStatus::InProgress)
                    .map(|p| p.last_active + idle);
                std::iter::once(tx.last_active + tx.timeout).chain(receivers)
            })
            .min();
        (ended, next)
    }

    pub fn info(&self, tx_id: &str) -> Option<TxInfo> {
        let tx = self.txs.get(tx_id)?;
        Some(TxInfo {
            refs: tx.refs.clone(),
            num_receivers: tx.num_receivers,
            active_receivers: tx
                .progress
                .values()
                .filter(|p| p.status == ReceiverStatus::InProgress)
                .count(),
            receivers: tx.statuses(),
            timeout: tx.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn table_with(num_receivers: usize, now: Instant) -> Transactions {
        let mut t = Transactions::new(secs(100));
        t.new_transaction("tx", secs(300), num_receivers, now);
        assert!(t.add_ref("tx", "R1"));
        t
    }

    #[test]
    fn finishes_once_every_expected_receiver_succeeded() {
        let t0 = Instant::now();
        let mut t = table_with(2, t0);
        assert!(matches!(t.on_request("R1", "a", t0), Lookup::Active { .. }));
        t.on_done("R1", "a", ReceiverStatus::Success, t0);
        assert!(t.poll(t0).0.is_empty());
        t.on_request("R1", "b", t0);
        t.on_done("R1", "b", ReceiverStatus::Success, t0);
        let (ended, next) = t.poll(t0);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].status, TxStatus::Finished);
        assert_eq!(ended[0].receivers.len(), 2);
        assert_eq!(next, None);
        assert_eq!(t.on_request("R1", "c", t0), Lookup::Ended(TxStatus::Finished));
        assert_eq!(
            t.on_request("R1", "a", t0),
            Lookup::AlreadyDone,
            "a lost last reply may be asked for again"
        );
        assert_eq!(t.take_events().len(), 2);
    }

    #[test]
    fn idle_transaction_times_out_and_activity_postpones_it() {
        let t0 = Instant::now();
        let mut t = table_with(0, t0);
        assert_eq!(t.poll(t0).1, Some(t0 + secs(300)));
        t.on_request("R1", "a", t0 + secs(200));
        assert!(
            t.poll(t0 + secs(400)).0.is_empty(),
            "a request re-arms the idle timeout"
        );
        let (ended, _) = t.poll(t0 + secs(500));
        assert_eq!(ended[0].status, TxStatus::Timeout);
        assert_eq!(ended[0].receivers[0].2.as_str(), "failed");
    }

    #[test]
    fn idle_or_lost_receivers_fail_and_free_their_state() {
        let t0 = Instant::now();
        let mut t = table_with(3, t0);
        t.on_request("R1", "a", t0);
        t.on_request("R1", "b", t0 + secs(50));
        assert_eq!(t.info("tx").unwrap().active_receivers, 2);
        t.on_receiver_lost("b", "connection closed");
        assert_eq!(t.info("tx").unwrap().active_receivers, 1);
        let (_, next) = t.poll(t0 + secs(10));
        assert_eq!(next, Some(t0 + secs(100)), "receiver a's idle deadline comes first");
        t.poll(t0 + secs(100));
        assert_eq!(t.info("tx").unwrap().active_receivers, 0);
        let events = t.take_events();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| matches!(e.status, ReceiverStatus::Failed(_))));
    }

    #[test]
    fn delete_ends_at_once_and_refs_cannot_be_reused() {
        let t0 = Instant::now();
        let mut t = table_with(1, t0);
        assert!(!t.add_ref("tx", "R1"), "duplicate ref");
        assert!(!t.add_ref("nope", "R2"), "unknown transaction");
        assert_eq!(t.delete("tx", t0).unwrap().status, TxStatus::Deleted);
        assert!(t.delete("tx", t0).is_none());
        assert_eq!(t.on_request("R1", "a", t0), Lookup::Ended(TxStatus::Deleted));
        assert_eq!(t.on_request("R9", "a", t0), Lookup::Unknown);
        t.poll(t0 + TOMBSTONE_TTL);
        assert_eq!(t.on_request("R1", "a", t0), Lookup::Unknown);
    }
}
