//! Keep-alive as a plain state machine: fed with "something arrived at `now`" and polled with `now`, it says when
//! to PING and when the peer must be declared dead. The connection's timer task only drives it.

use std::time::{Duration, Instant};

/// What the driver must do after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum KeepAliveAction {
    /// Nothing to do before `next_deadline`.
    Wait,
    /// The link has been idle for `interval`: send a PING.
    SendPing,
    /// Nothing arrived for `timeout`: the peer is gone.
    PeerDead { silent_for: Duration },
}

/// Tracks the last time anything was received and the last PING sent.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    last_rx: Instant,
    last_ping: Option<Instant>,
}

impl KeepAlive {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        KeepAlive {
            interval,
            timeout,
            last_rx: now,
            last_ping: None,
        }
    }

    /// Any received frame proves the peer alive.
    pub fn on_receive(&mut self, now: Instant) {
        if now > self.last_rx {
            self.last_rx = now;
        }
    }

    pub fn last_receive(&self) -> Instant {
        self.last_rx
    }

    pub fn poll(&mut self, now: Instant) -> KeepAliveAction {
        let silent_for = now.saturating_duration_since(self.last_rx);
        if silent_for >= self.timeout {
            return KeepAliveAction::PeerDead { silent_for };
        }
        let ping_due = match self.last_ping {
            // One PING per interval of silence: while the peer stays quiet, PING again every interval.
            Some(sent) if sent >= self.last_rx => now.saturating_duration_since(sent) >= self.interval,
            _ => silent_for >= self.interval,
        };
        if ping_due {
            self.last_ping = Some(now);
            return KeepAliveAction::SendPing;
        }
        KeepAliveAction::Wait
    }

    /// The earliest instant at which `poll` may return something other than `Wait`.
    pub fn next_deadline(&self) -> Instant {
        let dead_at = self.last_rx + self.timeout;
        let ping_at = match self.last_ping {
            Some(sent) if sent >= self.last_rx => sent + self.interval,
            _ => self.last_rx + self.interval,
        };
        dead_at.min(ping_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_after_interval_of_silence_then_declares_dead_at_timeout() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(10 * S, 30 * S, t0);
        assert_eq!(ka.poll(t0 + 9 * S), KeepAliveAction::Wait);
        assert_eq!(ka.next_deadline(), t0 + 10 * S);
        assert_eq!(ka.poll(t0 + 10 * S), KeepAliveAction::SendPing);
        assert_eq!(ka.poll(t0 + 15 * S), KeepAliveAction::Wait);
        assert_eq!(ka.next_deadline(), t0 + 20 * S);
        assert_eq!(ka.poll(t0 + 20 * S), KeepAliveAction::SendPing);
        assert_eq!(ka.poll(t0 + 29 * S), KeepAliveAction::Wait);
        assert_eq!(ka.poll(t0 + 30 * S), KeepAliveAction::PeerDead { silent_for: 30 * S });
    }

    #[test]
    fn traffic_keeps_the_peer_alive_forever() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(10 * S, 30 * S, t0);
        for k in 1..1000u32 {
            let now = t0 + k * 5 * S;
            ka.on_receive(now);
            assert_eq!(ka.poll(now), KeepAliveAction::Wait);
        }
    }

    #[test]
    fn a_pong_rearms_the_interval() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(10 * S, 30 * S, t0);
        assert_eq!(ka.poll(t0 + 10 * S), KeepAliveAction::SendPing);
        ka.on_receive(t0 + 11 * S);
        assert_eq!(ka.next_deadline(), t0 + 21 * S);
        assert_eq!(ka.poll(t0 + 20 * S), KeepAliveAction::Wait);
        assert_eq!(ka.poll(t0 + 21 * S), KeepAliveAction::SendPing);
    }
}
