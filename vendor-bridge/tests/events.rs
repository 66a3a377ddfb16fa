//! `StreamEvents` against a real Redis: every event is stored exactly once
//! per (serial, event_id), in id order per serial, byte-exact; a command
//! result is published once, with its storage; nothing is acknowledged that
//! is not stored, even while Redis is down.
#![allow(clippy::unwrap_used)]

mod support;

use drover_proto::bridge::{DriverMessage, EventBatch, driver_message};
use drover_testkit::wait::eventually;
use support::{Bridge, DEADLINE, DriverStream, counts, event, next_message, raw_entries, stored_events, xlen};
use tokio::sync::mpsc;
use tonic::Code;

const RESULT: u32 = 0xFFFF;

#[tokio::test]
async fn a_batch_sent_twice_is_stored_once() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let batch = vec![
        event("CTRL-1", 1, 7, b"a"),
        event("CTRL-1", 2, 7, b"b"),
        event("CTRL-2", 1, 7, b"c"),
    ];

    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    assert_eq!(counts(&stream.store(1, batch.clone()).await), (1, 3, 0));
    // The ack was lost: the driver sends the batch again, on the same
    // stream or after reconnecting.
    assert_eq!(counts(&stream.store(2, batch.clone()).await), (2, 0, 3));
    let mut reconnected = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    assert_eq!(counts(&reconnected.store(1, batch).await), (1, 0, 3));

    assert_eq!(xlen(&mut redis, "cwp:events").await, 3);
    assert_eq!(
        support::hget(&mut redis, "cwp:device:CTRL-1", "last_event_id")
            .await
            .as_deref(),
        Some("2")
    );
    let stats = bridge.stats.snapshot();
    assert_eq!((stats.events_stored, stats.duplicates), (3, 6));
}

/// `BRIDGE_WAIT_REPLICAS` confirms what the call's connection wrote: a
/// call that found every event stored already (a resend) must still write,
/// or a connection dialled again since the first attempt would have its
/// `WAIT` confirmed by replicas that may lack the events.
#[tokio::test]
async fn a_batch_stored_again_still_writes_its_serials_mark_for_the_wait_that_follows() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let batch = vec![event("CTRL-1", 1, 7, b"a"), event("CTRL-1", 2, 7, b"b")];
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    assert_eq!(counts(&stream.store(1, batch.clone()).await), (1, 2, 0));

    let monitor = bridge.redis.monitor().unwrap();
    assert_eq!(counts(&stream.store(2, batch).await), (2, 0, 2));
    let commands = monitor.stop().unwrap();
    assert!(
        commands.contains(r#""HSET" "cwp:hwm" "CTRL-1" "2""#),
        "the resend set CTRL-1's mark again: {commands}"
    );
    assert!(!commands.contains(r#""XADD""#), "and stored nothing: {commands}");
}

#[tokio::test]
async fn each_serials_events_are_stored_in_id_order_across_batches() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    // Two devices interleaved; batch 3 repeats A's 3 (a resend) and
    // carries an id below A's high-water mark, which must not be stored.
    stream
        .send(
            1,
            vec![event("A", 1, 1, b""), event("B", 10, 1, b""), event("A", 2, 1, b"")],
        )
        .await;
    stream
        .send(2, vec![event("B", 11, 1, b""), event("A", 3, 1, b"")])
        .await;
    stream
        .send(
            3,
            vec![
                event("A", 3, 1, b""),
                event("A", 1, 1, b""),
                event("B", 12, 1, b""),
                event("A", 4, 1, b""),
            ],
        )
        .await;
    assert_eq!(counts(&stream.durable().await), (1, 3, 0));
    assert_eq!(counts(&stream.durable().await), (2, 2, 0));
    assert_eq!(counts(&stream.durable().await), (3, 2, 2));

    let stored = stored_events(&mut redis).await;
    let ids_of = |serial: &str| -> Vec<String> {
        stored
            .iter()
            .filter(|(s, _)| s == serial)
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert_eq!(ids_of("A"), ["1", "2", "3", "4"]);
    assert_eq!(ids_of("B"), ["10", "11", "12"]);
}

#[tokio::test]
async fn event_ids_are_compared_as_u64_not_as_lua_doubles() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    const TWO_53: u64 = 1 << 53;

    // 9 then 10: as strings "10" < "9"; as numbers it is the next id.
    assert_eq!(
        counts(
            &stream
                .store(1, vec![event("S", 9, 1, b""), event("S", 10, 1, b"")])
                .await
        ),
        (1, 2, 0)
    );
    // 2^53 + 1 is the same double as 2^53: a numeric compare would call it
    // a duplicate.
    let big = vec![event("S", TWO_53, 1, b""), event("S", TWO_53 + 1, 1, b"")];
    assert_eq!(counts(&stream.store(2, big).await), (2, 2, 0));
    let top = vec![event("S", u64::MAX - 1, 1, b""), event("S", u64::MAX, 1, b"")];
    assert_eq!(counts(&stream.store(3, top).await), (3, 2, 0));
    // Below the mark, however close: duplicates.
    let below = vec![event("S", u64::MAX - 1, 1, b""), event("S", TWO_53 + 2, 1, b"")];
    assert_eq!(counts(&stream.store(4, below).await), (4, 0, 2));

    let ids: Vec<String> = stored_events(&mut redis).await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids,
        [
            "9",
            "10",
            "9007199254740992",
            "9007199254740993",
            "18446744073709551614",
            "18446744073709551615"
        ]
    );
    // The exactly-once high-water mark is exact after every call.
    assert_eq!(
        support::hget(&mut redis, "cwp:hwm", "S").await.as_deref(),
        Some("18446744073709551615")
    );
}

#[tokio::test]
async fn a_stored_entry_holds_every_field_byte_exact() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    let body: Vec<u8> = (0..=255u8).rev().collect(); // every byte value, NUL and CR LF included

    let mut sent = event("CTRL-0042", 77, 513, &body);
    sent.time_ms = 1_700_000_123_456;
    sent.received_ms = 1_700_000_123_999;
    assert_eq!(counts(&stream.store(1, vec![sent]).await), (1, 1, 0));

    let entries = raw_entries(&mut redis, "cwp:events").await;
    assert_eq!(entries.len(), 1);
    let expected: Vec<(String, Vec<u8>)> = [
        ("serial", b"CTRL-0042".to_vec()),
        ("event_id", b"77".to_vec()),
        ("time_ms", b"1700000123456".to_vec()),
        ("kind", b"513".to_vec()),
        ("body", body),
        ("driver", b"drv-a".to_vec()),
        ("received_ms", b"1700000123999".to_vec()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    assert_eq!(entries[0].1, expected);
    assert_eq!(
        support::hget(&mut redis, "cwp:device:CTRL-0042", "last_seen_ms")
            .await
            .as_deref(),
        Some("1700000123999")
    );
}

#[tokio::test]
async fn a_command_result_is_published_once_when_first_stored() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut results = bridge.subscribe("cwp:cmd-result:CTRL-7").await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    // command_id 0x11 × 16, status OK (0), data "done"
    let mut body = vec![0x11; 16];
    body.push(0);
    body.extend_from_slice(b"done");
    let result = event("CTRL-7", 5, RESULT, &body);
    assert_eq!(
        counts(&stream.store(1, vec![event("CTRL-7", 4, 1, b"x"), result.clone()]).await),
        (1, 2, 0)
    );
    assert_eq!(
        next_message(&mut results).await,
        // time_ms: the device's clock in the result's event (the ledger's
        // outcomes carry one, issue 21).
        r#"{"id":"11111111-1111-1111-1111-111111111111","serial":"CTRL-7","status":"OK","data":"done","time_ms":1700000001005}"#
    );

    // The resend is a duplicate and is not published again: the next
    // message on the channel is the marker published after the resend was
    // answered.
    assert_eq!(counts(&stream.store(2, vec![result]).await), (2, 0, 1));
    let _: i64 = redis::cmd("PUBLISH")
        .arg("cwp:cmd-result:CTRL-7")
        .arg("marker")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(next_message(&mut results).await, "marker");

    // A body that is no command result is still stored, and published as INVALID.
    assert_eq!(
        counts(&stream.store(3, vec![event("CTRL-7", 6, RESULT, b"short")]).await),
        (3, 1, 0)
    );
    assert_eq!(
        next_message(&mut results).await,
        r#"{"id":null,"serial":"CTRL-7","status":"INVALID","data":null,"error":"the event body is not a command result: body too short","time_ms":1700000001006}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_while_redis_is_down_is_acknowledged_only_once_stored() {
    let mut bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    assert_eq!(
        counts(&stream.store(1, vec![event("CTRL-1", 1, 1, b"before")]).await),
        (1, 1, 0)
    );

    // Redis dies (SIGKILL). The next batch cannot be stored: the bridge
    // holds it (trying once, or not at all if its health check noticed
    // first) until Redis is back and checked again, and answers nothing.
    tokio::task::block_in_place(|| bridge.redis.stop());
    let pending = vec![event("CTRL-1", 2, 1, b"during"), event("CTRL-2", 1, 1, b"during")];
    stream.send(2, pending.clone()).await;
    let stats = bridge.stats.clone();
    eventually("the bridge to hold the batch", DEADLINE, || async {
        stats.snapshot().streams_awaiting_durability == 1
    })
    .await;
    assert!(
        !stream.has_answer_ready(),
        "a batch was acknowledged while Redis was down"
    );

    // Redis comes back with its append-only file: the batch is stored, once,
    // and only then acknowledged.
    tokio::task::block_in_place(|| bridge.redis.start_again()).unwrap();
    assert_eq!(counts(&stream.durable().await), (2, 2, 0));
    let mut redis = bridge.redis().await;
    assert_eq!(
        stored_events(&mut redis).await,
        [("CTRL-1", "1"), ("CTRL-1", "2"), ("CTRL-2", "1")].map(|(s, id)| (s.to_owned(), id.to_owned()))
    );
    // The driver, unsure, resends it: duplicates.
    assert_eq!(counts(&stream.store(3, pending).await), (3, 0, 2));
}

#[tokio::test]
async fn batches_sent_back_to_back_are_answered_each_in_order() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    // Many batches in flight at once: the bridge may store several with one
    // script call, but answers every batch_id, in order.
    for batch_id in 1..=200u64 {
        let events = (0..10)
            .map(|i| event(&format!("S{}", i % 3), batch_id * 10 + i, 1, b"e"))
            .collect();
        stream.send(batch_id, events).await;
    }
    for batch_id in 1..=200u64 {
        assert_eq!(counts(&stream.durable().await), (batch_id, 10, 0));
    }
    assert_eq!(xlen(&mut redis, "cwp:events").await, 2000);
}

/// A fleet of 10,000 devices makes calls where every event is another
/// device's: more serials than a Lua script can `unpack` at once (about
/// 8,000 values). Such a call must be stored, not fail and be retried
/// forever (which stalled every device of the driver).
#[tokio::test]
async fn a_batch_of_thousands_of_devices_is_stored() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    // 5,000 events of 5,000 devices: 10,000 values for the HSET of the
    // high-water marks.
    let batch = |id: u64| {
        (0..5000u64)
            .map(|i| event(&format!("FLEET-{i:04}"), id, 1, b"e"))
            .collect()
    };
    assert_eq!(counts(&stream.store(1, batch(1)).await), (1, 5000, 0));
    assert_eq!(xlen(&mut redis, "cwp:events").await, 5000);
    // Every high-water mark was written: the same events again are
    // duplicates, the next ones are stored.
    assert_eq!(counts(&stream.store(2, batch(1)).await), (2, 0, 5000));
    assert_eq!(counts(&stream.store(3, batch(2)).await), (3, 5000, 0));
}

#[tokio::test]
async fn an_invalid_serial_ends_the_stream_with_invalid_argument() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    stream.send(1, vec![event("CTRL-1", 1, 1, b"ok")]).await;
    stream
        .send(2, vec![event("CTRL-1", 2, 1, b"ok"), event("CTRL 1", 1, 1, b"space")])
        .await;
    // The valid batch before it is still stored and answered.
    assert_eq!(counts(&stream.durable().await), (1, 1, 0));
    let err = stream.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Nothing of the invalid batch reached Redis.
    assert_eq!(stored_events(&mut redis).await, [("CTRL-1".to_owned(), "1".to_owned())]);
}

#[tokio::test]
async fn a_kind_above_u16_ends_the_stream_with_invalid_argument() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    stream.send(1, vec![event("CTRL-1", 1, 65536, b"")]).await;
    assert_eq!(stream.next().await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_first_message_must_be_hello() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let (outbound, rx) = mpsc::channel(4);
    outbound
        .send(DriverMessage {
            kind: Some(driver_message::Kind::Batch(EventBatch {
                batch_id: 1,
                events: vec![event("CTRL-1", 1, 1, b"")],
            })),
        })
        .await
        .unwrap();
    let err = DriverStream::open_raw(&mut client, outbound, rx).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stores_and_answers_received_batches_then_ends_streams_with_unavailable() {
    let mut bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();

    // A batch the bridge has received but cannot store yet (Redis is down).
    tokio::task::block_in_place(|| bridge.redis.stop());
    stream.send(1, vec![event("CTRL-1", 1, 1, b"")]).await;
    let stats = bridge.stats.clone();
    eventually("the bridge to hold the batch", DEADLINE, || async {
        stats.snapshot().streams_awaiting_durability == 1
    })
    .await;

    // SIGTERM arrives; Redis comes back within the grace period.
    bridge.request_shutdown();
    tokio::task::block_in_place(|| bridge.redis.start_again()).unwrap();

    assert_eq!(counts(&stream.durable().await), (1, 1, 0));
    let end = stream.next().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    bridge.stopped().await.unwrap();
}

/// The registry's copy of the high-water mark (`last_event_id`,
/// `last_seen_ms` in `cwp:device:{serial}`) is written with a device's first
/// batch and then at most once a second per device, so that devices sending
/// many events cost one registry write a second, not one per batch.
#[tokio::test]
async fn the_registry_follows_the_high_water_mark_within_a_second() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    stream.store(1, vec![event("R", 1, 1, b"")]).await;
    assert_eq!(
        support::hget(&mut redis, "cwp:device:R", "last_event_id")
            .await
            .as_deref(),
        Some("1")
    );
    stream.store(2, vec![event("R", 2, 1, b"")]).await;
    assert_eq!(support::hget(&mut redis, "cwp:hwm", "R").await.as_deref(), Some("2"));

    // The device goes on sending, one batch as soon as the last is stored,
    // until a batch is written through to the registry: that happens once
    // its second has passed (5 s leaves room for a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut next = 3;
    loop {
        stream.store(next, vec![event("R", next, 1, b"")]).await;
        let registry = support::hget(&mut redis, "cwp:device:R", "last_event_id").await;
        if registry.as_deref() == Some(next.to_string().as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the registry never caught up: {registry:?}"
        );
        next += 1;
    }
}
