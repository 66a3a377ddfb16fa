//! Fuzz target `decoder`: one CWP/1 connection's receive path fed arbitrary
//! bytes. The input layout and the promises checked are documented in the
//! `cwp-fuzz` crate (`fuzz/src/lib.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| cwp_fuzz::decode_connection(input));
