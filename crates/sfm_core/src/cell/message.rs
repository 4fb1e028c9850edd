//! Cell messages: NVFlare's `cn__*` headers plus a payload, and the return codes of replies.

use bytes::Bytes;

use crate::frame::{Headers, Value};

/// Header names, as NVFlare's cellnet writes them.
pub mod keys {
    pub const MSG_TYPE: &str = "cn__msg_type";
    pub const REQ_ID: &str = "cn__req_id";
    pub const REPLY_EXPECTED: &str = "cn__reply_expected";
    pub const TOPIC: &str = "cn__topic";
    pub const CHANNEL: &str = "cn__channel";
    pub const ORIGIN: &str = "cn__origin";
    pub const DESTINATION: &str = "cn__destination";
    pub const FROM: &str = "cn__from";
    pub const TO: &str = "cn__to";
    pub const RETURN_CODE: &str = "cn__return_code";
    pub const ERROR: &str = "cn__error";
    pub const PAYLOAD_ENCODING: &str = "cn__payload_encoding";
    pub const PAYLOAD_LEN: &str = "cn__payload_len";
    pub const ROUTE: &str = "cn__route";
    pub const ORIGINAL_HEADERS: &str = "cn__original_headers";
    pub const SEND_TIME: &str = "cn__send_time";
    pub const RETURN_REASON: &str = "cn__return_reason";
    pub const SECURE: &str = "cn__secure";
    pub const OPTIONAL: &str = "cn__optional";
}

/// `cn__msg_type` values.
pub mod msg_type {
    pub const REQUEST: &str = "req";
    pub const REPLY: &str = "reply";
    /// A request sent back to its origin because it could not be delivered.
    pub const RETURN: &str = "return";
}

/// `cn__payload_encoding` values.
pub mod encoding {
    pub const BYTES: &str = "bytes";
    pub const FOBS: &str = "fobs";
    pub const NONE: &str = "none";
}

/// Outcome of a request, as carried in `cn__return_code`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    Ok,
    Timeout,
    InvalidTarget,
    TargetUnreachable,
    CommError,
    MsgTooBig,
    FilterError,
    InvalidRequest,
    ProcessException,
    AuthenticationError,
    ServiceUnavailable,
    InvalidSession,
    AbortRun,
    Unauthenticated,
    /// A code this implementation does not know, kept as received.
    Other(String),
}

impl ReturnCode {
    pub fn as_str(&self) -> &str {
        match self {
            ReturnCode::Ok => "ok",
            ReturnCode::Timeout => "timeout",
            ReturnCode::InvalidTarget => "invalid_target",
            ReturnCode::TargetUnreachable => "target_unreachable",
            ReturnCode::CommError => "comm_error",
            ReturnCode::MsgTooBig => "msg_too_big",
            ReturnCode::FilterError => "filter_error",
            ReturnCode::InvalidRequest => "invalid_request",
            ReturnCode::ProcessException => "process_exception",
            ReturnCode::AuthenticationError => "authentication_error",
            ReturnCode::ServiceUnavailable => "service_unavailable",
            ReturnCode::InvalidSession => "invalid_session",
            ReturnCode::AbortRun => "abort_run",
            ReturnCode::Unauthenticated => "unauthenticated",
            ReturnCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ReturnCode {
        match s {
            "ok" => ReturnCode::Ok,
            "timeout" => ReturnCode::Timeout,
            "invalid_target" => ReturnCode::InvalidTarget,
            "target_unreachable" => ReturnCode::TargetUnreachable,
            "comm_error" => ReturnCode::CommError,
            "msg_too_big" => ReturnCode::MsgTooBig,
            "filter_error" => ReturnCode::FilterError,
            "invalid_request" => ReturnCode::InvalidRequest,
            "process_exception" => ReturnCode::ProcessException,
            "authentication_error" => ReturnCode::AuthenticationError,
            "service_unavailable" => ReturnCode::ServiceUnavailable,
            "invalid_session" => ReturnCode::InvalidSession,
            "abort_run" => ReturnCode::AbortRun,
            "unauthenticated" => ReturnCode::Unauthenticated,
            other => ReturnCode::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Headers plus payload. The payload is shared, never copied, on its way through a cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(headers: Headers, payload: Bytes) -> Self {
        Message { headers, payload }
    }

    /// A reply carrying only a return code and an error text.
    pub fn error_reply(rc: ReturnCode, error: impl Into<String>) -> Self {
        let mut headers = Headers::new();
        headers.insert(keys::RETURN_CODE, rc.as_str());
        headers.insert(keys::ERROR, error.into());
        Message {
            headers,
            payload: Bytes::new(),
        }
    }

    /// The reply's return code; a reply without one is OK, as in NVFlare.
    pub fn return_code(&self) -> ReturnCode {
        self.headers
            .get_str(keys::RETURN_CODE)
            .map(ReturnCode::parse)
            .unwrap_or(ReturnCode::Ok)
    }

    pub fn error(&self) -> Option<&str> {
        self.headers.get_str(keys::ERROR).filter(|e| !e.is_empty())
    }

    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.headers.get_str(key)
    }

    /// Request ids of a reply: NVFlare puts a list in replies (one reply may answer several requests) and a string
    /// in requests; both are accepted.
    pub fn req_ids(&self) -> Vec<String> {
        match self.headers.get(keys::REQ_ID) {
            Some(Value::Str(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_round_trip_and_keep_unknown_ones() {
        for rc in [
            "ok",
            "timeout",
            "target_unreachable",
            "process_exception",
            "comm_error",
            "invalid_request",
        ] {
            assert_eq!(ReturnCode::parse(rc).as_str(), rc);
        }
        assert_eq!(ReturnCode::parse("brand_new"), ReturnCode::Other("brand_new".into()));
    }

    #[test]
    fn req_ids_accept_string_or_list() {
        let mut m = Message::default();
        m.headers.insert(keys::REQ_ID, "a");
        assert_eq!(m.req_ids(), ["a"]);
        m.headers
            .insert(keys::REQ_ID, Value::Array(vec!["b".into(), "c".into()]));
        assert_eq!(m.req_ids(), ["b", "c"]);
        assert_eq!(Message::default().return_code(), ReturnCode::Ok);
    }
}
