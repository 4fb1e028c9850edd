//! Connections of a cell: accepting children, keeping the link to the parent up, and telling the parent which
//! cells can be reached through this one (so leaves behind a relay are routable from anywhere in the tree).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::conn::{Connection, FrameSink, Side};
use crate::frame::{decode_value, encode_value, Frame, Headers, Value};

use super::{CellInner, Message, PeerEvent, ROUTING_PROPERTY};

/// Channel of route advertisements between flare cells; the topic is unused.
pub(super) const ROUTES_CHANNEL: &str = "flare.cellnet.routes";

/// Pause after the handshake with a listener that is not a flare cell (see `connect_loop`).
const FOREIGN_PEER_SETTLE: Duration = Duration::from_millis(200);

/// Hands what connections read to the cell, without keeping the cell alive.
struct CellSink(Weak<CellInner>);

impl FrameSink for CellSink {
    fn on_open(&self, conn: &Connection) {
        let Some(cell) = self.0.upgrade() else { return };
        // A parent that is not a flare cell is registered by `connect_loop` after a pause (see there).
        if conn.side() == Side::Passive || is_flare_peer(conn) {
            cell.add_connection(conn.clone(), conn.side() == Side::Active);
        }
    }

    fn on_frame(&self, conn: &Connection, frame: Frame) {
        if let Some(cell) = self.0.upgrade() {
            cell.handle_incoming(Message::new(frame.headers, frame.payload), Some(conn.peer_name()));
        }
    }

    fn on_closed(&self, conn: &Connection, reason: &str) {
        if let Some(cell) = self.0.upgrade() {
            cell.remove_connection(conn, reason);
        }
    }
}

fn sink(cell: &Arc<CellInner>) -> Arc<dyn FrameSink> {
    Arc::new(CellSink(Arc::downgrade(cell)))
}

fn is_flare_peer(conn: &Connection) -> bool {
    conn.peer_properties().get(ROUTING_PROPERTY).and_then(Value::as_bool) == Some(true)
}

pub(super) async fn accept_loop(cell: Arc<CellInner>, listener: TcpListener) {
    let mut shutdown = cell.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let cell = cell.clone();
                tokio::spawn(async move {
                    match Connection::establish(stream, Side::Passive, &cell.local, &cell.config, sink(&cell)).await {
                        Ok(_registered_in_on_open) => {}
                        Err(e) => tracing::warn!(cell = %cell.fqcn, %addr, "incoming connection refused: {e}"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(cell = %cell.fqcn, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(super) async fn connect_loop(cell: Arc<CellInner>, url: String) {
    let mut shutdown = cell.shutdown.subscribe();
    let mut backoff = cell.config.reconnect_initial_backoff;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = async {
            let stream = crate::driver::connect(&url, cell.config.connect_timeout, cell.config.tcp_no_delay)
                .await
                .map_err(|e| e.to_string())?;
            Connection::establish(stream, Side::Active, &cell.local, &cell.config, sink(&cell))
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(conn) => {
                if !is_flare_peer(&conn) {
                    // An NVFlare listener registers us only after it has sent READY, on a thread pool: a frame sent
                    // the instant READY arrives can be dropped. Give it a moment before anything is sent.
                    tokio::time::sleep(FOREIGN_PEER_SETTLE).await;
                    cell.add_connection(conn.clone(), true);
                }
                let up_since = Instant::now();
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = shutdown.wait_for(|s| *s) => return conn.close("cell closed"),
                }
                // A link that held for a while was healthy: start the next round of retries from the beginning.
                if up_since.elapsed() > cell.config.reconnect_max_backoff {
                    backoff = cell.config.reconnect_initial_backoff;
                }
                tracing::info!(cell = %cell.fqcn, "lost parent {}: {}", conn.peer_name(), conn.close_reason().unwrap_or_default());
            }
            Err(e) => tracing::info!(cell = %cell.fqcn, "cannot reach parent at {url}: {e}; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(cell.config.reconnect_max_backoff);
    }
}

impl CellInner {
    pub(super) fn add_connection(self: &Arc<Self>, conn: Connection, is_parent: bool) {
        let name = conn.peer_name().to_string();
        if *self.shutdown.borrow() {
            return conn.close("cell closed");
        }
        let replaced = self
            .conns
            .lock()
            .expect("conns lock")
            .insert(name.clone(), conn.clone());
        if let Some(old) = replaced.filter(|old| old.id() != conn.id()) {
            old.close("replaced by a newer connection from the same cell");
        }
        self.routes.lock().expect("routes lock").add_peer(&name, is_parent);
        tracing::info!(cell = %self.fqcn, peer = %name, "connected");
        if is_parent {
            let below = self.routes.lock().expect("routes lock").reachable_below();
            self.advertise(&below, &[]);
        } else {
            self.advertise(std::slice::from_ref(&name), &[]);
        }
        self.notify(vec![PeerEvent::Up(name)]);
    }

    pub(super) fn remove_connection(self: &Arc<Self>, conn: &Connection, reason: &str) {
        let name = conn.peer_name().to_string();
        {
            let mut conns = self.conns.lock().expect("conns lock");
            match conns.get(&name) {
                Some(current) if current.id() == conn.id() => {
                    conns.remove(&name);
                }
                // A newer connection from the same cell has taken over; nothing was lost.
                _ => return,
            }
        }
        let lost_routes = self.routes.lock().expect("routes lock").remove_peer(&name);
        tracing::info!(cell = %self.fqcn, peer = %name, "disconnected: {reason}");
        self.fail_waiters_via(&name, reason);
        self.drop_incoming_from(&name);
        let mut gone = vec![name.clone()];
        gone.extend(lost_routes);
        self.advertise(&[], &gone);
        self.notify(
            gone.into_iter()
                .map(|n| PeerEvent::Down {
                    name: n,
                    reason: reason.to_string(),
                })
                .collect(),
        );
    }

    fn fail_waiters_via(&self, peer: &str, reason: &str) {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let ids: Vec<String> = waiters
            .iter()
            .filter(|(_, w)| w.via.as_deref() == Some(peer))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.tx.send(Message::error_reply(
                    super::ReturnCode::CommError,
                    format!("connection to {peer:?} lost while waiting for the reply: {reason}"),
                ));
            }
        }
    }

    /// Fails the requests sent through `via` to a cell it no longer reaches (or to a descendant of one): their
    /// replies have no way back, so the requesters learn it now rather than at their timeout.
    fn fail_waiters_routed(&self, via: &str, removed: &[String], reason: &str) {
        if removed.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let lost = |w: &super::Waiter| {
            w.via.as_deref() == Some(via)
                && removed
                    .iter()
                    .any(|r| *r == w.target || super::fqcn::is_ancestor(r, &w.target))
        };
        let ids: Vec<String> = waiters
            .iter()
            .filter(|(_, w)| lost(w))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.tx.send(Message::error_reply(
                    super::ReturnCode::CommError,
                    format!("route to {:?} lost while waiting for the reply: {reason}", w.target),
                ));
            }
        }
    }

    fn notify(&self, events: Vec<PeerEvent>) {
        self.topology.send_modify(|v| *v += 1);
        let callbacks = self.peer_callbacks.read().expect("callbacks lock").clone();
        for event in events {
            for cb in &callbacks {
                cb(event.clone());
            }
        }
    }

    /// Tells the parent (when it is a flare cell) which cells became reachable or unreachable through us.
    fn advertise(self: &Arc<Self>, added: &[String], removed: &[String]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let parent = {
            let routes = self.routes.lock().expect("routes lock");
            routes.parent().map(str::to_string)
        };
        let Some(parent) = parent else { return };
        let conn = self.conns.lock().expect("conns lock").get(&parent).cloned();
        let Some(conn) = conn else { return };
        if !is_flare_peer(&conn) {
            return;
        }
        let names = |list: &[String]| Value::Array(list.iter().map(|n| Value::from(n.as_str())).collect());
        let body = Value::Map(vec![
            (Value::from("add"), names(added)),
            (Value::from("remove"), names(removed)),
        ]);
        let mut payload = BytesMut::new();
        encode_value(&body, &mut payload);
        let msg = self.new_message(
            &parent,
            ROUTES_CHANNEL,
            "update",
            Headers::new(),
            payload.freeze(),
            None,
        );
        let inner = self.clone();
        self.handle.spawn(async move {
            let deadline = Instant::now() + inner.config.send_timeout;
            if let Err(e) = inner.send_message(msg, deadline).await {
                tracing::warn!(cell = %inner.fqcn, "route advertisement to {parent:?} failed: {:?}", e.error());
            }
        });
    }

    pub(super) fn handle_route_update(self: &Arc<Self>, from: &str, msg: &Message) {
        let Ok(Value::Map(body)) = decode_value(&Bytes::clone(&msg.payload)) else {
            return tracing::warn!(cell = %self.fqcn, "malformed route update from {from:?}");
        };
        let list = |key: &str| -> Vec<String> {
            body.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .and_then(|(_, v)| v.as_array())
                .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        {
            let mut routes = self.routes.lock().expect("routes lock");
            for name in list("add") {
                if routes.learn(&name, from) {
                    added.push(name);
                }
            }
            for name in list("remove") {
                if routes.forget(&name, from) {
                    removed.push(name);
                }
            }
        }
        self.advertise(&added, &removed);
        let reason = format!("{from:?} lost its route");
        self.fail_waiters_routed(from, &removed, &reason);
        let mut events: Vec<PeerEvent> = added.into_iter().map(PeerEvent::Up).collect();
        events.extend(removed.into_iter().map(|name| PeerEvent::Down {
            name,
            reason: reason.clone(),
        }));
        if !events.is_empty() {
            self.notify(events);
        }
    }
}
