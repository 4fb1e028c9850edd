//! Moving messages: sending from this cell, receiving, forwarding on behalf of others, and replying.

use std::sync::Arc;

use tokio::time::Instant;

use crate::conn::{ConnError, Lane};
use crate::frame::{Frame, FrameError, Headers, Value};

use super::{
    encoding, keys, msg_type, peers, route_entry, unix_now, CellInner, Hop, IncomingRequest, Message, Responder,
    ReturnCode, CONTROL_LANE_MAX_PAYLOAD,
};

/// How far `route_message` follows a message before returning.
#[derive(Clone, Copy)]
enum SendMode {
    /// Until it is written to the socket.
    Written,
    /// Until it is queued on its connection.
    Queued,
}

/// SFM application id of all cell traffic (NVFlare's `CoreCell.APP_ID`).
pub const CELL_APP_ID: u16 = 1;

impl CellInner {
    /// Sends `msg` one hop towards its `cn__destination`. Returns the direct peer it left through (`None` when
    /// delivered locally), or the error reply to give the requester.
    pub(super) async fn send_message(
        self: &Arc<Self>,
        msg: Message,
        deadline: Instant,
    ) -> Result<Option<String>, Message> {
        self.route_message(msg, deadline, SendMode::Written).await
    }

    /// Like `send_message`, but returns once the message is queued on its connection (stream chunks).
    pub(super) async fn queue_message(
        self: &Arc<Self>,
        msg: Message,
        deadline: Instant,
    ) -> Result<Option<String>, Message> {
        self.route_message(msg, deadline, SendMode::Queued).await
    }

    async fn route_message(
        self: &Arc<Self>,
        mut msg: Message,
        deadline: Instant,
        mode: SendMode,
    ) -> Result<Option<String>, Message> {
        let target = msg.header_str(keys::DESTINATION).unwrap_or_default().to_string();
        let hop = self.wait_for_route(&target, deadline).await;
        match hop {
            Hop::Local => {
                self.handle_incoming(msg, None);
                Ok(None)
            }
            Hop::Unreachable(why) => Err(Message::error_reply(ReturnCode::TargetUnreachable, why)),
            Hop::Peer(peer) => {
                let conn = self.conns.lock().expect("conns lock").get(&peer).cloned();
                let Some(conn) = conn else {
                    return Err(Message::error_reply(
                        ReturnCode::TargetUnreachable,
                        format!(
                            "{:?} lost its connection to {peer:?} on the way to {target:?}",
                            self.fqcn
                        ),
                    ));
                };
                msg.headers.insert(keys::TO, peer.as_str());
                let lane = if msg.payload.len() <= CONTROL_LANE_MAX_PAYLOAD {
                    Lane::Control
                } else {
                    Lane::Bulk
                };
                let frame = Frame::data(CELL_APP_ID, conn.next_stream_id(), msg.headers, msg.payload);
                let sent = match mode {
                    SendMode::Written => conn.send_frame(frame, lane, deadline).await,
                    SendMode::Queued => conn.queue_frame(frame, lane, deadline).await,
                };
                sent.map_err(|e| send_error_reply(e, &target))?;
                Ok(Some(peer))
            }
        }
    }

    /// The next hop to `target`. While the link to the parent is down (not yet up, or reconnecting), a target
    /// that only the parent could reach is waited for, until `deadline`, instead of failing at once.
    async fn wait_for_route(&self, target: &str, deadline: Instant) -> Hop {
        let mut topology = self.topology.subscribe();
        loop {
            let (hop, parent_down) = {
                let routes = self.routes.lock().expect("routes lock");
                (routes.next_hop(target), routes.parent().is_none())
            };
            let waiting_for_parent =
                parent_down && self.parent_link.load(std::sync::atomic::Ordering::Relaxed) && !*self.shutdown.borrow();
            if !matches!(hop, Hop::Unreachable(_)) || !waiting_for_parent {
                return hop;
            }
            match tokio::time::timeout_at(deadline, topology.changed()).await {
                Ok(Ok(())) => continue,
                _ => return hop,
            }
        }
    }

    /// Everything addressed to or passing through this cell arrives here. `from` is the direct peer it came from.
    pub(super) fn handle_incoming(self: &Arc<Self>, msg: Message, from: Option<&str>) {
        let Some(dest) = msg.header_str(keys::DESTINATION) else {
            tracing::warn!(cell = %self.fqcn, "dropping a message without {}", keys::DESTINATION);
            return;
        };
        if dest != self.fqcn {
            let inner = self.clone();
            self.handle.spawn(async move { inner.forward(msg).await });
            return;
        }
        if msg.header_str(keys::CHANNEL) == Some(peers::ROUTES_CHANNEL) {
            if let Some(from) = from {
                self.handle_route_update(from, &msg);
            }
            return;
        }
        if msg.header_str(keys::CHANNEL) == Some(crate::stream::wire::CHANNEL) {
            return self.handle_stream_message(msg);
        }
        match msg.header_str(keys::MSG_TYPE) {
            Some(msg_type::REPLY) | Some(msg_type::RETURN) => self.deliver_reply(msg),
            _ => self.dispatch_request(msg),
        }
    }

    fn deliver_reply(&self, msg: Message) {
        self.deliver_reply_by(keys::REQ_ID, msg)
    }

    /// Completes the waiters named by header `key` (a string, or a list of them).
    pub(super) fn deliver_reply_by(&self, key: &str, msg: Message) {
        let ids: Vec<String> = match msg.headers.get(key) {
            Some(Value::Str(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        for id in ids {
            let waiter = self.waiters.lock().expect("waiters lock").remove(&id);
            match waiter {
                Some(w) => {
                    let _ = w.tx.send(msg.clone());
                }
                None => tracing::debug!(cell = %self.fqcn, "reply for unknown or expired request {id}"),
            }
        }
    }

    pub(super) fn dispatch_request(self: &Arc<Self>, msg: Message) {
        let reply_expected = msg
            .headers
            .get(keys::REPLY_EXPECTED)
            .and_then(Value::as_bool)
            .unwrap_or(false)
            && msg.headers.contains_key(keys::REQ_ID);
        let channel = msg.header_str(keys::CHANNEL).unwrap_or_default().to_string();
        let topic = msg.header_str(keys::TOPIC).unwrap_or_default().to_string();
        let handler = {
            let handlers = self.handlers.read().expect("handlers lock");
            handlers
                .get(&(channel.clone(), topic.clone()))
                .or_else(|| handlers.get(&(channel.clone(), "*".to_string())))
                .cloned()
        };
        let responder = Responder {
            cell: Arc::downgrade(self),
            request_headers: reply_expected.then(|| msg.headers.clone()),
        };
        match handler {
            Some(handler) => handler(IncomingRequest {
                message: msg,
                responder,
            }),
            None => {
                tracing::warn!(cell = %self.fqcn, "no handler for {channel}/{topic}");
                // PROCESS_EXCEPTION, as NVFlare answers a request nobody registered for.
                responder.reply(Message::error_reply(
                    ReturnCode::ProcessException,
                    format!(
                        "cell {:?} has no handler for channel {channel:?} topic {topic:?}",
                        self.fqcn
                    ),
                ));
            }
        }
    }

    /// Answers a request whose headers are `request_headers`.
    pub(super) async fn send_reply(self: &Arc<Self>, request_headers: &Headers, reply: Message) {
        let kind = if reply.headers.get_str(keys::RETURN_REASON).is_some() {
            msg_type::RETURN
        } else {
            msg_type::REPLY
        };
        let Some(mut msg) = self.make_reply(request_headers, reply, kind) else {
            return;
        };
        let frame_capacity = self.config.max_frame_size.saturating_sub(crate::config::FRAME_OVERHEAD);
        let stream_key = crate::stream::wire::keys::REQ_ID;
        // A streamed request is answered by a stream (NVFlare's protocol); any reply too large for one frame is
        // streamed too, under the request's id, which a flare requester also matches replies by.
        let stream_id = match request_headers.get(stream_key) {
            Some(ri) => Some(ri.clone()),
            None if msg.payload.len() > frame_capacity => request_headers.get(keys::REQ_ID).cloned(),
            None => None,
        };
        if let Some(ri) = stream_id {
            let origin = msg.header_str(keys::DESTINATION).unwrap_or_default().to_string();
            let topic = format!(
                "{}:{}",
                request_headers.get_str(keys::CHANNEL).unwrap_or_default(),
                request_headers.get_str(keys::TOPIC).unwrap_or_default()
            );
            msg.headers.insert(stream_key, ri);
            super::streaming::move_encoding_to_stream(&mut msg.headers);
            let channel = super::RETURN_CHANNEL;
            let source = super::files::Source::Memory(msg.payload);
            if let Err(err) = self.send_stream(&origin, channel, &topic, msg.headers, source).await {
                tracing::warn!(cell = %self.fqcn, "streamed reply to {origin:?} not delivered: {err}");
            }
            return;
        }
        let deadline = Instant::now() + self.config.send_timeout;
        if let Err(err) = self.send_message(msg, deadline).await {
            tracing::warn!(cell = %self.fqcn, "reply not delivered: {}", err.error().unwrap_or("unknown error"));
        }
    }

    fn make_reply(&self, request_headers: &Headers, reply: Message, kind: &str) -> Option<Message> {
        let origin = request_headers.get_str(keys::ORIGIN)?;
        let req_id = request_headers.get(keys::REQ_ID)?.clone();
        let mut headers = reply.headers;
        headers.insert(keys::MSG_TYPE, kind);
        // The request's id as it came (a string); NVFlare also accepts a list, which batched replies use.
        headers.insert(keys::REQ_ID, req_id);
        if kind == msg_type::RETURN {
            // NVFlare's requester finds the waiter of a returned request through the original headers.
            let original = request_headers
                .iter()
                .map(|(k, v)| (Value::from(k), v.clone()))
                .collect();
            headers.insert(keys::ORIGINAL_HEADERS, Value::Map(original));
        }
        for key in [keys::CHANNEL, keys::TOPIC] {
            if let Some(v) = request_headers.get(key) {
                headers.insert(key, v.clone());
            }
        }
        headers.insert(keys::ORIGIN, self.fqcn.as_str());
        headers.insert(keys::FROM, self.fqcn.as_str());
        headers.insert(keys::DESTINATION, origin);
        headers.insert(keys::REPLY_EXPECTED, false);
        if !headers.contains_key(keys::RETURN_CODE) {
            headers.insert(keys::RETURN_CODE, ReturnCode::Ok.as_str());
        }
        if !headers.contains_key(keys::PAYLOAD_ENCODING) {
            headers.insert(keys::PAYLOAD_ENCODING, encoding::BYTES);
        }
        headers.insert(keys::PAYLOAD_LEN, reply.payload.len() as u64);
        headers.insert(keys::SEND_TIME, unix_now());
        headers.insert(keys::ROUTE, Value::Array(vec![route_entry(&self.fqcn)]));
        Some(Message::new(headers, reply.payload))
    }

    /// Passes a message addressed to another cell one hop further. A request that cannot go on is returned to its
    /// origin with the reason, so the requester fails fast instead of waiting for its timeout.
    async fn forward(self: Arc<Self>, mut msg: Message) {
        let mut route = match msg.headers.remove(keys::ROUTE) {
            Some(Value::Array(route)) => route,
            _ => Vec::new(),
        };
        let looped = route
            .iter()
            .any(|hop| hop.as_array().and_then(|h| h.first()).and_then(Value::as_str) == Some(self.fqcn.as_str()));
        if looped || route.len() >= self.config.max_hops {
            let why = format!(
                "{:?} dropped a message for {:?} after {} hops (routing loop, or setting max_hops = {} too low)",
                self.fqcn,
                msg.header_str(keys::DESTINATION).unwrap_or_default(),
                route.len(),
                self.config.max_hops
            );
            return self.return_to_origin(&msg.headers, ReturnCode::CommError, why).await;
        }
        route.push(route_entry(&self.fqcn));
        msg.headers.insert(keys::ROUTE, Value::Array(route));
        msg.headers.insert(keys::FROM, self.fqcn.as_str());
        msg.headers.insert(keys::SEND_TIME, unix_now());
        let headers = msg.headers.clone();
        let deadline = Instant::now() + self.config.send_timeout;
        if let Err(err) = self.send_message(msg, deadline).await {
            let why = err.error().unwrap_or("cannot forward").to_string();
            self.return_to_origin(&headers, err.return_code(), why).await;
        }
    }

    async fn return_to_origin(self: &Arc<Self>, request_headers: &Headers, rc: ReturnCode, why: String) {
        // The sender is told, so this cell need not shout; a message nobody can be told about is worth a warning.
        if self.stream_chunk_undeliverable(request_headers, &why) {
            return tracing::debug!(cell = %self.fqcn, "{why}");
        }
        let is_request = request_headers.get_str(keys::MSG_TYPE).unwrap_or(msg_type::REQUEST) == msg_type::REQUEST;
        let wants_reply = request_headers
            .get(keys::REPLY_EXPECTED)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !(is_request && wants_reply) {
            return tracing::warn!(cell = %self.fqcn, "dropped: {why}");
        }
        tracing::debug!(cell = %self.fqcn, "returned to the sender: {why}");
        let mut reply = Message::error_reply(rc, why);
        reply.headers.insert(keys::RETURN_REASON, "cant_forward");
        self.send_reply(request_headers, reply).await;
    }
}

fn send_error_reply(err: ConnError, target: &str) -> Message {
    let rc = match &err {
        ConnError::SendTimeout { .. } | ConnError::WriteStalled { .. } => ReturnCode::Timeout,
        ConnError::Frame(FrameError::TooLarge { .. }) | ConnError::Frame(FrameError::HeadersTooLarge(_)) => {
            ReturnCode::MsgTooBig
        }
        _ => ReturnCode::CommError,
    };
    Message::error_reply(rc, format!("sending to {target:?} failed: {err}"))
}
