//! Feeds arbitrary bytes to the download request and reply decoders: no panic, and whatever decodes re-encodes to
//! bytes that decode the same.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sfm_core::download::wire::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(req) = Request::decode(&payload) {
        assert_eq!(Request::decode(&req.encode()).as_ref(), Ok(&req));
    }
    if let Ok(reply) = Reply::decode(&payload) {
        assert_eq!(Reply::decode(&reply.encode()).as_ref(), Ok(&reply));
    }
});
