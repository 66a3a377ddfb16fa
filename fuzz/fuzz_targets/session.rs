//! Fuzz target `session`: the driver's established-session rules fed
//! arbitrary sequences of sealed device frames. The script and the promises
//! checked are documented in `fuzz/src/session.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: cwp_fuzz::session::Script| cwp_fuzz::session::play(script));
