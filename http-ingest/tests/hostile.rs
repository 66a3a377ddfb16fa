//! Hostile lines: each is one line's error with a clear reason, never a
//! panic, and never more memory than one line's limit.

use bytes::Bytes;
use drover_http_ingest::ndjson::{self, BatchLimits, BatchParser, Field, Reason};
use proptest::prelude::*;

fn parse_with(line: &[u8], limits: &BatchLimits) -> Reason {
    let batch = ndjson::parse(Bytes::copy_from_slice(line), limits);
    assert_eq!(batch.records, vec![], "{}", String::from_utf8_lossy(line));
    assert_eq!(batch.errors.len(), 1, "{}", String::from_utf8_lossy(line));
    batch.errors[0].reason
}

fn reason_of(line: &[u8]) -> Reason {
    parse_with(line, &BatchLimits::default())
}

/// A line valid but for `field`'s value.
fn with_value(field: Field, value: &str) -> String {
    let mut parts = [
        ("event_id", "1".to_owned()),
        ("time_ms", "0".to_owned()),
        ("kind", "0".to_owned()),
        ("body", "\"x\"".to_owned()),
    ];
    match field {
        Field::BodyB64 => parts[3] = ("body_b64", value.to_owned()),
        _ => {
            let part = parts
                .iter_mut()
                .find(|(name, _)| *name == field.name())
                .expect("a field of the line");
            part.1 = value.to_owned();
        }
    }
    let fields: Vec<String> = parts
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[test]
fn huge_numbers_are_out_of_range() {
    for field in [Field::EventId, Field::TimeMs] {
        assert_eq!(
            reason_of(with_value(field, "18446744073709551616").as_bytes()),
            Reason::OutOfRange(field)
        );
        assert_eq!(
            reason_of(with_value(field, &"9".repeat(10_000)).as_bytes()),
            Reason::OutOfRange(field)
        );
    }
    assert_eq!(
        reason_of(with_value(Field::Kind, "65536").as_bytes()),
        Reason::OutOfRange(Field::Kind)
    );
    assert_eq!(
        reason_of(with_value(Field::Kind, &"9".repeat(40)).as_bytes()),
        Reason::OutOfRange(Field::Kind)
    );
    let max = ndjson::parse(
        Bytes::from(with_value(Field::EventId, "18446744073709551615")),
        &BatchLimits::default(),
    );
    assert_eq!(max.records[0].event_id, u64::MAX);
}

#[test]
fn negative_numbers_are_refused_even_minus_zero() {
    for field in [Field::EventId, Field::TimeMs, Field::Kind] {
        for value in ["-1", "-0", "-18446744073709551616", "-1.5"] {
            assert_eq!(
                reason_of(with_value(field, value).as_bytes()),
                Reason::NegativeNumber(field),
                "{value}"
            );
        }
    }
}

#[test]
fn floats_are_not_integers_even_whole_ones() {
    for field in [Field::EventId, Field::TimeMs, Field::Kind] {
        for value in ["1.0", "1.5", "1e3", "1E+3", "0e0", "10e-1", "1e400"] {
            assert_eq!(
                reason_of(with_value(field, value).as_bytes()),
                Reason::NotAnInteger(field),
                "{value}"
            );
        }
    }
}

#[test]
fn numbers_that_are_not_json_are_invalid_json() {
    for value in [
        "01", "+1", ".5", "1.", "1e", "1e+", "-", "NaN", "Infinity", "0x10", "1_000", "１",
    ] {
        assert_eq!(
            reason_of(with_value(Field::EventId, value).as_bytes()),
            Reason::InvalidJson,
            "{value}"
        );
    }
}

#[test]
fn values_of_the_wrong_type_are_wrong_type() {
    for value in ["\"1\"", "null", "true", "false", "{}", "[1]", "{\"a\":{\"b\":1}}"] {
        for field in [Field::EventId, Field::TimeMs, Field::Kind] {
            assert_eq!(
                reason_of(with_value(field, value).as_bytes()),
                Reason::WrongType(field),
                "{value}"
            );
        }
    }
    for value in ["1", "-1", "null", "true", "false", "{\"text\":\"x\"}", "[\"x\"]"] {
        for field in [Field::Body, Field::BodyB64] {
            assert_eq!(
                reason_of(with_value(field, value).as_bytes()),
                Reason::WrongType(field),
                "{value}"
            );
        }
    }
}

#[test]
fn duplicated_keys_are_refused_whichever_value_wins_elsewhere() {
    let cases = [
        (
            r#"{"event_id":1,"event_id":1,"time_ms":0,"kind":0,"body":""}"#,
            Field::EventId,
        ),
        (
            r#"{"event_id":1,"time_ms":0,"kind":0,"body":"","time_ms":0}"#,
            Field::TimeMs,
        ),
        (r#"{"event_id":1,"time_ms":0,"kind":0,"kind":1,"body":""}"#, Field::Kind),
        (
            r#"{"event_id":1,"time_ms":0,"kind":0,"body":"a","body":"b"}"#,
            Field::Body,
        ),
        (
            r#"{"event_id":1,"time_ms":0,"kind":0,"body_b64":"","body_b64":""}"#,
            Field::BodyB64,
        ),
        (
            r#"{"event_id":1,"event\u005fid":2,"time_ms":0,"kind":0,"body":""}"#,
            Field::EventId,
        ),
    ];
    for (line, field) in cases {
        assert_eq!(reason_of(line.as_bytes()), Reason::DuplicateField(field), "{line}");
    }
}

#[test]
fn nul_is_refused_in_text_bodies() {
    assert_eq!(
        reason_of(with_value(Field::Body, r#""a\u0000b""#).as_bytes()),
        Reason::NulInBody
    );
    assert_eq!(
        reason_of(with_value(Field::BodyB64, r#""\u0000""#).as_bytes()),
        Reason::InvalidBase64
    );
    // As a binary body it is fine.
    let batch = ndjson::parse(
        Bytes::from(with_value(Field::BodyB64, "\"AA==\"")),
        &BatchLimits::default(),
    );
    assert_eq!(batch.records[0].body, Bytes::from_static(&[0]));
    // A key with NUL is just not a field.
    assert_eq!(
        reason_of(br#"{"event_id\u0000":1,"time_ms":0,"kind":0,"body":""}"#),
        Reason::UnknownField
    );
}

#[test]
fn lone_surrogates_are_refused_and_pairs_decode() {
    for escaped in [
        r#""\ud800""#,
        r#""\udbff""#,
        r#""\udc00""#,
        r#""\udfff""#,
        r#""\ud800x""#,
        r#""\ud800\u0041""#,
        r#""\ud800\ud800""#,
        r#""\udc00\ud800""#,
        r#""x\uDFFF""#,
    ] {
        assert_eq!(
            reason_of(with_value(Field::Body, escaped).as_bytes()),
            Reason::LoneSurrogate,
            "{escaped}"
        );
    }
    assert_eq!(
        reason_of(br#"{"\ud800":1,"event_id":1,"time_ms":0,"kind":0,"body":""}"#),
        Reason::LoneSurrogate
    );
    let pair = ndjson::parse(
        Bytes::from(with_value(Field::Body, r#""\uD83D\uDE00""#)),
        &BatchLimits::default(),
    );
    assert_eq!(pair.records[0].body, Bytes::from("😀"));
}

#[test]
fn invalid_utf8_is_refused_wherever_it_is() {
    let valid = with_value(Field::Body, "\"é\"").into_bytes();
    let at = valid.iter().position(|&b| b == 0xC3).expect("é is C3 A9");
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for bad in [
        &[0xFF][..],
        &[0xC0, 0x80],
        &[0xED, 0xA0, 0x80],
        &[0xC3],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0x80],
    ] {
        let mut line = valid[..at].to_vec();
        line.extend_from_slice(bad);
        line.extend_from_slice(&valid[at + 2..]);
        cases.push(line);
    }
    cases.push([&[0xFE][..], &valid].concat());
    for line in cases {
        assert_eq!(reason_of(&line), Reason::InvalidUtf8, "{line:x?}");
    }
}

#[test]
fn lines_that_are_not_json_are_invalid_json() {
    for line in [
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"",}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":""} {}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":""}}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"" x"#,
        r#"{"event_id" 1,"time_ms":0,"kind":0,"body":""}"#,
        r#"{"event_id":1 "time_ms":0,"kind":0,"body":""}"#,
        r#"{event_id:1,"time_ms":0,"kind":0,"body":""}"#,
        r#"{'event_id':1,"time_ms":0,"kind":0,"body":""}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"unterminated}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"bad \x escape"}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"short \u12"}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"bad \u12g4"}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":"trailing \"#,
        "{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"raw\ttab\"}",
        "{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"raw\u{1}control\"}",
        "{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"raw\rCR\"}",
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":undefined}"#,
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":nul}"#,
        r#"{"event_id":1,"#,
        "{",
    ] {
        assert_eq!(reason_of(line.as_bytes()), Reason::InvalidJson, "{line}");
    }
}

#[test]
fn lines_that_are_not_objects_are_not_an_object() {
    for line in ["[]", "1", "\"text\"", "null", "hello", "\u{feff}{\"event_id\":1}", "}"] {
        assert_eq!(reason_of(line.as_bytes()), Reason::NotAnObject, "{line}");
    }
}

#[test]
fn invalid_base64_is_refused() {
    for value in [
        r#""AAE""#,
        r#""AA=A""#,
        r#""AB==""#,
        r#""A===""#,
        r#""AAEC ""#,
        r#""AA-_""#,
        r#""*AAA""#,
    ] {
        assert_eq!(
            reason_of(with_value(Field::BodyB64, value).as_bytes()),
            Reason::InvalidBase64,
            "{value}"
        );
    }
}

#[test]
fn deep_nesting_costs_nothing_and_cannot_overflow_the_stack() {
    let depth = 1_000_000;
    let limits = BatchLimits {
        max_line_len: 8 * depth,
        ..BatchLimits::default()
    };
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    assert_eq!(parse_with(nested.as_bytes(), &limits), Reason::NotAnObject);
    assert_eq!(parse_with(objects.as_bytes(), &limits), Reason::UnknownField);
    assert_eq!(
        parse_with(with_value(Field::Body, &nested).as_bytes(), &limits),
        Reason::WrongType(Field::Body)
    );
    assert_eq!(
        parse_with(with_value(Field::EventId, &objects).as_bytes(), &limits),
        Reason::WrongType(Field::EventId)
    );
    let unknown = format!("{{\"extra\":{nested},\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"\"}}");
    assert_eq!(parse_with(unknown.as_bytes(), &limits), Reason::UnknownField);
    // Unterminated: nothing is waiting for a closing bracket either.
    let open = "[".repeat(depth);
    assert_eq!(
        parse_with(with_value(Field::Kind, &open).as_bytes(), &limits),
        Reason::WrongType(Field::Kind)
    );
}

/// A 100 MB line, fed as 64 KiB chunks like an HTTP body: refused, never
/// held, and the line after it is read.
#[test]
fn a_100_mb_line_is_refused_in_bounded_memory() {
    let limits = BatchLimits::default();
    let mut parser = BatchParser::new(limits.clone());
    parser.feed(Bytes::from_static(br#"{"event_id":1,"time_ms":0,"kind":0,"body":""#));
    let filler = Bytes::from(vec![b'a'; 64 * 1024]);
    let mut fed = 0;
    while fed < 100_000_000 {
        parser.feed(filler.clone());
        fed += filler.len();
        assert!(parser.buffered() <= limits.max_line_len);
    }
    assert_eq!(parser.buffered(), 0, "dropped once found too long");
    parser.feed(Bytes::from_static(
        b"\"}\n{\"event_id\":2,\"time_ms\":0,\"kind\":0,\"body\":\"next\"}\n",
    ));
    let batch = parser.finish();
    assert_eq!(batch.errors.len(), 1);
    assert_eq!((batch.errors[0].line, batch.errors[0].reason), (1, Reason::LineTooLong));
    assert_eq!(batch.records.len(), 1);
    assert_eq!((batch.records[0].line, &batch.records[0].body[..]), (2, &b"next"[..]));
    assert!(batch.stats.bytes > 100_000_000);
    assert_eq!(
        batch.footprint.input, 53,
        "only the last chunk, which holds the record's body"
    );
}

/// A whole 100 MB line arriving in one chunk is refused without a copy.
#[test]
fn a_100_mb_line_in_one_chunk_is_not_copied() {
    let mut body = vec![b' '; 100_000_000];
    body.push(b'\n');
    body.extend_from_slice(br#"{"event_id":2,"time_ms":0,"kind":0,"body":"next"}"#);
    let mut parser = BatchParser::new(BatchLimits::default());
    parser.feed(Bytes::from(body));
    assert_eq!(parser.buffered(), 49, "only the last line, which has no LF yet");
    let batch = parser.finish();
    assert_eq!(batch.errors[0].reason, Reason::LineTooLong);
    assert_eq!(batch.records[0].line, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes in random chunks: no panic, and the counts add up.
    #[test]
    fn random_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        max_line_len in 1usize..300,
    ) {
        let limits = BatchLimits { max_line_len, ..BatchLimits::default() };
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parser = BatchParser::new(limits.clone());
        let mut from = 0;
        for cut in cuts.into_iter().chain([body.len()]) {
            parser.feed(Bytes::copy_from_slice(&body[from..cut]));
            prop_assert!(parser.buffered() <= max_line_len);
            from = cut;
        }
        let batch = parser.finish();
        prop_assert_eq!(batch.stats.lines, batch.stats.blank + batch.stats.valid + batch.stats.invalid);
        prop_assert_eq!(batch.stats.bytes, body.len() as u64);
        prop_assert!(batch.errors.len() <= 100);
        prop_assert!(batch.records.windows(2).all(|w| w[0].event_id < w[1].event_id));
    }

    /// Random bytes inside an otherwise valid line's body string.
    #[test]
    fn random_bytes_in_a_body_never_panic(inner in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut line = br#"{"event_id":1,"time_ms":0,"kind":0,"body":""#.to_vec();
        line.extend_from_slice(&inner);
        line.extend_from_slice(b"\"}");
        let batch = ndjson::parse(Bytes::from(line), &BatchLimits::default());
        prop_assert_eq!(batch.stats.valid + batch.stats.invalid + batch.stats.blank, batch.stats.lines);
    }
}
