//! Durable commands (issue 21, README "Durable commands"): commands queued
//! in a device's ledger with `drover send --queue`, exactly as an operator
//! or the main application queues them, reach the device when it connects,
//! again with the same id after a session that ended before the result, and
//! leave the ledger when the result is stored.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use controller_sim::client::Connection;
use cwp::{CommandId, ServerFrame};
use drover_testkit::cluster_fleet::ClusterFleet;
use drover_testkit::device::{connect, ok_result, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::publish;
use drover_testkit::net::unread_bytes;
use drover_testkit::operator;
use drover_testkit::redis_cluster::RedisCluster;
use drover_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(10);

/// `drover ARGS` against `redis`: (exit code, stdout, stderr).
fn drover(redis: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let run = operator::drover(redis, args);
    (run.code, run.stdout, run.stderr)
}

/// Queues a command; its id.
fn enqueue(redis: &[(&str, &str)], serial: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["send", serial, name, "--queue"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = drover(redis, &args);
    assert_eq!(code, Some(0), "drover send --queue: {stderr}");
    uuid::Uuid::parse_str(&stdout).unwrap().hyphenated().to_string()
}

fn id_of(command: &cwp::Command) -> String {
    uuid::Uuid::from_bytes(command.command_id.0).hyphenated().to_string()
}

async fn recv_command(device: &mut Connection) -> cwp::Command {
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Command(command) => return command,
            ServerFrame::Ack(_) => {}
            other => panic!("expected COMMAND, got {other:?}"),
        }
    }
}

/// Sends the result of `command_id` as event `event_id` and waits for its
/// `ACK` (it is durably stored then), skipping commands that come
/// meanwhile (returned).
async fn answer(device: &mut Connection, event_id: u64, command_id: CommandId) -> Vec<cwp::Command> {
    device.send(&ok_result(event_id, command_id)).await.unwrap();
    let mut commands = Vec::new();
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) if ack.event_id == event_id => return commands,
            ServerFrame::Command(command) => commands.push(command),
            other => panic!("expected ACK, got {other:?}"),
        }
    }
}

/// Every (id, status, attempt) of the outcomes stream `stream`, in order.
async fn outcomes(redis: &mut impl redis::aio::ConnectionLike, stream: &str) -> Vec<(String, String, u64)> {
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .unwrap();
    entries
        .ids
        .iter()
        .map(|entry| {
            let notice: String = entry.get("notice").unwrap();
            let notice: serde_json::Value = serde_json::from_str(&notice).unwrap();
            (
                entry.get::<String>("id").unwrap(),
                entry.get::<String>("status").unwrap(),
                notice["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn exists(redis: &mut impl redis::aio::ConnectionLike, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(redis).await.unwrap() == 1
}

#[test]
fn an_offline_device_gets_its_queued_commands_in_order_and_the_ledger_empties() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let mut redis = fleet.redis().await;
        // The control: PUBLISH reaches no one while the device is offline.
        assert_eq!(publish(&mut redis, "cwp:cmd:LEDGER-1", r#"{"name":"lost"}"#).await, 0);
        let queued: Vec<String> = ["first", "second", "third"]
            .iter()
            .map(|name| enqueue(&env, "LEDGER-1", name, &[]))
            .collect();
        let (code, listing, _) = drover(&env, &["queue", "LEDGER-1", "--json"]);
        assert_eq!(code, Some(0));
        let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
        let listed: Vec<&str> = listing
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, queued, "drover queue lists them in order");

        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-1")).await;
        let mut received = Vec::new();
        for _ in 0..3 {
            received.push(recv_command(&mut device).await);
        }
        let names: Vec<&str> = received.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["first", "second", "third"]);
        let ids: Vec<String> = received.iter().map(id_of).collect();
        assert_eq!(ids, queued, "each with the id it was queued with");
        for (event_id, command) in (1..).zip(&received) {
            assert!(answer(&mut device, event_id, command.command_id).await.is_empty());
        }
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-1").await
        })
        .await;

        // Online: a queued command is delivered at once (the wake-up on
        // the command channel; no polling).
        let online = enqueue(&env, "LEDGER-1", "fourth", &[]);
        let fourth = recv_command(&mut device).await;
        assert_eq!(id_of(&fourth), online);
        assert!(answer(&mut device, 4, fourth.command_id).await.is_empty());
        eventually("the fourth leaves the ledger", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-1").await
        })
        .await;

        let seen = outcomes(&mut redis, "cwp:cmd-outcomes").await;
        for id in queued.iter().chain([&online]) {
            let of_it: Vec<(&str, u64)> = seen
                .iter()
                .filter(|(i, _, _)| i == id)
                .map(|(_, s, a)| (s.as_str(), *a))
                .collect();
            assert_eq!(of_it, [("QUEUED", 0), ("SENT", 1), ("OK", 0)], "each outcome once");
        }
    });
}

#[test]
fn a_session_that_ends_before_the_result_brings_the_same_command_on_another_driver() {
    let fleet = TestFleet::start(2, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let id = enqueue(&env, "LEDGER-2", "reboot", &[]);
        let (mut device, _) = connect(fleet.drivers[0].addr(), &serial("LEDGER-2")).await;
        let first = recv_command(&mut device).await;
        assert_eq!(id_of(&first), id);
        drop(device);

        let (mut device, _) = connect(fleet.drivers[1].addr(), &serial("LEDGER-2")).await;
        let again = recv_command(&mut device).await;
        assert_eq!(id_of(&again), id, "redelivered with the same id");
        assert!(answer(&mut device, 1, again.command_id).await.is_empty());
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-2").await
        })
        .await;
        let seen = outcomes(&mut fleet.redis().await, "cwp:cmd-outcomes").await;
        let statuses: Vec<(&str, u64)> = seen.iter().map(|(_, s, a)| (s.as_str(), *a)).collect();
        assert_eq!(
            statuses,
            [("QUEUED", 0), ("SENT", 1), ("SENT", 2), ("OK", 0)],
            "one redelivery, explained by the session that ended; one result"
        );
    });
}

#[test]
fn a_command_that_expires_while_the_device_is_offline_is_never_sent() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let short = enqueue(&env, "LEDGER-3", "stale", &["--ttl", "200ms"]);
        let kept = enqueue(&env, "LEDGER-3", "fresh", &["--ttl", "1h"]);
        // Past the short ttl (a wait for a deadline, not a timing assertion).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-3")).await;
        let command = recv_command(&mut device).await;
        assert_eq!(id_of(&command), kept, "the control, with a long ttl, is sent");
        assert!(answer(&mut device, 1, command.command_id).await.is_empty());
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-3").await
        })
        .await;
        let seen = outcomes(&mut fleet.redis().await, "cwp:cmd-outcomes").await;
        let of_short: Vec<&str> = seen
            .iter()
            .filter(|(i, _, _)| *i == short)
            .map(|(_, s, _)| s.as_str())
            .collect();
        assert_eq!(of_short, ["QUEUED", "EXPIRED"], "never SENT");
    });
}

#[test]
fn a_full_ledger_refuses_and_cancel_takes_back_what_was_not_sent() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str()), ("CMD_MAX_QUEUED", "2")];
    runtime().block_on(async {
        let first = enqueue(&env, "LEDGER-4", "one", &[]);
        let _second = enqueue(&env, "LEDGER-4", "two", &[]);
        let (code, _, stderr) = drover(&env, &["send", "LEDGER-4", "three", "--queue"]);
        assert_eq!(code, Some(8), "refused: {stderr}");
        assert!(stderr.contains("CMD_MAX_QUEUED"), "{stderr}");
        // The same id again is the same command: nothing changes.
        let (code, _, stderr) = drover(&env, &["send", "LEDGER-4", "one", "--queue", "--id", &first]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("already"), "{stderr}");

        let (code, _, stderr) = drover(&env, &["cancel", "LEDGER-4", &first]);
        assert_eq!(code, Some(0), "{stderr}");
        let (code, _, _) = drover(&env, &["cancel", "LEDGER-4", &first]);
        assert_eq!(code, Some(7), "cancelled already: not pending");
        let third = enqueue(&env, "LEDGER-4", "three", &[]);

        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-4")).await;
        let a = recv_command(&mut device).await;
        let b = recv_command(&mut device).await;
        assert_eq!([a.name.as_str(), b.name.as_str()], ["two", "three"]);
        let (code, _, stderr) = drover(&env, &["cancel", "LEDGER-4", &third]);
        assert_eq!(code, Some(8), "sent already: {stderr}");
        let statuses: Vec<String> = outcomes(&mut fleet.redis().await, "cwp:cmd-outcomes")
            .await
            .into_iter()
            .filter(|(i, _, _)| *i == first)
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(statuses, ["QUEUED", "CANCELLED"]);
    });
}

#[test]
fn a_result_for_a_command_never_sent_is_ignored_and_counted() {
    let fleet = TestFleet::start(1, &[("CMD_MAX_IN_FLIGHT", "1")]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let unmatched = || {
        let (_, text) = drover_testkit::http::get(fleet.bridge.metrics_addr(), "/metrics").unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("drover_bridge_command_results_unmatched_total "))
            .map(|value| value.trim().parse::<f64>().unwrap())
            .unwrap()
    };
    runtime().block_on(async {
        let a = enqueue(&env, "LEDGER-5", "a", &[]);
        let b = enqueue(&env, "LEDGER-5", "b", &[]);
        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-5")).await;
        let first = recv_command(&mut device).await;
        assert_eq!(id_of(&first), a, "one in flight at a time");
        assert_eq!(unmatched(), 0.0);
        // B was never sent: its result is stored as an event, ignored by
        // the ledger, counted.
        let b_id = CommandId(*uuid::Uuid::parse_str(&b).unwrap().as_bytes());
        assert!(answer(&mut device, 1, b_id).await.is_empty());
        assert_eq!(unmatched(), 1.0);
        // A's result settles A and brings B.
        let mut next = answer(&mut device, 2, first.command_id).await;
        if next.is_empty() {
            next.push(recv_command(&mut device).await);
        }
        assert_eq!(id_of(&next[0]), b, "B is still pending and comes now");
        assert!(answer(&mut device, 3, next[0].command_id).await.is_empty());
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-5").await
        })
        .await;
        let seen = outcomes(&mut fleet.redis().await, "cwp:cmd-outcomes").await;
        let oks = seen.iter().filter(|(_, s, _)| s == "OK").count();
        assert_eq!(oks, 2, "one OK each, the ignored result none");
    });
}

#[test]
fn durable_commands_reach_a_device_on_a_cluster() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    let seeds = fleet.cluster.seeds();
    let env = [("REDIS_CLUSTER_NODES", seeds.as_str())];
    runtime().block_on(async {
        // The bridge has recorded the layout (three partitions) by now:
        // a device's session proves it.
        drop(connect(fleet.addr(), &serial("WARMUP")).await);
        let queued: Vec<String> = ["x", "y"]
            .iter()
            .map(|name| enqueue(&env, "LEDGER-C", name, &[]))
            .collect();
        let layout = drover_schema::Layout::partitioned(3).unwrap();
        let key = layout.ledger(&serial("LEDGER-C"));
        let mut redis = fleet.redis();
        assert!(exists(&mut redis, &key).await);
        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-C")).await;
        let first = recv_command(&mut device).await;
        let second = recv_command(&mut device).await;
        assert_eq!([id_of(&first), id_of(&second)], [queued[0].clone(), queued[1].clone()]);
        assert!(answer(&mut device, 1, first.command_id).await.is_empty());
        assert!(answer(&mut device, 2, second.command_id).await.is_empty());
        // Online: SPUBLISH wakes the driver on the channel's shard.
        let online = enqueue(&env, "LEDGER-C", "z", &[]);
        let third = recv_command(&mut device).await;
        assert_eq!(id_of(&third), online);
        assert!(answer(&mut device, 3, third.command_id).await.is_empty());
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis(), &key).await
        })
        .await;
        let stream = layout.command_outcomes(layout.partition_of(&serial("LEDGER-C")));
        let oks = outcomes(&mut redis, &stream)
            .await
            .into_iter()
            .filter(|(_, s, _)| s == "OK")
            .count();
        assert_eq!(oks, 3);
    });
}

/// `TakeCommands` calls the bridge has served (its metrics).
fn take_commands_calls(fleet: &TestFleet) -> f64 {
    let (_, text) = drover_testkit::http::get(fleet.bridge.metrics_addr(), "/metrics").unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("drover_bridge_take_commands_calls_total "))
        .map(|value| value.trim().parse::<f64>().unwrap())
        .unwrap()
}

#[test]
fn a_session_of_a_device_with_an_empty_ledger_makes_no_take_commands_call() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let (mut empty, _) = connect(fleet.addr(), &serial("LEDGER-EMPTY")).await;
        // An event stored and acknowledged: the session is well past the
        // point where it would have fetched.
        empty.send(&drover_testkit::device::event(1)).await.unwrap();
        match empty.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) => assert_eq!(ack.event_id, 1),
            other => panic!("expected ACK, got {other:?}"),
        }
        assert_eq!(
            take_commands_calls(&fleet),
            0.0,
            "an empty ledger costs no TakeCommands"
        );

        // The control: a device with a pending command fetches it.
        let id = enqueue(&env, "LEDGER-FULL", "reboot", &[]);
        let (mut full, _) = connect(fleet.addr(), &serial("LEDGER-FULL")).await;
        assert_eq!(id_of(&recv_command(&mut full).await), id);
        assert_eq!(take_commands_calls(&fleet), 1.0, "a pending command costs one");

        // The empty device still hears of a command queued now (the
        // wake-up), which costs one more.
        let online = enqueue(&env, "LEDGER-EMPTY", "reboot", &[]);
        assert_eq!(id_of(&recv_command(&mut empty).await), online);
        assert_eq!(take_commands_calls(&fleet), 2.0);
    });
}

#[test]
fn a_command_queued_just_after_the_bridge_read_the_ledger_arrives_at_once() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let bridge = Pid::from_raw(fleet.bridge.process().pid() as i32);
    let driver = Pid::from_raw(fleet.drivers[0].process().pid() as i32);
    let addr = fleet.addr();
    runtime().block_on(async {
        // The bridge frozen: the handshake stops at OpenSession, after the
        // driver subscribed the device's command channel.
        kill(bridge, Signal::SIGSTOP).unwrap();
        let bridge_port = fleet.bridge.port();
        let unread_before = unread_bytes(bridge_port).unwrap();
        let handshake = tokio::spawn(async move { connect(addr, &serial("LEDGER-RACE")).await });
        eventually("the driver subscribes before OpenSession", WAIT, || async {
            let numsub: (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("cwp:cmd:LEDGER-RACE")
                .query_async(&mut fleet.redis().await)
                .await
                .unwrap();
            numsub.1 == 1
        })
        .await;
        // The request (batched, so sent a moment after the subscription)
        // must be in the bridge's socket before the driver is frozen. An
        // HTTP/2 keep-alive PING is 17 bytes; OpenSessions is well above.
        eventually("OpenSessions waits in the frozen bridge's socket", WAIT, || async {
            unread_bytes(bridge_port).unwrap() >= unread_before + 64
        })
        .await;
        // The driver frozen, the bridge let go: it reads the (empty) ledger
        // and installs the session; its answer waits for the driver.
        kill(driver, Signal::SIGSTOP).unwrap();
        kill(bridge, Signal::SIGCONT).unwrap();
        eventually("the bridge installs the session", WAIT, || async {
            let online: Option<String> = redis::cmd("HGET")
                .arg("cwp:device:LEDGER-RACE")
                .arg("online")
                .query_async(&mut fleet.redis().await)
                .await
                .unwrap();
            online.as_deref() == Some("1")
        })
        .await;
        // Queued now: the bridge said the ledger was empty, and only the
        // wake-up (waiting in the frozen driver's socket) tells of it.
        let id = enqueue(&env, "LEDGER-RACE", "reboot", &[]);
        kill(driver, Signal::SIGCONT).unwrap();
        let (mut device, _) = handshake.await.unwrap();
        assert_eq!(id_of(&recv_command(&mut device).await), id, "delivered at once");
        assert!(
            answer(
                &mut device,
                1,
                CommandId(*uuid::Uuid::parse_str(&id).unwrap().as_bytes())
            )
            .await
            .is_empty()
        );
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-RACE").await
        })
        .await;
    });
}

/// Every (status, attempt) the outcomes stream holds for `id`, in order.
async fn outcomes_of(redis: &mut impl redis::aio::ConnectionLike, id: &str) -> Vec<(String, u64)> {
    outcomes(redis, "cwp:cmd-outcomes")
        .await
        .into_iter()
        .filter(|(i, _, _)| i == id)
        .map(|(_, status, attempt)| (status, attempt))
        .collect()
}

fn owned(outcomes: &[(&str, u64)]) -> Vec<(String, u64)> {
    outcomes.iter().map(|(s, a)| ((*s).to_owned(), *a)).collect()
}

#[test]
fn a_command_sent_to_a_session_superseded_before_its_result_comes_again_with_the_same_id() {
    let fleet = TestFleet::start(2, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let id = enqueue(&env, "LEDGER-SUP", "reboot", &[]);
        let (mut first, _) = connect(fleet.drivers[0].addr(), &serial("LEDGER-SUP")).await;
        assert_eq!(id_of(&recv_command(&mut first).await), id);
        // Unanswered, the device comes again through the other driver: its
        // first session is superseded.
        let (mut second, _) = connect(fleet.drivers[1].addr(), &serial("LEDGER-SUP")).await;
        let again = recv_command(&mut second).await;
        assert_eq!(id_of(&again), id, "redelivered with the same id");
        loop {
            match first.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Bye(bye) => {
                    assert_eq!(bye.reason, cwp::ByeReason::SUPERSEDED);
                    break;
                }
                ServerFrame::Ack(_) => {}
                other => panic!("the superseded session got {other:?}"),
            }
        }
        assert!(answer(&mut second, 1, again.command_id).await.is_empty());
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-SUP").await
        })
        .await;
        assert_eq!(
            outcomes_of(&mut fleet.redis().await, &id).await,
            owned(&[("QUEUED", 0), ("SENT", 1), ("SENT", 2), ("OK", 0)]),
            "one redelivery, explained by the superseded session; one result"
        );
    });
}

#[test]
fn commands_pending_while_the_bridge_is_down_are_neither_lost_nor_sent_twice() {
    let mut fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let (mut device, [a, b], second) = two_sent_the_first_answered(&fleet, &env, "LEDGER-OUT").await;

        // The bridge killed: B's result waits in the driver, and C, queued
        // meanwhile, waits in the ledger (the wake-up finds the driver, its
        // TakeCommands fails and is retried).
        let port = fleet.bridge.port();
        fleet.bridge.process().kill();
        device.send(&ok_result(2, second.command_id)).await.unwrap();
        let c = enqueue(&env, "LEDGER-OUT", "c", &[]);
        fleet.bridge = drover_testkit::components::BridgeProcess::start_on(
            port,
            &fleet.redis.url(),
            &drover_testkit::fleet::logs(),
            &[],
        )
        .unwrap();

        // B's result is stored once the bridge is back; C arrives, once.
        let mut acked = false;
        let mut third = None;
        while !(acked && third.is_some()) {
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) if ack.event_id == 2 => acked = true,
                ServerFrame::Ack(_) => {}
                ServerFrame::Command(command) => {
                    assert!(third.is_none(), "one more command only, got {command:?}");
                    third = Some(command);
                }
                other => panic!("expected ACK or COMMAND, got {other:?}"),
            }
        }
        let third = third.unwrap();
        assert_eq!(id_of(&third), c);
        assert!(
            answer(&mut device, 3, third.command_id).await.is_empty(),
            "nothing sent twice"
        );
        each_sent_once_and_answered(&fleet, "LEDGER-OUT", [&a, &b, &c]).await;
    });
}

#[test]
fn a_command_expires_with_its_outcome_while_its_device_stays_offline() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let short = enqueue(&env, "LEDGER-AWAY", "stale", &["--ttl", "300ms"]);
        let kept = enqueue(&env, "LEDGER-AWAY", "fresh", &["--ttl", "1h"]);
        let alone = enqueue(&env, "LEDGER-GONE", "stale", &["--ttl", "300ms"]);
        // Neither device ever connects, and nobody reads the ledgers: the
        // bridge's sweep expires them.
        for id in [&short, &alone] {
            eventually("the sweep expires the command", WAIT, || async {
                outcomes_of(&mut fleet.redis().await, id).await == owned(&[("QUEUED", 0), ("EXPIRED", 0)])
            })
            .await;
        }
        let mut redis = fleet.redis().await;
        // The control: the command whose ttl has not passed is untouched,
        // and still indexed for its own expiry.
        assert_eq!(outcomes_of(&mut redis, &kept).await, owned(&[("QUEUED", 0)]));
        let (code, listing, _) = drover(&env, &["queue", "LEDGER-AWAY", "--json"]);
        assert_eq!(code, Some(0));
        assert!(listing.contains(&kept) && !listing.contains(&short), "{listing}");
        let next: Option<f64> = redis::cmd("ZSCORE")
            .arg("cwp:ledger-due")
            .arg("LEDGER-AWAY")
            .query_async(&mut redis)
            .await
            .unwrap();
        let expires_ms = drover_service::clock::unix_ms() as f64 + 3_000_000.0;
        assert!(next.is_some_and(|score| score > expires_ms), "next expiry: {next:?}");
        // A ledger whose last command expired leaves Redis, and the index.
        eventually("the emptied ledger leaves Redis", WAIT, || async {
            let mut redis = fleet.redis().await;
            let indexed: Option<f64> = redis::cmd("ZSCORE")
                .arg("cwp:ledger-due")
                .arg("LEDGER-GONE")
                .query_async(&mut redis)
                .await
                .unwrap();
            !exists(&mut redis, "cwp:ledger:LEDGER-GONE").await && indexed.is_none()
        })
        .await;
    });
}

#[test]
fn a_device_working_through_its_queue_is_refilled_at_half_of_the_in_flight_limit() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let queued: Vec<String> = (0..10)
            .map(|n| enqueue(&env, "LEDGER-BUSY", &format!("step-{n}"), &[]))
            .collect();
        let (mut device, _) = connect(fleet.addr(), &serial("LEDGER-BUSY")).await;
        // The device answers each command as it comes; at most
        // CMD_MAX_IN_FLIGHT (4) are unanswered at once.
        let mut received = Vec::new();
        let mut unanswered = 0usize;
        let mut event_id = 0;
        while received.len() < queued.len() {
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Command(command) => {
                    unanswered += 1;
                    assert!(unanswered <= 4, "more than CMD_MAX_IN_FLIGHT unanswered");
                    received.push(id_of(&command));
                    event_id += 1;
                    device.send(&ok_result(event_id, command.command_id)).await.unwrap();
                }
                ServerFrame::Ack(ack) => {
                    // Cumulative: every result up to it is stored.
                    unanswered = (event_id - ack.event_id) as usize;
                }
                other => panic!("expected COMMAND or ACK, got {other:?}"),
            }
        }
        assert_eq!(received, queued, "in the ledger's order, each once");
        eventually("the ledger empties", WAIT, || async {
            !exists(&mut fleet.redis().await, "cwp:ledger:LEDGER-BUSY").await
        })
        .await;
        // One TakeCommands at the session's start, then one each time the
        // device's stored answers bring it down to 2 (half of 4): three or
        // four calls, depending on how many answers one stored batch
        // carried. One per command, as before, would be ten.
        let calls = take_commands_calls(&fleet);
        assert!(
            (3.0..=4.0).contains(&calls),
            "{calls} TakeCommands calls for 10 commands"
        );
        for id in &queued {
            assert_eq!(
                outcomes_of(&mut fleet.redis().await, id).await,
                owned(&[("QUEUED", 0), ("SENT", 1), ("OK", 0)]),
                "{id}"
            );
        }
    });
}

#[test]
fn commands_pending_while_redis_restarts_are_neither_lost_nor_sent_twice() {
    let mut fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    runtime().block_on(async {
        let (mut device, [a, b], second) = two_sent_the_first_answered(&fleet, &env, "LEDGER-RR").await;

        // Redis killed and started again on its data (appendfsync always):
        // A's settlement and B's SENT survive; B's result, sent while Redis
        // is away, waits in the driver until it can be stored.
        fleet.redis.restart().unwrap();
        device.send(&ok_result(2, second.command_id)).await.unwrap();
        loop {
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) if ack.event_id == 2 => break,
                ServerFrame::Ack(_) => {}
                other => panic!("expected ACK, got {other:?}"),
            }
        }
        // A command queued after the restart reaches the same session, once.
        let c = eventually_enqueued(&env, "LEDGER-RR", "c").await;
        let third = recv_command(&mut device).await;
        assert_eq!(id_of(&third), c);
        assert!(
            answer(&mut device, 3, third.command_id).await.is_empty(),
            "nothing sent twice"
        );
        each_sent_once_and_answered(&fleet, "LEDGER-RR", [&a, &b, &c]).await;
    });
}

/// Queues a command once the driver has its subscription back (after a
/// Redis restart): the enqueue's wake-up must find it.
async fn eventually_enqueued(env: &[(&str, &str)], serial: &str, name: &str) -> String {
    let url = env.iter().find(|(k, _)| *k == "REDIS_URL").unwrap().1.to_owned();
    eventually("the driver to subscribe again after the restart", WAIT, || {
        let url = url.clone();
        async move {
            let client = redis::Client::open(url).unwrap();
            let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("cwp:cmd:{serial}"))
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            subscribers.first().is_some_and(|(_, n)| *n == 1)
        }
    })
    .await;
    enqueue(env, serial, name, &[])
}

/// Queues commands A and B for `serial`, connects it, receives both and
/// answers A: the device, the two ids, and B (sent, not answered).
async fn two_sent_the_first_answered(
    fleet: &TestFleet,
    env: &[(&str, &str)],
    serial_text: &str,
) -> (Connection, [String; 2], cwp::Command) {
    let a = enqueue(env, serial_text, "a", &[]);
    let b = enqueue(env, serial_text, "b", &[]);
    let (mut device, _) = connect(fleet.addr(), &serial(serial_text)).await;
    let first = recv_command(&mut device).await;
    let second = recv_command(&mut device).await;
    assert_eq!([id_of(&first), id_of(&second)], [a.clone(), b.clone()]);
    assert!(answer(&mut device, 1, first.command_id).await.is_empty());
    (device, [a, b], second)
}

/// `serial`'s ledger empties, and each of `ids` was sent once (its session
/// never ended) and answered once.
async fn each_sent_once_and_answered(fleet: &TestFleet, serial: &str, ids: [&String; 3]) {
    let ledger = format!("cwp:ledger:{serial}");
    eventually("the ledger empties", WAIT, || async {
        !exists(&mut fleet.redis().await, &ledger).await
    })
    .await;
    for id in ids {
        assert_eq!(
            outcomes_of(&mut fleet.redis().await, id).await,
            owned(&[("QUEUED", 0), ("SENT", 1), ("OK", 0)]),
            "{id}: sent once (its session never ended), one result"
        );
    }
}
