//! A `celery.pidbox` message → the worker's remote-control command reader (input format:
//! `HEADERS-JSON \0 BODY`, see `celeriac_fuzz::message_from`; the headers carry Celery's
//! `expires`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let msg = celeriac_fuzz::message_from(data, json!({"clock": 1}));
    let _ = celeriac::control::__fuzz_parse_command(&msg);
});
