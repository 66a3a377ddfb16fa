//! NDJSON event batches as docs/HTTP.md §Event batches specifies them: raw
//! body in, records and per-line reasons out.

use bytes::Bytes;
use drover_http_ingest::ndjson::{self, Batch, BatchLimits, BatchParser, Field, LineError, Reason};

fn parse(body: &str) -> Batch {
    ndjson::parse(Bytes::copy_from_slice(body.as_bytes()), &BatchLimits::default())
}

/// `(line, reason code, field)` of every error.
fn reasons(batch: &Batch) -> Vec<(u64, &'static str, Option<Field>)> {
    batch
        .errors
        .iter()
        .map(|e| (e.line, e.reason.code(), e.reason.field()))
        .collect()
}

/// The reason of a one-line body that must be invalid.
fn reason_of(line: &str) -> Reason {
    let batch = parse(line);
    assert_eq!(batch.records, vec![], "{line}");
    assert_eq!(batch.errors.len(), 1, "{line}");
    batch.errors[0].reason
}

#[test]
fn a_text_body_and_a_base64_body() {
    let batch = parse(concat!(
        r#"{"event_id":1,"time_ms":1767225600000,"kind":1,"body":"{\"t\":21.5}"}"#,
        "\n",
        r#"{"body_b64":"AAEC","kind":2,"time_ms":1767225601000,"event_id":2}"#,
        "\n",
    ));
    assert_eq!(batch.errors, vec![]);
    let [text, binary] = &batch.records[..] else {
        panic!("two records: {:?}", batch.records)
    };
    assert_eq!(
        (text.line, text.event_id, text.time_ms, text.kind),
        (1, 1, 1_767_225_600_000, 1)
    );
    assert_eq!(text.body, Bytes::from_static(br#"{"t":21.5}"#));
    assert_eq!((binary.line, binary.event_id, binary.kind), (2, 2, 2));
    assert_eq!(binary.body, Bytes::from_static(&[0, 1, 2]));
    assert_eq!(batch.stats.valid, 2);
    assert_eq!(batch.stats.invalid, 0);
    assert_eq!(batch.stats.lines, 2);
    assert_eq!(batch.stats.bytes, 136);
}

#[test]
fn a_record_is_the_cwp_event() {
    let batch = parse(r#"{"event_id":7,"time_ms":8,"kind":9,"body":"hi"}"#);
    let event = batch.records[0].to_event();
    assert_eq!((event.event_id, event.time_ms, event.kind), (7, 8, 9));
    assert_eq!(event.body, Bytes::from_static(b"hi"));
}

#[test]
fn json_whitespace_escapes_and_unicode_are_json_as_usual() {
    let batch = parse(concat!(
        " { \"event_id\" : 1 ,\t\"time_ms\":0, \"kind\":0 , \"body\" : \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t é\" } \r\n",
        "{\"event\\u005fid\":2,\"time_ms\":0,\"kind\":0,\"body_b64\":\"AA\\/A\"}\n",
    ));
    assert_eq!(batch.errors, vec![]);
    assert_eq!(
        batch.records[0].body,
        Bytes::from("café 😀 \"q\" \\ / \u{8}\u{c}\n\r\t é".as_bytes().to_vec())
    );
    assert_eq!(batch.records[1].event_id, 2, "an escaped key is the key it decodes to");
    assert_eq!(batch.records[1].body, Bytes::from_static(&[0x00, 0x0f, 0xc0]));
}

#[test]
fn blank_lines_are_skipped_but_numbered() {
    let batch = parse(concat!(
        "\n",
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":""}"#,
        "\n \t\r\n\n",
        r#"{"event_id":1,"time_ms":0,"kind":0,"body":""}"#,
        "\n\n",
    ));
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].line, 2);
    assert_eq!(reasons(&batch), vec![(5, "out_of_order", None)]);
    assert_eq!(batch.stats.lines, 6);
    assert_eq!(batch.stats.blank, 4);
    assert_eq!(batch.stats.total(), 2);
}

#[test]
fn the_last_line_needs_no_lf_and_an_empty_body_has_no_lines() {
    let batch = parse(r#"{"event_id":1,"time_ms":0,"kind":0,"body":""}"#);
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.stats.lines, 1);
    let empty = parse("");
    assert_eq!((empty.records.len(), empty.errors.len(), empty.stats.lines), (0, 0, 0));
}

#[test]
fn event_ids_strictly_increase_from_above_zero_over_the_valid_lines() {
    let batch = parse(concat!(
        r#"{"event_id":0,"time_ms":0,"kind":0,"body":""}"#,
        "\n",
        r#"{"event_id":5,"time_ms":0,"kind":0,"body":""}"#,
        "\n",
        r#"{"event_id":9,"time_ms":0,"kind":0,"body":5}"#,
        "\n",
        r#"{"event_id":5,"time_ms":0,"kind":0,"body":""}"#,
        "\n",
        r#"{"event_id":4,"time_ms":0,"kind":0,"body":""}"#,
        "\n",
        r#"{"event_id":6,"time_ms":0,"kind":0,"body":""}"#,
        "\n",
    ));
    let ids: Vec<u64> = batch.records.iter().map(|r| r.event_id).collect();
    assert_eq!(ids, vec![5, 6], "an invalid line's id does not count");
    assert_eq!(
        reasons(&batch),
        vec![
            (1, "out_of_order", None),
            (3, "wrong_type", Some(Field::Body)),
            (4, "out_of_order", None),
            (5, "out_of_order", None),
        ]
    );
}

#[test]
fn every_field_is_required_and_exactly_one_body() {
    assert_eq!(
        reason_of(r#"{"time_ms":0,"kind":0,"body":""}"#),
        Reason::MissingField(Field::EventId)
    );
    assert_eq!(
        reason_of(r#"{"event_id":1,"kind":0,"body":""}"#),
        Reason::MissingField(Field::TimeMs)
    );
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"body":""}"#),
        Reason::MissingField(Field::Kind)
    );
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"kind":0}"#),
        Reason::MissingField(Field::Body)
    );
    assert_eq!(reason_of("{}"), Reason::MissingField(Field::EventId));
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"kind":0,"body":"","body_b64":""}"#),
        Reason::BothBodies
    );
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"kind":0,"body_b64":"","body":""}"#),
        Reason::BothBodies
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"kind":0,"body":"","serial":"X"}"#),
        Reason::UnknownField
    );
    assert_eq!(
        reason_of(r#"{"Event_id":1,"time_ms":0,"kind":0,"body":""}"#),
        Reason::UnknownField
    );
}

#[test]
fn kind_is_a_u16() {
    let ok = parse(r#"{"event_id":1,"time_ms":0,"kind":65534,"body":""}"#);
    assert_eq!(ok.records[0].kind, 65_534);
    assert_eq!(
        reason_of(r#"{"event_id":1,"time_ms":0,"kind":65536,"body":""}"#),
        Reason::OutOfRange(Field::Kind)
    );
}

#[test]
fn a_command_result_holds_a_command_id_and_a_status() {
    // kind 65535 (CWP/1 §3 Commands): 16-byte command id, 1 status byte, data.
    let seventeen = "AAAAAAAAAAAAAAAAAAAAAAE="; // 16 zero bytes and status 1
    let sixteen = "AAAAAAAAAAAAAAAAAAAAAA==";
    let batch = parse(&format!(
        "{{\"event_id\":1,\"time_ms\":0,\"kind\":65535,\"body_b64\":\"{seventeen}\"}}\n\
         {{\"event_id\":2,\"time_ms\":0,\"kind\":65535,\"body_b64\":\"{sixteen}\"}}\n\
         {{\"event_id\":3,\"time_ms\":0,\"kind\":65535,\"body\":\"0123456789abcdef0 and output\"}}\n"
    ));
    assert_eq!(batch.records.iter().map(|r| r.event_id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(batch.records[0].body.len(), 17);
    assert_eq!(reasons(&batch), vec![(2, "bad_command_result", None)]);
}

#[test]
fn bodies_are_limited_as_cwp_event_bodies_are() {
    let limits = BatchLimits::default();
    let max = limits.max_body_len();
    let line = |len: usize| {
        format!(
            "{{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"{}\"}}",
            "x".repeat(len)
        )
    };
    assert_eq!(parse(&line(max)).records[0].body.len(), 65_510);
    assert_eq!(reason_of(&line(max + 1)), Reason::BodyTooLong);

    // Decoded length counts: escapes and base64 shrink.
    let escaped = format!(
        "{{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"{}\"}}",
        "\\n".repeat(max)
    );
    assert_eq!(parse(&escaped).records[0].body.len(), max);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(vec![7u8; max + 1]);
    let too_long = format!("{{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body_b64\":\"{b64}\"}}");
    assert_eq!(reason_of(&too_long), Reason::BodyTooLong);

    // A smaller max_payload lowers the limit.
    let small = BatchLimits {
        max_payload: 1024,
        ..BatchLimits::default()
    };
    assert_eq!(small.max_body_len(), 998);
    let batch = ndjson::parse(Bytes::from(line(999)), &small);
    assert_eq!(batch.errors[0].reason, Reason::BodyTooLong);
}

#[test]
fn a_line_too_long_is_an_error_and_the_next_line_is_read() {
    let limits = BatchLimits {
        max_line_len: 100,
        ..BatchLimits::default()
    };
    let ok = r#"{"event_id":2,"time_ms":0,"kind":0,"body":""}"#;
    let long = format!(
        "{{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"{}\"}}",
        "y".repeat(100)
    );
    let exactly = format!(
        "{{\"event_id\":3,\"time_ms\":0,\"kind\":0,\"body\":\"{}\"}}",
        "z".repeat(55)
    );
    assert_eq!(exactly.len(), 100);
    let body = format!("{long}\n{ok}\n{exactly}\n{long}");
    for chunk_len in [1, 7, 64, 100, 101, body.len()] {
        let mut parser = BatchParser::new(limits.clone());
        for chunk in body.as_bytes().chunks(chunk_len) {
            parser.feed(Bytes::copy_from_slice(chunk));
            assert!(parser.buffered() <= 100, "never more than a line's limit is held");
        }
        let batch = parser.finish();
        assert_eq!(
            batch.errors,
            vec![
                LineError {
                    line: 1,
                    reason: Reason::LineTooLong
                },
                LineError {
                    line: 4,
                    reason: Reason::LineTooLong
                }
            ],
            "chunks of {chunk_len}"
        );
        assert_eq!(batch.records.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(batch.stats.lines, 4);
    }
}

#[test]
fn only_the_first_errors_are_kept_but_all_are_counted() {
    let body = "x\n".repeat(250);
    let batch = parse(&body);
    assert_eq!(batch.errors.len(), 100);
    assert_eq!(batch.errors[99].line, 100);
    assert_eq!(batch.stats.invalid, 250);
    let few = ndjson::parse(
        Bytes::from(body),
        &BatchLimits {
            max_errors_kept: 3,
            ..BatchLimits::default()
        },
    );
    assert_eq!(few.errors.len(), 3);
}

#[test]
fn bodies_without_escapes_are_slices_of_the_input() {
    let body = Bytes::from_static(b"{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"plain\"}\n");
    let batch = ndjson::parse(body.clone(), &BatchLimits::default());
    let range = body.as_ptr_range();
    assert!(range.contains(&batch.records[0].body.as_ptr()), "no copy");
    assert_eq!(batch.footprint.input, body.len() as u64);
    assert_eq!(batch.footprint.arena, 0);

    let escaped = Bytes::from_static(b"{\"event_id\":1,\"time_ms\":0,\"kind\":0,\"body\":\"a\\nb\"}\n");
    let batch = ndjson::parse(escaped.clone(), &BatchLimits::default());
    assert!(!escaped.as_ptr_range().contains(&batch.records[0].body.as_ptr()));
    assert_eq!(batch.footprint.input, 0, "the input is not held");
    assert_eq!(batch.footprint.arena, 1024, "a small batch gets a small arena");
}

#[test]
fn reasons_have_stable_codes_and_say_which_field() {
    let error = LineError {
        line: 3,
        reason: Reason::MissingField(Field::Kind),
    };
    assert_eq!(error.to_string(), "line 3: missing_field (kind)");
    assert_eq!(Reason::OutOfOrder.to_string(), "out_of_order");
}
