//! Properties of the NDJSON batch parser:
//!
//! - any chunking of a body gives the same records, errors and counts;
//! - valid records round-trip (written by a JSON writer, read back equal);
//! - on generated near-valid lines, a line is valid exactly when a reference
//!   built on `serde_json` (with the same rules) says so, with the same
//!   decoded values.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drover_http_ingest::ndjson::{self, Batch, BatchLimits, BatchParser};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

/// Feeds `body` cut at `cuts` (indexes into it, any order, duplicates fine).
fn parse_in_chunks(body: &[u8], cuts: &[prop::sample::Index], limits: &BatchLimits) -> Batch {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parser = BatchParser::new(limits.clone());
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        parser.feed(Bytes::copy_from_slice(&body[from..cut]));
        from = cut;
    }
    parser.finish()
}

// ---------------------------------------------------------------------------
// Generated lines: mostly well formed, with every kind of flaw mixed in.

/// A number member's value: mostly an integer in `1..=max` (edges
/// included), otherwise one of the flaws a number can have.
fn number(max: u64) -> impl Strategy<Value = String> {
    let flaw = prop_oneof![
        Just("0".to_owned()),
        Just((u128::from(max) + 1).to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("-0".to_owned()),
        Just("1.0".to_owned()),
        Just("1e3".to_owned()),
        Just("01".to_owned()),
        Just("\"7\"".to_owned()),
        Just("null".to_owned()),
        Just("[1]".to_owned()),
    ];
    prop_oneof![
        12 => (1..=max).prop_map(|n| n.to_string()),
        1 => Just("1".to_owned()),
        1 => Just(max.to_string()),
        3 => flaw,
    ]
}

/// JSON string text (quotes included) for any Rust string, non-ASCII as
/// `\u` escapes (surrogate pairs beyond the BMP) when `ascii` is set.
fn json_string(text: &str, ascii: bool) -> String {
    if !ascii {
        return serde_json::to_string(text).expect("strings serialize");
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => ("[a-z0-9 ]{0,24}", any::<bool>()).prop_map(|(t, ascii)| json_string(&t, ascii)),
        20 => (any::<String>(), any::<bool>()).prop_map(|(t, ascii)| json_string(&t, ascii)),
        1 => Just(r#""\u0000""#.to_owned()),
        1 => Just(r#""\ud800""#.to_owned()),
        1 => Just(r#""\udc00\ud800""#.to_owned()),
        1 => Just(r#""\x""#.to_owned()),
        1 => Just("\"raw\ttab\"".to_owned()),
        1 => Just(r#""0123456789abcdefS and the result""#.to_owned()),
        1 => Just("{\"a\":1}".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("5".to_owned()),
    ]
}

fn base64_value() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| format!("\"{}\"", STANDARD.encode(b))),
        4 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| format!("\"{}\"", STANDARD.encode(b).replace('/', "\\/"))),
        1 => Just(r#""AAE""#.to_owned()),
        1 => Just(r#""AB==""#.to_owned()),
        1 => Just(r#""A-_A""#.to_owned()),
        1 => Just("null".to_owned()),
    ]
}

/// One `"key":value` member.
fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => number(u64::MAX).prop_map(|v| format!("\"event_id\":{v}")),
        4 => number(u64::MAX).prop_map(|v| format!("\"time_ms\":{v}")),
        4 => number(65535).prop_map(|v| format!("\"kind\":{v}")),
        4 => text_value().prop_map(|v| format!("\"body\":{v}")),
        3 => base64_value().prop_map(|v| format!("\"body_b64\":{v}")),
        1 => number(u64::MAX).prop_map(|v| format!("\"event\\u005fid\":{v}")),
        1 => text_value().prop_map(|v| format!("\"extra\":{v}")),
        1 => Just("\"kind\" : 1".to_owned()),
    ]
}

/// A line: the four usual members in a random order (or random members),
/// joined with random whitespace, sometimes with a byte inserted or
/// removed, or something after the object.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        text_value().prop_map(|v| format!("\"body\":{v}")),
        base64_value().prop_map(|v| format!("\"body_b64\":{v}")),
    ];
    let usual = (number(u64::MAX), number(u64::MAX), number(65535), body)
        .prop_map(|(id, time, kind, body)| {
            vec![
                format!("\"event_id\":{id}"),
                format!("\"time_ms\":{time}"),
                format!("\"kind\":{kind}"),
                body,
            ]
        })
        .prop_shuffle();
    let members = prop_oneof![6 => usual, 1 => proptest::collection::vec(member(), 0..6)];
    let separator = prop_oneof![Just(","), Just(" , "), Just(",\t")];
    let suffix = prop_oneof![8 => Just(""), 1 => Just(" \r"), 1 => Just(" x"), 1 => Just("}"), 1 => Just("{}")];
    let mutation = prop_oneof![
        12 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Some((at, Some(byte)))),
        1 => any::<prop::sample::Index>().prop_map(|at| Some((at, None))),
    ];
    (members, separator, suffix, mutation).prop_map(|(members, separator, suffix, mutation)| {
        let mut line = format!("{{{}}}{suffix}", members.join(separator)).into_bytes();
        match mutation {
            Some((at, Some(byte))) => line.insert(at.index(line.len() + 1), byte),
            Some((at, None)) if !line.is_empty() => {
                line.remove(at.index(line.len()));
            }
            _ => {}
        }
        line.retain(|&b| b != b'\n');
        line
    })
}

/// A body: lines, blank lines and CRLFs, with or without a final LF.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let entry = prop_oneof![
        8 => line(),
        1 => Just(Vec::new()),
        1 => Just(b" \t\r".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(|mut b| { b.retain(|&x| x != b'\n'); b }),
    ];
    (proptest::collection::vec((entry, any::<bool>()), 0..24), any::<bool>()).prop_map(|(entries, final_lf)| {
        let mut body = Vec::new();
        for (i, (line, crlf)) in entries.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(b"\n");
            }
            body.extend_from_slice(line);
            if *crlf {
                body.push(b'\r');
            }
        }
        if final_lf && !body.is_empty() {
            body.push(b'\n');
        }
        body
    })
}

// ---------------------------------------------------------------------------
// The reference: serde_json plus the rules of docs/HTTP.md.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceLine {
    event_id: u64,
    time_ms: u64,
    kind: u16,
    #[serde(default, deserialize_with = "present")]
    body: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    body_b64: Option<Value>,
}

/// `Some` whenever the key is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The event a single line is, after the same rules, or `None` if invalid.
fn reference(line: &[u8], limits: &BatchLimits) -> Option<(u64, u64, u16, Vec<u8>)> {
    let parsed: ReferenceLine = serde_json::from_slice(line).ok()?;
    let body = match (parsed.body, parsed.body_b64) {
        (Some(Value::String(text)), None) if !text.contains('\0') => text.into_bytes(),
        (None, Some(Value::String(b64))) => STANDARD.decode(b64).ok()?,
        _ => return None,
    };
    let valid =
        body.len() <= limits.max_body_len() && parsed.event_id > 0 && (parsed.kind != 65535 || body.len() >= 17);
    valid.then_some((parsed.event_id, parsed.time_ms, parsed.kind, body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_chunking_gives_the_same_batch(
        body in body(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        max_line_len in prop_oneof![Just(BatchLimits::default().max_line_len), 20usize..200],
    ) {
        let limits = BatchLimits { max_line_len, max_errors_kept: usize::MAX, ..BatchLimits::default() };
        let whole = ndjson::parse(Bytes::from(body.clone()), &limits);
        let chunked = parse_in_chunks(&body, &cuts, &limits);
        prop_assert_eq!(&chunked.records, &whole.records);
        prop_assert_eq!(&chunked.errors, &whole.errors);
        prop_assert_eq!(chunked.stats, whole.stats);
        prop_assert_eq!(whole.stats.lines, whole.stats.blank + whole.stats.valid + whole.stats.invalid);
        prop_assert_eq!(whole.errors.len() as u64, whole.stats.invalid);
    }

    #[test]
    fn a_line_is_valid_exactly_when_serde_json_and_the_rules_say_so(line in line()) {
        let limits = BatchLimits::default();
        let batch = ndjson::parse(Bytes::from(line.clone()), &limits);
        let blank = line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'));
        prop_assume!(!blank);
        let ours = batch.records.first().map(|r| (r.event_id, r.time_ms, r.kind, r.body.to_vec()));
        let theirs = reference(&line, &limits);
        prop_assert_eq!(
            &ours, &theirs,
            "line {} ours {:?}", String::from_utf8_lossy(&line), batch.errors
        );
    }

    #[test]
    fn valid_records_round_trip(
        events in proptest::collection::vec(
            (1u64..1000, any::<u64>(), any::<u16>(), prop_oneof![
                any::<String>().prop_map(|t| t.replace('\0', "").into_bytes()).prop_map(|b| (b, true)),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, false)),
            ], any::<bool>()),
            0..200,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut body = Vec::new();
        let mut expected = Vec::new();
        let mut event_id = 0u64;
        for (line, (gap, time_ms, kind, (mut bytes, text), ascii)) in (1u64..).zip(events) {
            event_id += gap;
            if kind == 65535 {
                bytes.resize(bytes.len().max(17), b'r');
            }
            let value = if text {
                format!("\"body\":{}", json_string(std::str::from_utf8(&bytes).expect("text bodies are UTF-8"), ascii))
            } else {
                format!("\"body_b64\":\"{}\"", STANDARD.encode(&bytes))
            };
            body.extend_from_slice(
                format!("{{\"event_id\":{event_id},\"time_ms\":{time_ms},\"kind\":{kind},{value}}}\n").as_bytes(),
            );
            expected.push((line, event_id, time_ms, kind, bytes));
        }
        let batch = parse_in_chunks(&body, &cuts, &BatchLimits::default());
        prop_assert_eq!(batch.errors, vec![]);
        let got: Vec<_> = batch
            .records
            .iter()
            .map(|r| (r.line, r.event_id, r.time_ms, r.kind, r.body.to_vec()))
            .collect();
        prop_assert_eq!(got, expected);
        // The parsed form is a small multiple of the input (docs/HTTP.md
        // §Memory): records, plus the chunks or arena blocks bodies live in.
        prop_assert!(
            batch.footprint.total() <= 3 * body.len() as u64 + 128 * 1024,
            "{:?} for {} bytes", batch.footprint, body.len()
        );
    }
}

/// The generated lines exercise both outcomes, or the comparison with the
/// reference would prove little.
#[test]
fn the_generated_lines_are_often_valid_and_often_not() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let limits = BatchLimits::default();
    let lines = 2000;
    let valid = (0..lines)
        .filter(|_| {
            let line = line().new_tree(&mut runner).expect("a line").current();
            reference(&line, &limits).is_some()
        })
        .count();
    assert!((lines / 5..lines * 4 / 5).contains(&valid), "{valid} of {lines} valid");
}
