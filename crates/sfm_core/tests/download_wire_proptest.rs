//! Property tests of the download protocol's bodies: any request or reply round-trips, and hostile bytes (raw, or
//! behind a valid section header) are refused without a panic.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use sfm_core::download::wire::{Data, Layout, Position, Reply, Request};

fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        Just(Position::Start),
        any::<u64>().prop_map(|n| Position::Offset(n >> 1)),
        (any::<u32>(), any::<u32>()).prop_map(|(s, c)| Position::Items {
            start: u64::from(s),
            count: u64::from(c)
        }),
    ]
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn reply() -> impl Strategy<Value = Reply> {
    let data = prop_oneof![
        bytes().prop_map(Data::Bytes),
        proptest::collection::vec(bytes(), 0..5).prop_map(Data::Items),
    ];
    let layout = proptest::option::of((any::<u32>(), 1u32..).prop_map(|(t, c)| Layout {
        total_size: u64::from(t),
        chunk_size: u64::from(c),
    }));
    prop_oneof![
        Just(Reply::Eof),
        Just(Reply::Error),
        (data, position(), layout, any::<bool>()).prop_map(|(data, next, layout, cancel_capable)| Reply::Data {
            data,
            next,
            layout,
            cancel_capable
        }),
    ]
}

/// `body` behind a LOBS main-section header that announces exactly its length.
fn sectioned(body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(100);
    out.put_u8(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(body);
    out.freeze()
}

proptest! {
    #[test]
    fn requests_round_trip(ref_id in "[A-Za-z0-9]{1,40}", position in position(), cancel in any::<bool>()) {
        let req = Request { ref_id, position, cancel };
        prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
    }

    #[test]
    fn replies_round_trip(reply in reply()) {
        prop_assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
    }

    #[test]
    fn hostile_bodies_are_refused_or_round_trip(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        for payload in [Bytes::from(body.clone()), sectioned(&body)] {
            if let Ok(req) = Request::decode(&payload) {
                prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
            }
            if let Ok(reply) = Reply::decode(&payload) {
                prop_assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
            }
        }
    }
}
