//! A transport message with arbitrary headers and body → `TaskMessage::decode`, what
//! `Delivery::task_message` does for every delivery a worker takes. Input format:
//! `HEADERS-JSON \0 BODY` (see `celeriac_fuzz::message_from`), so real messages are the
//! seeds. A message that decodes must decode again after `encode`, as a retried or
//! forwarded task is re-sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let msg = celeriac_fuzz::message_from(data, json!({"task": "t", "id": "i"}));
    celeriac_fuzz::decode_and_round_trip(&msg);
});
