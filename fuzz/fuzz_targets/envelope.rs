//! Stored bytes (a Redis list item, an SQLite row) → kombu envelope → task message, the
//! path every Redis and SQLite delivery takes. Beyond "no panic": an envelope that decodes
//! must survive `encode` → `decode` unchanged, as a requeued or restored message does.
#![no_main]

use celeriac_core::protocol::{envelope, TaskMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((msg, _tag)) = envelope::decode(data) else {
        return;
    };
    let _ = TaskMessage::decode(&msg);
    let again = envelope::encode(&msg, "fuzz-tag");
    let (back, tag) = envelope::decode(&again).expect("a re-encoded envelope decodes");
    assert_eq!(back, msg, "the envelope round trip changed the message");
    assert_eq!(tag.as_deref(), Some("fuzz-tag"));
});
