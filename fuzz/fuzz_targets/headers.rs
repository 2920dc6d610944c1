//! The `message` target's checks on messages built from typed choices rather than mutated
//! text (see `celeriac_fuzz::typed_message`): every known header, often present, with
//! values at the edges of what the decoder converts (huge and fractional numbers,
//! timestamps with out-of-range fields, signatures in the embed), which byte mutation of
//! JSON text rarely produces. `cargo fuzz fmt headers <input>` prints a crashing message.
#![no_main]

use celeriac_fuzz::TypedMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|msg: TypedMessage| {
    celeriac_fuzz::decode_and_round_trip(&msg.0);
});
