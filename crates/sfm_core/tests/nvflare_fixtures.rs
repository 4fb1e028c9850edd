//! Frames captured from real NVFlare 2.7.2 (`tests/fixtures/nvflare/*.bin`, see the README there): our codec
//! decodes every one, finds the fields and header types NVFlare wrote, and re-encodes each to the very same bytes.
//!
//! Byte-exact re-encoding holds because our msgpack writer makes the choices Python's msgpack makes: the smallest
//! integer form (unsigned forms for non-negative values), float64 for Python floats, `str` (never `bin`) for
//! strings with the smallest length form, map16 from 16 entries up, and header keys kept in wire order.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use sfm_core::frame::{decode_value, encode_value, Frame, FrameCodec, FrameType, Headers, Prefix, Value, PREFIX_LEN};

const FIXTURES: [&str; 11] = [
    "hello",
    "ready",
    "data_request",
    "data_reply",
    "ping",
    "pong",
    "bye_request",
    "bye_reply",
    "reply_no_callback",
    "request_unroutable",
    "return_cant_forward",
];

fn raw(name: &str) -> Bytes {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "nvflare",
        &format!("{name}.bin"),
    ]
    .iter()
    .collect();
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())))
}

/// Decodes a whole fixture, which must be exactly one frame.
fn decode(name: &str) -> (Prefix, Frame) {
    let bytes = raw(name);
    let prefix = Prefix::decode(&bytes).unwrap();
    assert_eq!(
        prefix.length as usize,
        bytes.len(),
        "{name}: length field counts the whole frame"
    );
    let mut src = BytesMut::from(&bytes[..]);
    let frame = FrameCodec::default()
        .decode(&mut src)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: incomplete frame"));
    assert!(src.is_empty(), "{name}: bytes left over after one frame");
    (prefix, frame)
}

fn str_header<'a>(h: &'a Headers, key: &str) -> &'a str {
    h.get_str(key)
        .unwrap_or_else(|| panic!("{key} missing or not a str: {:?}", h.get(key)))
}

#[test]
fn every_fixture_re_encodes_byte_exact() {
    for name in FIXTURES {
        let original = raw(name);
        let (_, frame) = decode(name);
        let again = frame.encode().unwrap();
        assert_eq!(&again[..], &original[..], "{name}: re-encoded frame differs");
        // The headers alone, too, and the head that a writer sends before an uncopied payload.
        let header_len = u16::from_be_bytes([original[4], original[5]]) as usize;
        assert_eq!(
            &frame.headers.encode()[..],
            &original[PREFIX_LEN..PREFIX_LEN + header_len],
            "{name}: headers"
        );
        assert_eq!(
            &frame.encode_head().unwrap()[..],
            &original[..PREFIX_LEN + header_len],
            "{name}: head"
        );
    }
}

#[test]
fn prefix_fields_match_the_readme() {
    // (name, type, app_id, stream_id, sequence)
    let table = [
        ("hello", FrameType::Hello, 0, 1, 1),
        ("ready", FrameType::Ready, 0, 1, 1),
        ("data_request", FrameType::Data, 1, 17, 2),
        ("data_reply", FrameType::Data, 1, 17, 2),
        ("ping", FrameType::Ping, 0, 18, 3),
        ("pong", FrameType::Pong, 0, 18, 3),
        ("bye_request", FrameType::Data, 1, 22, 7),
        ("bye_reply", FrameType::Data, 1, 22, 7),
        ("reply_no_callback", FrameType::Data, 1, 17, 2),
        ("request_unroutable", FrameType::Data, 1, 17, 2),
        ("return_cant_forward", FrameType::Data, 1, 17, 2),
    ];
    assert_eq!(table.len(), FIXTURES.len());
    for (name, kind, app_id, stream_id, sequence) in table {
        let (prefix, frame) = decode(name);
        assert_eq!(prefix.reserved, 0, "{name}");
        assert_eq!(prefix.flags, 0, "{name}");
        assert_eq!(prefix.kind(), kind, "{name}");
        assert_eq!(
            (frame.frame_type, frame.app_id, frame.stream_id, frame.sequence),
            (kind, app_id, stream_id, sequence),
            "{name}"
        );
        assert_eq!(frame.flags, 0, "{name}");
        if kind == FrameType::Data {
            assert!(prefix.header_len > 0, "{name}: DATA frames carry headers");
        } else {
            assert_eq!(prefix.header_len, 0, "{name}: control frames carry no headers");
            assert!(frame.headers.is_empty());
        }
    }
}

#[test]
fn handshake_payloads_name_the_endpoint() {
    for (name, endpoint) in [("hello", "site-1"), ("ready", "server")] {
        let (_, frame) = decode(name);
        let body = decode_value(&frame.payload).unwrap();
        let keys: Vec<&str> = body
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, ["endpoint_name", "timestamp", "fqcn"], "{name}");
        assert_eq!(
            body.get("endpoint_name").and_then(Value::as_str),
            Some(endpoint),
            "{name}"
        );
        assert_eq!(body.get("fqcn").and_then(Value::as_str), Some(endpoint), "{name}");
        assert!(
            matches!(body.get("timestamp"), Some(Value::F64(t)) if *t > 1.7e9),
            "{name}: {:?}",
            body.get("timestamp")
        );
        // The payload value, re-encoded alone, is byte-exact as well.
        let mut again = BytesMut::new();
        encode_value(&body, &mut again);
        assert_eq!(&again[..], &frame.payload[..], "{name}");
    }
}

#[test]
fn ping_and_pong_carry_msgpack_nil() {
    for name in ["ping", "pong"] {
        let (prefix, frame) = decode(name);
        assert_eq!(prefix.length, 17, "{name}");
        assert_eq!(decode_value(&frame.payload), Ok(Value::Nil), "{name}");
    }
}

/// Checks the cell headers every NVFlare DATA frame carries, with their msgpack types.
fn check_cell_headers(name: &str, h: &Headers) {
    for key in ["cn__origin", "cn__destination", "cn__from", "cn__to", "cn__msg_type"] {
        str_header(h, key);
    }
    // Not every message has these (a returned request has no channel, a reply may lack cn__secure), but where
    // present they have these types.
    for key in ["cn__channel", "cn__topic"] {
        assert!(
            h.get(key).is_none_or(|v| v.as_str().is_some()),
            "{name}: {key} is {:?}",
            h.get(key)
        );
    }
    for key in ["cn__secure", "cn__optional", "cn__reply_expected"] {
        assert!(
            h.get(key).is_none_or(|v| v.as_bool().is_some()),
            "{name}: {key} is {:?}",
            h.get(key)
        );
    }
    assert!(
        matches!(h.get("cn__send_time"), Some(Value::F64(_))),
        "{name}: cn__send_time {:?}",
        h.get("cn__send_time")
    );
    assert!(
        h.get("cn__payload_len").and_then(Value::as_i64).is_some(),
        "{name}: cn__payload_len"
    );
    let route = h
        .get("cn__route")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{name}: cn__route"));
    assert!(!route.is_empty(), "{name}: empty route");
    for hop in route {
        let hop = hop.as_array().unwrap_or_else(|| panic!("{name}: route entry {hop:?}"));
        assert!(
            matches!(hop, [Value::Str(_), Value::F64(_)]),
            "{name}: route entry is not [str, f64]: {hop:?}"
        );
    }
    // The origin put itself first on the route.
    assert_eq!(
        route[0].as_array().unwrap()[0].as_str(),
        h.get_str("cn__origin"),
        "{name}"
    );
}

fn is_uuid4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[2].starts_with('4')
}

#[test]
fn requests_carry_nvflare_cell_headers() {
    for (name, from, to, dest, topic, payload) in [
        ("data_request", "site-1", "server", "server", "echo", &b"hello"[..]),
        (
            "request_unroutable",
            "site-3",
            "server",
            "nosuch.cell",
            "echo",
            b"hello",
        ),
        ("bye_request", "site-1", "server", "server", "bye", b""),
    ] {
        let (_, frame) = decode(name);
        let h = &frame.headers;
        check_cell_headers(name, h);
        assert_eq!(str_header(h, "cn__msg_type"), "req", "{name}");
        assert_eq!(str_header(h, "cn__origin"), from, "{name}");
        assert_eq!(str_header(h, "cn__from"), from, "{name}");
        assert_eq!(str_header(h, "cn__to"), to, "{name}");
        assert_eq!(str_header(h, "cn__destination"), dest, "{name}");
        assert_eq!(str_header(h, "cn__topic"), topic, "{name}");
        assert!(
            is_uuid4(str_header(h, "cn__req_id")),
            "{name}: req id {:?}",
            h.get("cn__req_id")
        );
        for key in ["cn__channel", "cn__topic", "cn__secure", "cn__optional"] {
            assert!(h.contains_key(key), "{name}: requests carry {key}");
        }
        assert_eq!(h.get("cn__reply_expected"), Some(&Value::Bool(true)), "{name}");
        assert_eq!(&frame.payload[..], payload, "{name}");
        assert_eq!(
            h.get("cn__payload_len").and_then(Value::as_i64),
            Some(payload.len() as i64),
            "{name}"
        );
        let encoding = if payload.is_empty() { "none" } else { "bytes" };
        assert_eq!(str_header(h, "cn__payload_encoding"), encoding, "{name}");
    }
    let (_, bye) = decode("bye_request");
    assert_eq!(str_header(&bye.headers, "cn__channel"), "cellnet.channel");
    assert_eq!(bye.headers.get("cn__optional"), Some(&Value::Bool(true)));
}

#[test]
fn replies_carry_return_codes_and_the_request_id() {
    for (name, request, rc, error) in [
        ("data_reply", "data_request", "ok", None),
        ("bye_reply", "bye_request", "ok", None),
        ("reply_no_callback", "", "process_exception", Some("no callback")),
    ] {
        let (_, frame) = decode(name);
        let h = &frame.headers;
        check_cell_headers(name, h);
        assert_eq!(str_header(h, "cn__msg_type"), "reply", "{name}");
        assert_eq!(str_header(h, "cn__return_code"), rc, "{name}");
        assert_eq!(h.get_str("cn__error"), error, "{name}");
        assert_eq!(str_header(h, "cn__origin"), "server", "{name}");
        // A plain reply answers with the request id as a string.
        let req_id = str_header(h, "cn__req_id");
        assert!(is_uuid4(req_id), "{name}");
        if !request.is_empty() {
            let (_, req) = decode(request);
            assert_eq!(
                Some(req_id),
                req.headers.get_str("cn__req_id"),
                "{name} answers {request}"
            );
            assert_eq!(
                str_header(h, "cn__destination"),
                str_header(&req.headers, "cn__origin"),
                "{name}"
            );
        }
    }
    let (_, reply) = decode("data_reply");
    assert_eq!(&reply.payload[..], b"olleh");
    assert_eq!(reply.headers.get_str("answered_by"), Some("server"));
    // 16 headers: the only fixture whose map needs the map16 form (0xde), which we must write back the same way.
    assert_eq!(reply.headers.len(), 16);
    assert_eq!(raw("data_reply")[PREFIX_LEN], 0xde);
}

#[test]
fn returned_request_keeps_the_original_headers() {
    let (_, ret) = decode("return_cant_forward");
    let h = &ret.headers;
    check_cell_headers("return_cant_forward", h);
    assert_eq!(str_header(h, "cn__msg_type"), "return");
    assert_eq!(str_header(h, "cn__return_code"), "comm_error");
    assert_eq!(str_header(h, "cn__error"), "cannot forward");
    assert_eq!(str_header(h, "cn__destination"), "site-3");
    let (_, req) = decode("request_unroutable");
    // The original headers come back as a nested map, equal to the request's headers, key for key and in order.
    let original = h
        .get("cn__original_headers")
        .and_then(Value::as_map)
        .expect("cn__original_headers map");
    let original: Headers = original
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(original, req.headers);
    // A returned request names the request it answers with a one-element list of ids, as a batched reply would.
    let req_id = req.headers.get_str("cn__req_id").unwrap();
    assert_eq!(h.get("cn__req_id"), Some(&Value::Array(vec![Value::from(req_id)])));
    assert_eq!(str_header(h, "cn__return_reason"), "cant_forward");
    assert_eq!(str_header(h, "cn__payload_encoding"), "none");
    assert!(ret.payload.is_empty());
}

#[test]
fn fixtures_decode_from_one_stream_in_small_pieces() {
    // As they would arrive on a socket: back to back, cut at arbitrary points.
    let mut stream = Vec::new();
    for name in FIXTURES {
        stream.extend_from_slice(&raw(name));
    }
    let mut codec = FrameCodec::new(64 * 1024);
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(7) {
        src.extend_from_slice(piece);
        while let Some(f) = codec.decode(&mut src).unwrap() {
            frames.push(f);
        }
    }
    assert!(src.is_empty());
    let expected: Vec<Frame> = FIXTURES.iter().map(|n| decode(n).1).collect();
    assert_eq!(frames, expected);
}
