//! Faults between devices and their stored data (issue 8), against real
//! processes: a network that accepts bytes and never delivers them, a
//! driver killed under load and mid-upload, the vendor-bridge killed and
//! frozen, Redis killed. Every test ends with the same check: all of
//! `cwp:events` (and `cwp:uploads`) read back and compared with what the
//! devices themselves saw acknowledged; lost, duplicated and unexpected
//! entries must all be zero. One test runs a deliberately wrong device
//! (it forgets events once its socket took them) through the lying network
//! to prove that the check fails when data is lost.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use controller_sim::device::{Backoff, Behaviour, Control, Device, Endpoint, EventLoad, Pacing, Stats, UploadJob};
use controller_sim::verify::Verdict;
use cwp::ErrorCode;
use drover_testkit::components::BridgeProcess;
use drover_testkit::device::{device_key, serial};
use drover_testkit::fault_proxy::{Fault, FaultProxy, ProxyStats};
use drover_testkit::fleet::{TestFleet, logs, runtime};
use drover_testkit::haproxy_fleet::{env, fleet_spec};
use drover_testkit::inspect::{
    assert_nothing_lost_or_duplicated, assert_uploads_recorded_exactly_once, exactly_once_verdict,
};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::process::rss_kib;
use drover_testkit::wait::{eventually, wait_until};
use nix::sys::signal::Signal;
use tokio::runtime::Runtime;

/// Bounds every wait, so that a broken fleet fails the test instead of
/// hanging it.
const WAIT: Duration = Duration::from_secs(60);
/// Firmware's block: a `BLOCK` frame of exactly 1 KiB.
const BLOCK: usize = 1004;
/// Device→server bytes the lying network delivers per connection: the
/// handshake and a few events; it swallows the rest.
const LIE_AFTER: u64 = 400;
/// Rounds of connect, send, cut through the lying network.
const LIE_ROUNDS: usize = 6;
/// Device→server bytes the lying network swallows in each round, from its
/// 20 devices together.
const SWALLOWED_PER_ROUND: u64 = 20 * 1024;
/// Events held by a driver awaiting storage before devices get `BUSY`.
const MAX_PENDING_EVENTS: &str = "500";

/// Devices running in tasks, and what they share.
struct Running {
    tasks: Vec<tokio::task::JoinHandle<Device>>,
    stats: Arc<Stats>,
    control: Control,
}

impl Running {
    /// Stops making events, delivers what the devices hold, says `BYE`.
    fn finish(self, rt: &Runtime) -> Vec<Device> {
        self.control.finish();
        self.collect(rt, "the devices to deliver everything and finish")
    }

    /// Stops at once; the devices keep what is unacknowledged.
    fn abort(self, rt: &Runtime) -> Vec<Device> {
        self.control.abort();
        self.collect(rt, "the devices to stop")
    }

    fn collect(self, rt: &Runtime, what: &str) -> Vec<Device> {
        rt.block_on(async { tokio::time::timeout(WAIT, futures::future::join_all(self.tasks)).await })
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
            .into_iter()
            .map(|device| device.expect("a device task panicked"))
            .collect()
    }

    /// Waits until the devices have seen `more` acks beyond those seen so
    /// far: events are flowing (again).
    fn wait_for_acks(&self, rt: &Runtime, more: u64) {
        let target = self.stats.acked() + more;
        rt.block_on(eventually(&format!("{target} events acknowledged"), WAIT, || async {
            self.stats.acked() >= target
        }));
    }

    /// Waits until the devices have sent `more` new events beyond those
    /// sent so far (whether or not anything acknowledges them).
    fn wait_for_sent(&self, rt: &Runtime, more: u64) {
        let target = self.stats.sent() + more;
        rt.block_on(eventually(&format!("{target} events sent"), WAIT, || async {
            self.stats.sent() >= target
        }));
    }

    /// `ERROR BUSY`s the devices received.
    fn busy(&self) -> u64 {
        errors(&self.stats, ErrorCode::BUSY)
    }
}

/// The driver's highest RSS, sampled once a second for `period`: the
/// length of an outage, during which memory must *not* grow, so there is
/// no event to wait for; each caller says why its period suffices.
fn peak_rss_kib(pid: u32, period: Duration) -> u64 {
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < period {
        peak = peak.max(rss_kib(pid).unwrap());
        std::thread::sleep(Duration::from_secs(1));
    }
    peak
}

/// What a vendor-bridge outage left behind, once the bridge is back.
struct AfterOutage {
    rss_after_kib: u64,
    busy_in_all: u64,
    verdict: Verdict,
}

/// Waits until devices are acknowledged again, stops them, and checks
/// that every event they were told is stored is stored exactly once.
fn recover_from_outage(rt: &Runtime, fleet: &TestFleet, running: Running, driver_pid: u32) -> AfterOutage {
    running.wait_for_acks(rt, 2000);
    let rss_after_kib = rss_kib(driver_pid).unwrap();
    let busy_in_all = running.busy();
    let devices = running.finish(rt);
    let verdict = rt.block_on(assert_nothing_lost_or_duplicated(&fleet.redis.url(), &devices));
    AfterOutage {
        rss_after_kib,
        busy_in_all,
        verdict,
    }
}

fn errors(stats: &Stats, code: ErrorCode) -> u64 {
    stats
        .snapshot()
        .errors
        .iter()
        .filter(|(c, _)| *c == code)
        .map(|(_, n)| n)
        .sum()
}

/// Devices that make `rate` events/s each and keep trying hard.
fn events(rate: f64) -> Behaviour {
    Behaviour {
        events: Some(EventLoad {
            pacing: Pacing {
                rate,
                interval: Duration::from_millis(50),
            },
            kind: 1,
            body: Bytes::from_static(b"temperature=21.5"),
            backlog: 100_000,
        }),
        reconnect: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
        busy: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        ..Behaviour::default()
    }
}

/// `count` new devices named `{prefix}-000`…, keeping ack logs.
fn devices(prefix: &str, count: usize) -> Vec<Device> {
    (0..count)
        .map(|i| {
            let serial = serial(&format!("{prefix}-{i:03}"));
            Device::new(serial, device_key(&serial)).with_ack_log()
        })
        .collect()
}

/// Runs `devices` against `target` until finished or aborted.
fn run(rt: &Runtime, devices: Vec<Device>, target: SocketAddr, behaviour: Behaviour) -> Running {
    let stats = Arc::new(Stats::new());
    let control = Control::new();
    let behaviour = Arc::new(behaviour);
    let tasks = devices
        .into_iter()
        .map(|mut device| {
            let (stats, control, behaviour) = (Arc::clone(&stats), control.clone(), Arc::clone(&behaviour));
            rt.spawn(async move {
                let endpoint = Endpoint { target, source: None };
                device.run(endpoint, Duration::ZERO, &behaviour, &stats, &control).await;
                device
            })
        })
        .collect();
    Running { tasks, stats, control }
}

/// `drivers` drivers behind one HAProxy.
fn behind_haproxy(drivers: usize, state_dir: &std::path::Path, driver_env: &[(&str, &str)]) -> LocalFleet {
    LocalFleet::start(FleetSpec {
        driver_env: env(driver_env),
        haproxy_open_files: 1000,
        ..fleet_spec(drivers, state_dir)
    })
    .unwrap()
}

/// Devices → a lying store-and-forward network → HAProxy → 2 drivers:
/// rounds of connect, send, cut, every connection delivering only its
/// first [`LIE_AFTER`] bytes. Then the lying network goes away and the
/// devices reconnect directly to HAProxy and deliver what they hold.
/// Returns the exactly-once verdict and what the network did.
fn through_a_lying_network(prefix: &str, forget_on_write: bool) -> (Verdict, ProxyStats) {
    let state = tempfile::tempdir().unwrap();
    let fleet = behind_haproxy(2, state.path(), &[]);
    let rt = runtime();
    let proxy = rt.block_on(FaultProxy::start(fleet.haproxy.addr())).unwrap();
    proxy.set_fault(Fault::Lie { after: LIE_AFTER });
    let behaviour = Behaviour {
        forget_on_write,
        ..events(50.0)
    };
    // Counted before the devices start and again just before each cut, so
    // that connections made before the count is read are never missed.
    let mut before = proxy.stats();
    let running = run(&rt, devices(prefix, 20), proxy.addr(), behaviour.clone());
    for round in 1..=LIE_ROUNDS {
        // The devices (re)connect through the network, which then swallows
        // what they send beyond its first bytes, a kilobyte a device (about
        // 15 events each) before the links go away.
        rt.block_on(eventually(
            &format!("round {round}: 20 new connections"),
            WAIT,
            || async { proxy.stats().connections >= before.connections + 20 },
        ));
        let connected = proxy.stats();
        rt.block_on(eventually(
            &format!("round {round}: 20 KiB swallowed"),
            WAIT,
            || async { proxy.stats().upstream_discarded >= connected.upstream_discarded + SWALLOWED_PER_ROUND },
        ));
        before = proxy.stats();
        proxy.cut_all();
    }
    let devices = running.abort(&rt);
    let network = proxy.stats();
    assert!(
        network.upstream_delivered > 0 && network.upstream_discarded > 0,
        "the network delivered some bytes and swallowed others: {network:?}"
    );

    let direct = Behaviour {
        events: None,
        ..behaviour
    };
    let devices = run(&rt, devices, fleet.haproxy.addr(), direct).finish(&rt);
    let verdict = rt.block_on(exactly_once_verdict(&fleet.redis_url, &devices));
    eprintln!("{verdict}\n{network:?}");
    (verdict, network)
}

#[test]
fn a_lying_store_and_forward_network_loses_nothing_once_devices_reconnect_directly() {
    let (verdict, network) = through_a_lying_network("LIE-OK", false);
    assert!(verdict.passed(), "{verdict}");
    assert_eq!((verdict.missing, verdict.duplicated, verdict.unexpected), (0, 0, 0));
    assert!(verdict.acked > 0, "{verdict}");
    assert!(network.cuts >= 1, "{network:?}");
}

#[test]
fn a_device_that_forgets_events_once_written_instead_of_acked_fails_the_same_check() {
    let (verdict, _) = through_a_lying_network("LIE-BAD", true);
    assert!(!verdict.passed(), "the check must catch the lost events: {verdict}");
    assert!(verdict.missing > 0, "{verdict}");
}

#[test]
fn connections_cut_at_chosen_bytes_and_a_slow_then_stalled_network_lose_and_duplicate_nothing() {
    let state = tempfile::tempdir().unwrap();
    let fleet = behind_haproxy(2, state.path(), &[]);
    let rt = runtime();
    let proxy = rt.block_on(FaultProxy::start(fleet.haproxy.addr())).unwrap();
    let running = run(&rt, devices("CUT", 20), proxy.addr(), events(50.0));
    // Cut inside the handshake, inside a frame, after a few events, after
    // many: connections die at that byte, again and again, until there
    // have been as many cuts there as devices.
    for at in [40, 150, 333, 1000, 5000] {
        let before = proxy.stats().cuts;
        proxy.set_fault(Fault::Cut { at });
        rt.block_on(eventually(
            &format!("20 connections cut at byte {at}"),
            WAIT,
            || async { proxy.stats().cuts >= before + 20 },
        ));
    }
    let cuts = proxy.stats().cuts;
    // A slow path, carrying a good half second of the devices' events;
    // then a frozen one, holding a second's worth of them (1,000: far
    // shorter than the heartbeat timeout, the sessions survive it); then a
    // healthy one.
    proxy.set_fault(Fault::Latency(Duration::from_millis(30)));
    running.wait_for_acks(&rt, 500);
    proxy.set_fault(Fault::Stall);
    running.wait_for_sent(&rt, 1000);
    proxy.set_fault(Fault::PassThrough);
    running.wait_for_acks(&rt, 1000);
    let devices = running.finish(&rt);
    assert!(cuts >= 20, "connections were cut: {:?}", proxy.stats());
    let verdict = rt.block_on(assert_nothing_lost_or_duplicated(&fleet.redis_url, &devices));
    eprintln!("cuts at chosen bytes, latency, stall: {:?}; {verdict}", proxy.stats());
}

#[test]
fn kill_9_of_a_driver_under_load_and_mid_upload_loses_no_acked_event_or_durable_byte() {
    let state = tempfile::tempdir().unwrap();
    // Small buffers: one fdatasync per 4 KiB makes the uploads last long
    // enough to be killed in the middle.
    let mut fleet = behind_haproxy(2, state.path(), &[("UPLOAD_BUFFER_BYTES", "4096")]);
    let rt = runtime();
    let senders = run(&rt, devices("KILL-EV", 40), fleet.haproxy.addr(), events(25.0));
    senders.wait_for_acks(&rt, 2000);
    let job = UploadJob::new(UploadJob::content(4000 * BLOCK, 8), BLOCK, "flight-recorder.bin");
    let uploaders = run(
        &rt,
        devices("KILL-UP", 4),
        fleet.haproxy.addr(),
        Behaviour {
            upload: Some(job.clone()),
            ..events(5.0)
        },
    );
    rt.block_on(eventually("uploads to be under way", WAIT, || async {
        uploaders.stats.upload_bytes_durable() >= job.size() / 2
    }));

    // kill -9 the driver receiving the most uploads right now.
    let buffers = |fleet: &LocalFleet, i: usize| fleet.drivers[i].metric("drover_driver_upload_buffers").unwrap();
    let victim = if buffers(&fleet, 0) >= buffers(&fleet, 1) { 0 } else { 1 };
    assert!(
        buffers(&fleet, victim) >= 1.0,
        "an upload is open on the driver killed: {} of 4 uploads complete, {} of {} bytes durable; buffers {} and {}",
        uploaders.stats.uploads_completed(),
        uploaders.stats.upload_bytes_durable(),
        4 * job.size(),
        buffers(&fleet, 0),
        buffers(&fleet, 1)
    );
    fleet.drivers[victim].process().kill();

    // Its devices come back through HAProxy on the survivor and go on.
    senders.wait_for_acks(&rt, 2000);
    rt.block_on(async {
        tokio::time::timeout(WAIT, uploaders.stats.uploads_completed_at_least(4))
            .await
            .expect("every upload completes on the surviving driver");
    });
    let upload = uploaders.stats.snapshot().upload;
    let reconnects = senders.stats.snapshot().reconnects;
    let mut devices = senders.finish(&rt);
    let uploading = uploaders.finish(&rt);
    assert_eq!(
        upload.offset_regressions, 0,
        "no durable upload byte was lost: {upload:?}"
    );
    assert!(reconnects >= 1, "devices of the dead driver reconnected");
    assert!(upload.resumes >= 1, "an upload resumed on the survivor: {upload:?}");
    // Resumed, not started again: only what was in flight (unreported)
    // went twice, per resume at most the window (whose last block may start
    // just below its end).
    assert!(
        upload.bytes_resent < upload.resumes * (job.window + BLOCK as u64),
        "{upload:?}"
    );
    eprintln!("uploads: {upload:?}");
    // No durable byte lost: what the survivor completed is, on disk, every
    // byte each device sent, the bytes the killed driver had reported
    // durable included.
    let upload_dir = state.path().join("uploads");
    for device in &uploading {
        assert!(device.upload_done(), "{} completed its upload", device.serial());
        let path = upload_dir
            .join("completed")
            .join(format!("s-{}", device.serial()))
            .join(device.upload_id().unwrap().to_string());
        let on_disk = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(
            on_disk == job.content,
            "{} holds other bytes than were sent",
            path.display()
        );
    }
    rt.block_on(async {
        assert_uploads_recorded_exactly_once(&fleet.redis_url, &uploading, &job).await;
        devices.extend(uploading);
        assert_nothing_lost_or_duplicated(&fleet.redis_url, &devices).await;
    });
}

/// Bodies of the outage tests' events: large, so that memory held per
/// event shows. 20 devices × a window of 256 events × 16 KiB is 80 MiB
/// that a driver holding whatever devices send would grow by.
const OUTAGE_BODY: usize = 16 * 1024;
/// Body bytes the outage tests' drivers may hold awaiting storage.
const OUTAGE_PENDING_BYTES: u64 = 4 << 20;
/// How much a driver's RSS may grow during an outage: the pending bytes,
/// the receive buffers of 20 devices (64 KiB each at most) and the
/// allocator's slack — well under the 80 MiB of an unbounded driver.
const OUTAGE_RSS_GROWTH_KIB: u64 = 32 * 1024;

/// Devices that make `rate` events/s of [`OUTAGE_BODY`] bytes each.
fn large_events(rate: f64) -> Behaviour {
    let mut behaviour = events(rate);
    if let Some(load) = &mut behaviour.events {
        load.body = Bytes::from(vec![b'x'; OUTAGE_BODY]);
    }
    behaviour
}

/// What the driver did while the bridge was away.
struct Outage {
    rss_before_kib: u64,
    rss_during_kib: u64,
    acked_while_down: u64,
    busy_while_down: u64,
    pending_bytes_peak: f64,
}

/// Kills the bridge under load from 20 devices making 50 large events/s
/// each, keeps it down for `down`, restarts it; returns what happened and
/// checks that nothing acknowledged was lost or stored twice.
fn bridge_killed(driver_env: &[(&str, &str)], down: Duration) -> Outage {
    let mut fleet = TestFleet::start(1, driver_env);
    let rt = runtime();
    let running = run(&rt, devices("BRIDGE-KILL", 20), fleet.addr(), large_events(50.0));
    running.wait_for_acks(&rt, 500);
    let driver_pid = fleet.drivers[0].process().pid();
    let rss_before_kib = rss_kib(driver_pid).unwrap();

    let port = fleet.bridge.port();
    fleet.bridge.process().kill();
    // The outage has begun for the driver once it holds 100 events it
    // cannot store (a tenth of a second of load); acks of batches stored
    // before the kill may be on their way until then.
    rt.block_on(eventually(
        "the driver to hold events it cannot store",
        WAIT,
        || async {
            fleet.drivers[0]
                .metric("drover_driver_events_pending")
                .is_ok_and(|pending| pending >= 100.0)
        },
    ));
    let acked_at_busy = running.stats.acked();
    let mut pending_bytes_peak: f64 = 0.0;
    let start = Instant::now();
    let mut rss_during_kib = 0;
    // `down` of outage, memory sampled every 100 ms: the devices keep
    // making 1,000 events/s (16 MB/s) the whole time.
    while start.elapsed() < down {
        rss_during_kib = rss_during_kib.max(rss_kib(driver_pid).unwrap());
        let pending_bytes = fleet.drivers[0].metric("drover_driver_events_pending_bytes");
        pending_bytes_peak = pending_bytes_peak.max(pending_bytes.unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy_while_down = running.busy();
    let acked_while_down = running.stats.acked() - acked_at_busy;
    fleet.bridge = BridgeProcess::start_on(port, &fleet.redis.url(), &logs(), &[]).expect("the bridge restarts");

    let AfterOutage {
        rss_after_kib,
        busy_in_all,
        verdict,
    } = recover_from_outage(&rt, &fleet, running, driver_pid);
    eprintln!(
        "bridge killed {down:?}: driver RSS {rss_before_kib} KiB before, at most {rss_during_kib} KiB during, \
         {rss_after_kib} KiB after; pending bytes at most {pending_bytes_peak}; {busy_while_down} BUSY while down \
         ({busy_in_all} in all); {acked_while_down} acks while down; {verdict}"
    );
    Outage {
        rss_before_kib,
        rss_during_kib,
        acked_while_down,
        busy_while_down,
        pending_bytes_peak,
    }
}

#[test]
fn a_killed_vendor_bridge_acks_nothing_unstored_and_every_event_is_stored_once_after_it_returns() {
    let limit = OUTAGE_PENDING_BYTES.to_string();
    let outage = bridge_killed(
        &[
            ("DRIVER_MAX_PENDING_EVENTS", MAX_PENDING_EVENTS),
            ("DRIVER_MAX_PENDING_BYTES", &limit),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(outage.acked_while_down, 0, "nothing is acknowledged that is not stored");
    assert!(outage.busy_while_down > 0, "devices were told BUSY beyond the limits");
    assert!(
        outage.pending_bytes_peak <= OUTAGE_PENDING_BYTES as f64,
        "the driver held {} bytes of events, its limit is {OUTAGE_PENDING_BYTES}",
        outage.pending_bytes_peak
    );
    assert!(
        outage.rss_during_kib <= outage.rss_before_kib + OUTAGE_RSS_GROWTH_KIB,
        "driver RSS grew from {} KiB to {} KiB while the bridge was down",
        outage.rss_before_kib,
        outage.rss_during_kib
    );
}

/// The control of the test above: with its limits lifted (as if the
/// driver held whatever devices send), the same outage grows the driver
/// past the bound that test asserts. So that test can fail.
#[test]
fn without_its_limits_a_driver_grows_past_the_outage_bound_the_control() {
    let outage = bridge_killed(
        &[
            ("DRIVER_MAX_PENDING_EVENTS", "1000000"),
            ("DRIVER_MAX_PENDING_BYTES", "10000000000"),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(
        outage.acked_while_down, 0,
        "unstored events are never acknowledged, limits or not"
    );
    assert!(
        outage.rss_during_kib > outage.rss_before_kib + OUTAGE_RSS_GROWTH_KIB,
        "without limits the driver should have grown past the bound ({} KiB before, {} KiB during)",
        outage.rss_before_kib,
        outage.rss_during_kib
    );
}

#[test]
fn a_vendor_bridge_frozen_for_60_s_under_load_keeps_driver_memory_bounded_and_loses_nothing() {
    let limit = OUTAGE_PENDING_BYTES.to_string();
    let mut fleet = TestFleet::start(
        1,
        &[
            ("DRIVER_MAX_PENDING_EVENTS", MAX_PENDING_EVENTS),
            ("DRIVER_MAX_PENDING_BYTES", &limit),
        ],
    );
    let rt = runtime();
    let running = run(&rt, devices("BRIDGE-STOP", 20), fleet.addr(), large_events(50.0));
    running.wait_for_acks(&rt, 500);
    let driver_pid = fleet.drivers[0].process().pid();
    let rss_before = rss_kib(driver_pid).unwrap();

    fleet.bridge.process().signal(Signal::SIGSTOP).unwrap();
    rt.block_on(eventually("devices to be told BUSY", WAIT, || async {
        running.busy() > 0
    }));
    let acked_when_refusing = running.stats.acked();
    // The freeze this test is about: a bridge that is still connected but
    // answers nothing for a minute, while the devices make 16 MB/s of
    // events, 240 times the driver's limit of 4 MiB over the minute.
    let rss_during = peak_rss_kib(driver_pid, Duration::from_secs(60));
    let pending_bytes = fleet.drivers[0]
        .metric("drover_driver_events_pending_bytes")
        .unwrap_or(0.0);
    let busy_while_frozen = running.busy();
    let acked_while_frozen = running.stats.acked() - acked_when_refusing;
    fleet.bridge.process().signal(Signal::SIGCONT).unwrap();

    let AfterOutage {
        rss_after_kib,
        busy_in_all,
        verdict,
    } = recover_from_outage(&rt, &fleet, running, driver_pid);
    eprintln!(
        "bridge frozen 60 s: driver RSS {rss_before} KiB before, at most {rss_during} KiB during, {rss_after_kib} KiB after; \
         {pending_bytes} bytes pending at the end; {busy_while_frozen} BUSY while frozen ({busy_in_all} in all); \
         {acked_while_frozen} acks while frozen; {verdict}"
    );
    assert_eq!(acked_while_frozen, 0, "nothing is acknowledged that is not stored");
    assert!(busy_while_frozen > 0, "devices were told BUSY beyond the limit");
    assert!(
        pending_bytes <= OUTAGE_PENDING_BYTES as f64,
        "{pending_bytes} bytes held"
    );
    // The same bound as the killed bridge's, whose control shows a driver
    // without limits exceeds it within seconds.
    assert!(
        rss_during <= rss_before + OUTAGE_RSS_GROWTH_KIB,
        "driver RSS grew from {rss_before} KiB to {rss_during} KiB while the bridge was frozen"
    );
}

#[test]
fn redis_killed_and_restarted_with_aof_appendfsync_always_keeps_every_acked_event_exactly_once() {
    let mut fleet = TestFleet::start(1, &[]);
    let rt = runtime();
    let running = run(&rt, devices("REDIS-KILL", 20), fleet.addr(), events(50.0));
    running.wait_for_acks(&rt, 2000);
    // kill -9, then a supervisor's restart on the same data.
    fleet.redis.restart().expect("redis restarts");
    running.wait_for_acks(&rt, 2000);
    // kill -9, down under load until the driver holds 500 events it could
    // not have stored (nothing is acknowledged while Redis is away), then
    // back.
    fleet.redis.stop();
    wait_until("the driver to hold 500 events awaiting storage", WAIT, || {
        fleet.drivers[0].metric("drover_driver_events_pending").unwrap_or(0.0) >= 500.0
    })
    .unwrap();
    fleet.redis.start_again().expect("redis starts again");
    running.wait_for_acks(&rt, 2000);
    let regressions = running.stats.snapshot().last_event_id_regressions;
    let busy = running.busy();
    let devices = running.finish(&rt);
    assert_eq!(
        regressions, 0,
        "no device was welcomed with less than it saw acknowledged"
    );
    let verdict = rt.block_on(assert_nothing_lost_or_duplicated(&fleet.redis.url(), &devices));
    eprintln!("redis killed twice: {busy} BUSY; {verdict}");
}
