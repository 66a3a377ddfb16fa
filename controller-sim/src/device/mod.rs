//! A simulated controller that behaves as CWP/1 requires of a device, and
//! keeps its state across connections:
//!
//! - events get ids from 1 (or above a given start), strictly increasing;
//!   each is kept until a cumulative `ACK` covers it and resent with the
//!   same id after a reconnect (the `outbox` module); never more than
//!   `WELCOME.event_window` are in flight;
//! - `ERROR BUSY`: the device keeps its events, sends nothing new, backs
//!   off, then resends what the server refused (same ids, same
//!   connection); `ERROR OUT_OF_ORDER` (the server will not take a resend
//!   on this connection): `BYE`, and resend on a new connection;
//! - `COMMAND`s are answered, after a delay, with a result event of kind
//!   `0xFFFF`;
//! - an optional upload (the `upload` module): `UPLOAD_BEGIN`, `BLOCK`s
//!   from the server's durable offset within a window, `UPLOAD_END`,
//!   resumed after reconnects and retried after refusals until
//!   `UPLOAD_DONE OK`;
//! - `PING` when it has sent nothing for `heartbeat_s`, `PONG` to the
//!   server's `PING`s;
//! - server `BYE`: reconnect after `reconnect_after_ms` plus jitter; any
//!   other disconnect: reconnect with jittered exponential backoff;
//! - churn (optional): the device drops its connection after a random
//!   session lifetime (exponentially distributed, so a fleet's drops form
//!   a steady stream) and reconnects at once, as a controller on a flaky
//!   cellular link does.
//!
//! One tokio task runs one [`Device`] ([`Device::run`]); what the devices
//! do is shared in a [`Behaviour`], what they measure in a [`Stats`], and a
//! [`Control`] tells them to finish.
//!
//! Memory per device matters (100,000 of them per machine): an idle
//! connected device holds no receive or send buffer, only its socket, its
//! codec and a few counters.

mod files;
mod outbox;
mod pacing;
mod stats;
mod upload;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cwp::{
    Block, ByeReason, CommandId, CommandResult, CommandStatus, DeviceBye, DeviceFrame, DeviceKey, ErrorCode,
    ErrorFrame, Event, FileAccept, FrameType, Ping, Pong, Serial, ServerBye, ServerFrame, Str8, UploadBegin,
    UploadDone, UploadEnd, UploadId, UploadOutcome, UploadStatus, Welcome,
};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, Connection, READ_CHUNK};

pub use drover_service::backoff::{Backoff, random_up_to as jitter};
pub use files::{FilePolicy, FileStart, FileSummary};
pub use outbox::AckLog;
use outbox::{Outbox, Pending};
pub use pacing::Pacing;
pub use stats::{LatencyHistograms, LatencyReport, LatencySummary, Stats, StatsSnapshot, UploadSummary, histogram};
pub use upload::{DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW, UploadJob};
use upload::{UploadPhase, UploadProgress};

/// A session that lasted this long proves the server healthy: the next
/// reconnect starts again from the shortest backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Bytes of an `EVENT` frame besides its body: header, id, time, kind, tag.
const EVENT_OVERHEAD: usize = cwp::HEADER_LEN + 8 + 8 + 2 + cwp::TAG_LEN;
/// Room for a few control frames (`PING`, `PONG`, `BYE`).
const CONTROL_FRAME_ROOM: usize = 64;
/// Upload `BLOCK`s are encoded until the send buffer holds this much; the
/// rest waits until the socket takes it (the kernel's buffers hold the
/// data in flight, not the device's).
const UPLOAD_TX_HIGH_WATER: usize = 64 * 1024;

/// The events a device makes on its own.
#[derive(Debug, Clone)]
pub struct EventLoad {
    /// How fast, and in which bursts.
    pub pacing: Pacing,
    /// `EVENT.kind` of every event.
    pub kind: u16,
    /// `EVENT.body` of every event: one buffer shared by every device.
    pub body: Bytes,
    /// Most unacknowledged events a device holds; while it is full, new
    /// events are not made (counted as skipped): the server is not keeping
    /// up.
    pub backlog: usize,
}

/// What a device does: shared by all devices of a run (or of a group).
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// `HELLO.firmware`.
    pub firmware: String,
    /// Events made while connected; `None` for a device that only answers.
    pub events: Option<EventLoad>,
    /// One upload per device, delivered across connections.
    pub upload: Option<UploadJob>,
    /// How long a command "runs" before its result event is queued.
    pub command_delay: Duration,
    /// `data` of every command result (status `OK`).
    pub command_reply: Bytes,
    /// Reconnect delays after a failed connection or a lost session.
    pub reconnect: Backoff,
    /// How long to stay quiet after `ERROR BUSY`.
    pub busy: Backoff,
    /// Longest TCP connect plus handshake.
    pub handshake_timeout: Duration,
    /// After the device's `BYE`, how long it waits for the server's
    /// pending acks, its `BYE` and the close.
    pub bye_timeout: Duration,
    /// Mean session lifetime when the device drops its connections on
    /// purpose (scenario churn); `None`: sessions last.
    pub churn: Option<Duration>,
    /// How the device treats offered files; `None`: it declines them all.
    pub files: Option<FilePolicy>,
    /// DELIBERATELY WRONG, for proving that a checker can fail: the device
    /// forgets an event (and logs it as acknowledged) as soon as it is
    /// written to the socket, instead of when an `ACK` covers it, as if the
    /// TCP stack's acceptance meant delivery. Behind a network that accepts
    /// bytes and never delivers them, such a device loses events. Never
    /// set it outside such a test.
    pub forget_on_write: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            firmware: concat!("controller-sim/", env!("CARGO_PKG_VERSION")).to_owned(),
            events: None,
            upload: None,
            command_delay: Duration::ZERO,
            command_reply: Bytes::from_static(b"done"),
            reconnect: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            busy: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            handshake_timeout: Duration::from_secs(15),
            bye_timeout: Duration::from_secs(2),
            churn: None,
            files: None,
            forget_on_write: false,
        }
    }
}

/// Where a device connects, and from which local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// HAProxy or a driver.
    pub target: SocketAddr,
    /// Local address to bind before connecting; `None` lets the kernel pick.
    pub source: Option<IpAddr>,
}

/// Tells running devices to finish.
#[derive(Debug, Clone, Default)]
pub struct Control {
    finish: CancellationToken,
    abort: CancellationToken,
}

impl Control {
    /// Devices run until told otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop making events; deliver what is queued (reconnecting if need
    /// be), then say `BYE` and return.
    pub fn finish(&self) {
        self.finish.cancel();
    }

    /// Return now, whatever is unacknowledged.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Whether [`Control::finish`] was called.
    pub fn is_finishing(&self) -> bool {
        self.finish.is_cancelled()
    }

    /// Resolves once [`Control::finish`] is called.
    pub async fn finishing(&self) {
        self.finish.cancelled().await;
    }

    /// Resolves once [`Control::abort`] is called.
    pub async fn aborted(&self) {
        self.abort.cancelled().await;
    }
}

/// How one session (one connection) ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Finishing, everything delivered, `BYE` said.
    Finished,
    /// Told to abort.
    Aborted,
    /// The server said `BYE`.
    Bye(ServerBye),
    /// The device closed to resend refused events on a new connection
    /// (after `OUT_OF_ORDER`).
    Rewind,
    /// The device dropped the connection without a word (churn); it
    /// reconnects at once.
    Dropped,
    /// The connection, the handshake or the session failed.
    Failed(ClientError),
}

/// Events and timers of one live session, dropped when it ends.
#[derive(Debug)]
struct Session {
    window: usize,
    heartbeat: Duration,
    /// When the device last wrote a frame (heartbeats fill the silences).
    last_tx: Instant,
    /// When the server last sent a frame (silence for three heartbeats
    /// means a dead connection).
    last_rx: Instant,
    /// Next burst of new events.
    next_tick: Instant,
    /// When the event credit was last topped up.
    credit_at: Instant,
    /// Quiet after `ERROR BUSY`.
    stall: Option<Stall>,
    /// The device has said `BYE` and waits for the server to close.
    closing: Option<Closing>,
    /// The upload on this connection.
    upload: UploadPhase,
    /// Finishing: no new events.
    finishing: bool,
    /// When the device drops this connection (churn).
    drop_at: Option<Instant>,
}

/// After `ERROR BUSY` the device sends nothing new until `until`. If acks
/// have stopped by then and events are still unacknowledged, those were
/// refused: the device sends them again, oldest first.
#[derive(Debug)]
struct Stall {
    until: Instant,
    /// Whether an `ACK` made progress since the stall began or was extended.
    progress: bool,
}

#[derive(Debug)]
struct Closing {
    deadline: Instant,
    end: SessionEnd,
}

/// One simulated controller: identity and the state that outlives
/// connections.
#[derive(Debug)]
pub struct Device {
    serial: Serial,
    key: DeviceKey,
    /// Id of the next event made.
    next_event_id: u64,
    /// Highest id ever sent (a lower one sent again is a resend).
    highest_sent: u64,
    /// Highest id covered by an `ACK`.
    highest_acked: u64,
    /// Unacknowledged events.
    outbox: Outbox,
    /// Commands whose result is not queued yet: when it is due, and the id.
    commands: VecDeque<(Instant, CommandId)>,
    /// Every acknowledged id, when a test or `--verify-redis` wants it.
    ack_log: Option<AckLog>,
    /// Fractional events owed by the pacing.
    credit: f64,
    /// Token of the next heartbeat `PING`.
    ping_token: u64,
    /// Consecutive `BUSY` stalls, for their backoff.
    busy_level: u32,
    /// Sessions established so far.
    sessions: u32,
    /// The upload, once the behaviour asks for one.
    upload: Option<UploadProgress>,
    /// The file being received (or received), across connections.
    file: Option<files::Reception>,
}

/// A random duration with mean `mean`, exponentially distributed: the
/// lifetimes of sessions that end at random, independently of each other.
pub fn exponential(mean: Duration) -> Duration {
    // 1 - U is in (0, 1], so its logarithm is finite.
    let uniform: f64 = 1.0 - rand::random::<f64>();
    Duration::try_from_secs_f64(-uniform.ln() * mean.as_secs_f64()).unwrap_or(Duration::MAX)
}

impl Device {
    /// A device that has never sent an event: its first id is 1.
    pub fn new(serial: Serial, key: DeviceKey) -> Self {
        Self {
            serial,
            key,
            next_event_id: 1,
            highest_sent: 0,
            highest_acked: 0,
            outbox: Outbox::default(),
            commands: VecDeque::new(),
            ack_log: None,
            credit: 0.0,
            ping_token: 0,
            busy_level: 0,
            sessions: 0,
            upload: None,
            file: None,
        }
    }

    /// Whether the device holds a verified copy of the file it was last
    /// offered.
    pub fn file_verified(&self) -> bool {
        files::holds_verified(self.file.as_ref())
    }

    /// Uses `upload_id` for the behaviour's upload (by default a random
    /// one), e.g. to find it on the server afterwards or to resume it.
    pub fn with_upload_id(mut self, upload_id: UploadId) -> Self {
        self.upload = Some(UploadProgress::new(upload_id));
        self
    }

    /// The upload's id, once the device has one.
    pub fn upload_id(&self) -> Option<UploadId> {
        self.upload.as_ref().map(|upload| upload.upload_id)
    }

    /// Whether the server has answered `UPLOAD_DONE OK`.
    pub fn upload_done(&self) -> bool {
        self.upload.as_ref().is_some_and(|upload| upload.done)
    }

    /// The server's latest `durable_offset` for the upload.
    pub fn upload_durable(&self) -> u64 {
        self.upload.as_ref().map_or(0, |upload| upload.durable)
    }

    /// Numbers events from `last_event_id + 1` (a device that used ids
    /// before, e.g. in an earlier run).
    pub fn starting_after(mut self, last_event_id: u64) -> Self {
        self.next_event_id = self.next_event_id.max(last_event_id.saturating_add(1));
        self
    }

    /// Keeps an [`AckLog`] of every acknowledged id.
    pub fn with_ack_log(mut self) -> Self {
        self.ack_log = Some(AckLog::new());
        self
    }

    /// The device's serial.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// The id the next event will get.
    pub fn next_event_id(&self) -> u64 {
        self.next_event_id
    }

    /// The highest id ever sent (0: none yet).
    pub fn highest_sent(&self) -> u64 {
        self.highest_sent
    }

    /// The highest id an `ACK` has covered.
    pub fn highest_acked(&self) -> u64 {
        self.highest_acked
    }

    /// Events not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.outbox.len()
    }

    /// Sessions established so far.
    pub fn sessions(&self) -> u32 {
        self.sessions
    }

    /// The acknowledged ids, if [`Device::with_ack_log`] asked for them.
    pub fn ack_log(&self) -> Option<&AckLog> {
        self.ack_log.as_ref()
    }

    /// Takes the [`AckLog`] out, leaving none.
    pub fn take_ack_log(&mut self) -> Option<AckLog> {
        self.ack_log.take()
    }

    /// Queues an event; it is sent when a connection and the window allow.
    /// Returns its id.
    pub fn queue_event(&mut self, kind: u16, body: Bytes) -> u64 {
        self.queue_event_at(kind, body, drover_service::clock::unix_ms(), Instant::now())
    }

    /// Queues an event made at `time_ms` (device clock), `made_at`
    /// (monotonic; for a command result, when the command arrived).
    fn queue_event_at(&mut self, kind: u16, body: Bytes, time_ms: u64, made_at: Instant) -> u64 {
        let event_id = self.next_event_id;
        self.next_event_id += 1;
        self.outbox.push(Pending {
            event_id,
            time_ms,
            kind,
            body,
            made_at,
            // Set again when the event is sent.
            sent_at: made_at,
        });
        event_id
    }

    /// Whether anything is left to deliver (events, or command results not
    /// yet queued).
    fn has_work(&self) -> bool {
        !self.outbox.is_empty() || !self.commands.is_empty() || self.upload.as_ref().is_some_and(|u| !u.done)
    }

    /// Runs the device until `control` says to stop: waits `start_delay`
    /// (the connect ramp), then connects, serves, and reconnects after
    /// every disconnect. Returns when finished (everything delivered) or
    /// aborted.
    pub async fn run(
        &mut self,
        endpoint: Endpoint,
        start_delay: Duration,
        behaviour: &Behaviour,
        stats: &Stats,
        control: &Control,
    ) {
        self.prepare_upload(behaviour);
        let mut delay = start_delay;
        let mut failures = 0;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    biased;
                    () = control.abort.cancelled() => return,
                    () = control.finish.cancelled(), if !self.has_work() => return,
                    () = sleep(delay) => {}
                }
            }
            if control.abort.is_cancelled() || (control.is_finishing() && !self.has_work()) {
                return;
            }
            if self.sessions > 0 || failures > 0 {
                stats.reconnecting();
            }
            let began = Instant::now();
            let end = self.session(endpoint, behaviour, stats, control).await;
            if began.elapsed() >= STABLE_SESSION {
                failures = 0;
            }
            delay = match end {
                SessionEnd::Finished | SessionEnd::Aborted => return,
                SessionEnd::Bye(bye) => {
                    // CWP/1 §3 BYE: reconnect after reconnect_after_ms; the
                    // jitter spreads a drained driver's devices out.
                    let after = Duration::from_millis(u64::from(bye.reconnect_after_ms));
                    after + jitter(after / 4 + Duration::from_millis(50))
                }
                SessionEnd::Rewind => Duration::ZERO,
                SessionEnd::Dropped => {
                    stats.churn_drop();
                    Duration::ZERO
                }
                SessionEnd::Failed(error) => {
                    tracing::debug!(serial = %self.serial, %error, "session failed");
                    failures += 1;
                    behaviour.reconnect.delay(failures)
                }
            };
        }
    }

    /// One session: connect, handshake, serve until it ends.
    pub async fn session(
        &mut self,
        endpoint: Endpoint,
        behaviour: &Behaviour,
        stats: &Stats,
        control: &Control,
    ) -> SessionEnd {
        self.prepare_upload(behaviour);
        let began = Instant::now();
        // Boxed: the handshake's state is large and lives only briefly.
        let opening = Box::pin(tokio::time::timeout(behaviour.handshake_timeout, async {
            let mut connection = match Connection::open(endpoint.target, endpoint.source).await {
                Ok(connection) => connection,
                Err(error) => {
                    stats.connect_failed();
                    return Err(error);
                }
            };
            let welcome = connection
                .handshake(self.serial, &self.key, &behaviour.firmware)
                .await
                .inspect_err(|error| {
                    stats.handshake_failed();
                    if let ClientError::Refused(refusal) = error {
                        stats.error(refusal.code);
                    }
                })?;
            Ok((connection, welcome))
        }));
        let opened = tokio::select! {
            biased;
            () = control.abort.cancelled() => return SessionEnd::Aborted,
            opened = opening => opened,
        };
        let (mut connection, welcome) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return SessionEnd::Failed(error),
            Err(_elapsed) => {
                stats.handshake_failed();
                return SessionEnd::Failed(ClientError::Timeout);
            }
        };
        stats.session_opened(self.sessions == 0, began.elapsed());
        self.sessions += 1;
        let end = self.serve(&mut connection, &welcome, behaviour, stats, control).await;
        stats.session_closed();
        if matches!(end, SessionEnd::Failed(_)) {
            stats.disconnected();
        }
        end
    }

    /// CWP/1 §2–3 after `WELCOME`: both sides send freely until one says
    /// `BYE` or the connection fails.
    async fn serve(
        &mut self,
        conn: &mut Connection,
        welcome: &Welcome,
        behaviour: &Behaviour,
        stats: &Stats,
        control: &Control,
    ) -> SessionEnd {
        let now = Instant::now();
        self.welcomed(welcome, stats);
        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_s.max(1)));
        let first_tick = match &behaviour.events {
            // A random phase, so that devices do not burst in step.
            Some(load) => now + jitter(load.pacing.interval),
            None => now,
        };
        let mut session = Session {
            window: usize::from(welcome.event_window.max(1)),
            heartbeat,
            last_tx: now,
            last_rx: now,
            next_tick: first_tick,
            credit_at: now,
            stall: None,
            closing: None,
            finishing: control.is_finishing(),
            upload: match &self.upload {
                Some(upload) if !upload.done && behaviour.upload.is_some() => UploadPhase::Waiting { at: now },
                _ => UploadPhase::Idle,
            },
            drop_at: behaviour.churn.map(|mean| now + exponential(mean)),
        };

        let abort = control.abort.cancelled();
        let finish = control.finish.cancelled();
        let timer = sleep_until(now);
        tokio::pin!(abort, finish, timer);
        let mut timer_at = now;

        loop {
            let now = Instant::now();
            if let Some(end) = self.on_time(conn, &mut session, behaviour, stats, now) {
                return end;
            }
            self.pump(conn, &mut session, behaviour, stats, now);
            loop {
                let more = match &behaviour.upload {
                    Some(job) => self.pump_upload(job, conn, &mut session, stats, now),
                    None => false,
                };
                if let Err(error) = flush(conn) {
                    return SessionEnd::Failed(error.into());
                }
                // Stop when the socket is full or the upload must wait.
                if !more || !conn.tx.is_empty() {
                    break;
                }
            }

            let deadline = self.next_deadline(&session, behaviour);
            if deadline != timer_at {
                timer.as_mut().reset(deadline);
                timer_at = deadline;
            }
            let result = tokio::select! {
                biased;
                () = &mut abort => return SessionEnd::Aborted,
                io = socket(conn) => match io {
                    Io::Read(Ok(0)) => Err(ClientError::Closed),
                    Io::Read(Ok(_)) => {
                        session.last_rx = Instant::now();
                        self.received(conn, &mut session, behaviour, stats)
                    }
                    Io::Wrote(Ok(0)) => Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                    Io::Wrote(Ok(written)) => {
                        conn.tx.advance(written);
                        Ok(None)
                    }
                    Io::Read(Err(error)) | Io::Wrote(Err(error)) => Err(error.into()),
                },
                () = &mut timer => Ok(None),
                () = &mut finish, if !session.finishing => {
                    session.finishing = true;
                    Ok(None)
                }
            };
            match result {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(error) => {
                    if matches!(error, ClientError::Decode(_)) {
                        stats.unexpected_frame();
                    }
                    return match session.closing.take() {
                        // The server closed after our BYE: as planned.
                        Some(closing) if matches!(error, ClientError::Closed) => closing.end,
                        _ => SessionEnd::Failed(error),
                    };
                }
            }
        }
    }

    /// Checks `WELCOME.last_event_id` against what this device knows.
    fn welcomed(&mut self, welcome: &Welcome, stats: &Stats) {
        // Everything unacknowledged goes again, oldest first, same ids. Even
        // ids ≤ last_event_id: only an ACK lets a device drop an event.
        self.outbox.rewind();
        if welcome.last_event_id < self.highest_acked {
            stats.last_event_id_regression();
            tracing::warn!(
                serial = %self.serial,
                last_event_id = welcome.last_event_id,
                highest_acked = self.highest_acked,
                "the server stores less than it acknowledged"
            );
        }
        if welcome.last_event_id >= self.next_event_id && self.outbox.is_empty() {
            // Ids stored by an earlier run under this serial: continue above
            // them, or every new event would be a "duplicate".
            stats.id_jump();
            self.next_event_id = welcome.last_event_id + 1;
        }
    }

    /// Everything that happens because time passed: new events, command
    /// results, heartbeats, the end of a stall or of a goodbye.
    fn on_time(
        &mut self,
        conn: &mut Connection,
        session: &mut Session,
        behaviour: &Behaviour,
        stats: &Stats,
        now: Instant,
    ) -> Option<SessionEnd> {
        if let Some(closing) = &session.closing {
            if now >= closing.deadline {
                return session.closing.take().map(|closing| closing.end);
            }
            return None;
        }
        if now >= session.last_rx + 3 * session.heartbeat {
            // A half-dead connection (CWP/1 §2): nothing for 3 heartbeats.
            return Some(SessionEnd::Failed(ClientError::Timeout));
        }
        if session.drop_at.is_some_and(|at| now >= at) && !session.finishing {
            // Churn: the link goes away; no BYE, the socket just closes.
            return Some(SessionEnd::Dropped);
        }

        if let Some(load) = &behaviour.events
            && !session.finishing
            && now >= session.next_tick
        {
            self.make_events(load, session, stats, now);
        }

        while let Some(&(due, command_id)) = self.commands.front() {
            if due > now {
                break;
            }
            self.commands.pop_front();
            let result = CommandResult {
                command_id,
                status: CommandStatus::OK,
                data: behaviour.command_reply.clone(),
            };
            // Results are never skipped, whatever the backlog. The command
            // arrived `command_delay` before it was due.
            let arrived = due.checked_sub(behaviour.command_delay).unwrap_or(due);
            self.queue_event_at(
                Event::COMMAND_RESULT_KIND,
                result.encode(),
                drover_service::clock::unix_ms(),
                arrived,
            );
            stats.command_answered();
        }

        if let Some(stall) = &mut session.stall
            && now >= stall.until
        {
            if self.outbox.in_flight() == 0 {
                session.stall = None;
            } else if stall.progress {
                // Acks still arrive: the server is working through them.
                stall.progress = false;
                stall.until = now + behaviour.busy.delay(self.busy_level);
            } else {
                // No ack for a whole backoff: what is still in flight was
                // refused. Send it again, same ids, oldest first.
                stats.busy_retry();
                self.outbox.rewind();
                session.stall = None;
            }
        }

        if session.finishing && !self.has_work() {
            self.say_bye(conn, session, behaviour, now, SessionEnd::Finished);
            return None;
        }

        if now >= session.last_tx + session.heartbeat {
            self.ping_token = self.ping_token.wrapping_add(1);
            encode(
                conn,
                &DeviceFrame::Ping(Ping { token: self.ping_token }),
                CONTROL_FRAME_ROOM,
            );
            session.last_tx = now;
            stats.ping_sent();
            // Idle for a whole heartbeat: give memory back.
            self.outbox.trim();
            if self.commands.is_empty() {
                self.commands = VecDeque::new();
            }
        }
        None
    }

    fn say_bye(
        &mut self,
        conn: &mut Connection,
        session: &mut Session,
        behaviour: &Behaviour,
        now: Instant,
        end: SessionEnd,
    ) {
        let bye = DeviceFrame::Bye(DeviceBye {
            reason: ByeReason::NORMAL,
        });
        encode(conn, &bye, CONTROL_FRAME_ROOM);
        session.last_tx = now;
        session.closing = Some(Closing {
            deadline: now + behaviour.bye_timeout,
            end,
        });
    }

    /// Makes the events the pacing owes since the last burst.
    fn make_events(&mut self, load: &EventLoad, session: &mut Session, stats: &Stats, now: Instant) {
        let elapsed = now.saturating_duration_since(session.credit_at);
        session.credit_at = now;
        self.credit += load.pacing.rate * elapsed.as_secs_f64();
        let owed = self.credit.floor();
        self.credit -= owed;
        // `owed` is a small whole number: at most a few seconds of this
        // device's rate.
        let owed = owed as usize;
        let room = load.backlog.saturating_sub(self.outbox.len());
        let made = owed.min(room);
        if made > 0 {
            let time_ms = drover_service::clock::unix_ms();
            for _ in 0..made {
                self.queue_event_at(load.kind, load.body.clone(), time_ms, now);
            }
        }
        if owed > made {
            stats.events_skipped((owed - made) as u64);
        }
        session.next_tick += load.pacing.interval;
        if session.next_tick <= now {
            // Fell behind (a busy machine): skip the missed bursts, the
            // credit already accounts for the time.
            session.next_tick = now + load.pacing.interval;
        }
    }

    /// Encodes every event the window allows (CWP/1 §3: "never more than
    /// event_window unacknowledged in flight"), into one write.
    fn pump(
        &mut self,
        conn: &mut Connection,
        session: &mut Session,
        behaviour: &Behaviour,
        stats: &Stats,
        now: Instant,
    ) {
        if session.closing.is_some() || session.stall.is_some() {
            return;
        }
        let sendable = self.outbox.sendable(session.window);
        if sendable == 0 {
            return;
        }
        let (mut first, mut resent) = (0, 0);
        while let Some(event) = self.outbox.send_next(session.window, now) {
            let frame = DeviceFrame::Event(Event {
                event_id: event.event_id,
                time_ms: event.time_ms,
                kind: event.kind,
                body: event.body.clone(),
            });
            if event.event_id > self.highest_sent {
                self.highest_sent = event.event_id;
                first += 1;
            } else {
                resent += 1;
            }
            conn.tx.reserve(EVENT_OVERHEAD + event.body.len());
            conn.codec.encode(&frame, &mut conn.tx);
        }
        session.last_tx = now;
        stats.events_sent(first, resent);
        if behaviour.forget_on_write {
            // The wrong device: what it hands to the socket it counts as
            // delivered (written right after this, before anything else).
            self.acked(self.highest_sent, session, stats);
        }
    }

    /// Handles every whole frame received.
    fn received(
        &mut self,
        conn: &mut Connection,
        session: &mut Session,
        behaviour: &Behaviour,
        stats: &Stats,
    ) -> Result<Option<SessionEnd>, ClientError> {
        while let Some(frame) = conn.codec.decode(&mut conn.rx)? {
            if let Some(end) = self.handle(frame, conn, session, behaviour, stats) {
                return Ok(Some(end));
            }
        }
        if conn.rx.is_empty() {
            // Nothing half-received: hold no buffer while idle.
            conn.rx = BytesMut::new();
        }
        Ok(None)
    }

    /// One server frame.
    fn handle(
        &mut self,
        frame: ServerFrame,
        conn: &mut Connection,
        session: &mut Session,
        behaviour: &Behaviour,
        stats: &Stats,
    ) -> Option<SessionEnd> {
        match frame {
            ServerFrame::Ack(ack) => self.acked(ack.event_id, session, stats),
            ServerFrame::Error(error) => {
                stats.error(error.code);
                if error.fatal {
                    // The server closes after a fatal error (CWP/1 §4).
                    return Some(SessionEnd::Failed(ClientError::Refused(error)));
                }
                if matches!(
                    error.ref_type,
                    FrameType::UPLOAD_BEGIN | FrameType::BLOCK | FrameType::UPLOAD_END
                ) {
                    self.upload_refused(&error, session, behaviour, stats);
                    return None;
                }
                match error.code {
                    ErrorCode::BUSY if session.stall.is_none() => {
                        // Keep the events, send nothing new for a while.
                        session.stall = Some(Stall {
                            until: Instant::now() + behaviour.busy.delay(self.busy_level),
                            progress: false,
                        });
                        self.busy_level = self.busy_level.saturating_add(1);
                    }
                    ErrorCode::OUT_OF_ORDER if session.closing.is_none() => {
                        // This connection takes no id at or below one it has
                        // seen: BYE (the server flushes its acks), and send
                        // the rest on a new connection.
                        stats.rewind();
                        self.say_bye(conn, session, behaviour, Instant::now(), SessionEnd::Rewind);
                    }
                    _ => {}
                }
            }
            ServerFrame::Ping(ping) => {
                encode(conn, &DeviceFrame::Pong(Pong { token: ping.token }), CONTROL_FRAME_ROOM);
                session.last_tx = Instant::now();
            }
            ServerFrame::Pong(_) => {}
            ServerFrame::Command(command) => {
                stats.command_received();
                self.commands
                    .push_back((Instant::now() + behaviour.command_delay, command.command_id));
            }
            ServerFrame::Bye(bye) => {
                stats.bye(bye.reason);
                return Some(match session.closing.take() {
                    Some(closing) => closing.end,
                    None => SessionEnd::Bye(bye),
                });
            }
            ServerFrame::FileOffer(offer) => {
                let Some(policy) = &behaviour.files else {
                    // This device takes no files: window 0 declines (CWP/1 §3 Files).
                    let decline = DeviceFrame::FileAccept(FileAccept {
                        file_id: offer.file_id,
                        offset: 0,
                        window: 0,
                    });
                    encode(conn, &decline, CONTROL_FRAME_ROOM);
                    return None;
                };
                let accept = stats.with_files(|summary| files::on_offer(&mut self.file, &offer, policy, summary));
                encode(conn, &DeviceFrame::FileAccept(accept), CONTROL_FRAME_ROOM);
                if let Some(ack) = stats.with_files(|summary| files::ack_if_complete(&mut self.file, summary)) {
                    encode(conn, &DeviceFrame::FileAck(ack), CONTROL_FRAME_ROOM);
                }
                session.last_tx = Instant::now();
            }
            ServerFrame::Challenge(_) | ServerFrame::Welcome(_) => {
                stats.unexpected_frame();
                return Some(SessionEnd::Failed(ClientError::Unexpected(frame)));
            }
            ServerFrame::UploadStatus(status) => self.upload_status(status, session, behaviour, stats),
            ServerFrame::UploadDone(done) => self.upload_finished(done, session, behaviour, stats),
            ServerFrame::FileChunk(chunk) => {
                match stats.with_files(|summary| files::on_chunk(&mut self.file, &chunk, summary)) {
                    files::Received::Nothing => {}
                    files::Received::Ack(ack) => {
                        encode(conn, &DeviceFrame::FileAck(ack), CONTROL_FRAME_ROOM);
                        session.last_tx = Instant::now();
                    }
                    files::Received::Drop => return Some(SessionEnd::Dropped),
                }
            }
        }
        None
    }

    /// `ACK(upto)`: drop every event it covers.
    fn acked(&mut self, upto: u64, session: &mut Session, stats: &Stats) {
        if upto >= self.next_event_id {
            stats.ack_beyond_sent();
        }
        let now = Instant::now();
        let ack_log = &mut self.ack_log;
        // Locked at most once per ACK, however many events it covers.
        let mut latency = None;
        let dropped = self.outbox.ack(upto, |event, in_flight| {
            if let Some(log) = ack_log.as_mut() {
                log.record(event.event_id);
            }
            if in_flight {
                let histogram = latency.get_or_insert_with(|| stats.ack_latency());
                histogram.saturating_record(stats::micros(now.saturating_duration_since(event.sent_at)));
            }
            if event.kind == Event::COMMAND_RESULT_KIND {
                stats.command_round_trip(now.saturating_duration_since(event.made_at));
            }
        });
        drop(latency);
        if dropped == 0 {
            return;
        }
        self.highest_acked = self.highest_acked.max(upto);
        stats.events_acked(dropped as u64);
        if session.stall.is_none() {
            self.busy_level = 0;
        } else if self.outbox.in_flight() == 0 {
            session.stall = None;
        } else if let Some(stall) = &mut session.stall {
            stall.progress = true;
        }
    }

    /// The earliest moment [`Device::on_time`] has something to do.
    fn next_deadline(&self, session: &Session, behaviour: &Behaviour) -> Instant {
        if let Some(closing) = &session.closing {
            return closing.deadline;
        }
        let mut deadline = (session.last_tx + session.heartbeat).min(session.last_rx + 3 * session.heartbeat);
        if behaviour.events.is_some() && !session.finishing {
            deadline = deadline.min(session.next_tick);
        }
        if let Some(&(due, _)) = self.commands.front() {
            deadline = deadline.min(due);
        }
        if let Some(stall) = &session.stall {
            deadline = deadline.min(stall.until);
        }
        if let Some(drop_at) = session.drop_at
            && !session.finishing
        {
            deadline = deadline.min(drop_at);
        }
        if let UploadPhase::Waiting { at } = session.upload {
            deadline = deadline.min(at);
        }
        deadline
    }

    /// Gives the device its upload progress when the behaviour has a job.
    fn prepare_upload(&mut self, behaviour: &Behaviour) {
        if behaviour.upload.is_some() && self.upload.is_none() {
            self.upload = Some(UploadProgress::new(UploadId(rand::random())));
        }
    }

    /// Encodes what the upload may send now: `UPLOAD_BEGIN` when it is
    /// due, `BLOCK`s up to the window, `UPLOAD_END` after the last block.
    /// Returns true if it stopped only because the send buffer is full.
    fn pump_upload(
        &mut self,
        job: &UploadJob,
        conn: &mut Connection,
        session: &mut Session,
        stats: &Stats,
        now: Instant,
    ) -> bool {
        let Some(upload) = self.upload.as_mut() else {
            return false;
        };
        if session.closing.is_some() {
            return false;
        }
        match session.upload {
            UploadPhase::Waiting { at } if at <= now => {
                let name = Str8::truncating(&job.name);
                let begin = DeviceFrame::UploadBegin(UploadBegin {
                    upload_id: upload.upload_id,
                    total_size: job.size(),
                    name,
                });
                encode(conn, &begin, CONTROL_FRAME_ROOM + job.name.len());
                stats.upload_begun(now);
                session.upload = UploadPhase::Begun;
                session.last_tx = now;
                false
            }
            UploadPhase::Sending { mut next } => {
                let total = job.size();
                let (mut first, mut resent) = (0, 0);
                while next < total && next < upload.durable + job.window && conn.tx.len() < UPLOAD_TX_HIGH_WATER {
                    // Offsets below `total` fit in usize: they index `content`.
                    let start = next as usize;
                    let end = (start + job.block_size).min(job.content.len());
                    let block = DeviceFrame::Block(Block {
                        data: job.content.slice(start..end),
                    });
                    encode(conn, &block, cwp::HEADER_LEN + cwp::TAG_LEN + end - start);
                    next = end as u64;
                    let fresh = next.saturating_sub(upload.highest_sent.max(start as u64));
                    first += fresh;
                    resent += (end - start) as u64 - fresh;
                    upload.highest_sent = upload.highest_sent.max(next);
                }
                stats.upload_sent(first, resent);
                session.upload = UploadPhase::Sending { next };
                if next == total {
                    let end = DeviceFrame::UploadEnd(UploadEnd {
                        upload_id: upload.upload_id,
                        total_size: total,
                        sha256: job.sha256,
                    });
                    encode(conn, &end, CONTROL_FRAME_ROOM);
                    session.upload = UploadPhase::Ending;
                }
                if first + resent > 0 {
                    session.last_tx = now;
                }
                next < total && next < upload.durable + job.window
            }
            _ => false,
        }
    }

    /// `UPLOAD_STATUS`: where to resume, or how far the server has made
    /// the upload durable.
    fn upload_status(&mut self, status: UploadStatus, session: &mut Session, behaviour: &Behaviour, stats: &Stats) {
        let (Some(upload), Some(job)) = (self.upload.as_mut(), &behaviour.upload) else {
            stats.unexpected_frame();
            return;
        };
        if status.upload_id != upload.upload_id || status.durable_offset > job.size() {
            stats.unexpected_frame();
            return;
        }
        if status.durable_offset < upload.durable {
            // The server reported more durable earlier: it lost data.
            stats.upload_offset_regression();
            tracing::warn!(
                serial = %self.serial,
                durable_offset = status.durable_offset,
                reported_before = upload.durable,
                "the server stores less of the upload than it reported"
            );
        }
        stats.upload_durable(status.durable_offset.saturating_sub(upload.durable));
        upload.durable = status.durable_offset;
        match session.upload {
            UploadPhase::Begun => {
                if status.durable_offset > 0 {
                    stats.upload_resumed();
                }
                session.upload = UploadPhase::Sending {
                    next: status.durable_offset,
                };
            }
            UploadPhase::Sending { next } if status.durable_offset > next => stats.unexpected_frame(),
            _ => {}
        }
    }

    /// `UPLOAD_DONE`: finished, or start again at 0 after a mismatch.
    fn upload_finished(&mut self, done: UploadDone, session: &mut Session, behaviour: &Behaviour, stats: &Stats) {
        let (Some(upload), Some(job)) = (self.upload.as_mut(), &behaviour.upload) else {
            stats.unexpected_frame();
            return;
        };
        if done.upload_id != upload.upload_id || session.upload != UploadPhase::Ending {
            stats.unexpected_frame();
            return;
        }
        if done.status == UploadOutcome::OK {
            upload.done = true;
            upload.durable = job.size();
            upload.refusals = 0;
            session.upload = UploadPhase::Idle;
            stats.upload_completed(job.size());
        } else {
            // CWP/1 §3: the server discarded it; start again at 0.
            stats.upload_mismatch();
            upload.durable = 0;
            session.upload = UploadPhase::Waiting { at: Instant::now() };
        }
    }

    /// `ERROR` about an upload frame (`BUSY`, `UPLOAD_CONFLICT`): the
    /// server closed the upload; begin again after a backoff.
    fn upload_refused(&mut self, error: &ErrorFrame, session: &mut Session, behaviour: &Behaviour, stats: &Stats) {
        let Some(upload) = self.upload.as_mut() else {
            stats.unexpected_frame();
            return;
        };
        if matches!(session.upload, UploadPhase::Idle | UploadPhase::Waiting { .. }) {
            // A second error about frames already in flight.
            return;
        }
        upload.refusals = upload.refusals.saturating_add(1);
        stats.upload_refused();
        tracing::debug!(serial = %self.serial, code = %error.code, message = %error.message, "upload refused");
        session.upload = UploadPhase::Waiting {
            at: Instant::now() + behaviour.busy.delay(upload.refusals),
        };
    }
}

/// Appends `frame` to the send buffer.
fn encode(conn: &mut Connection, frame: &DeviceFrame, room: usize) {
    conn.tx.reserve(room);
    conn.codec.encode(frame, &mut conn.tx);
}

/// Writes as much of the send buffer as the socket takes without waiting;
/// the rest goes when it is writable again.
fn flush(conn: &mut Connection) -> io::Result<()> {
    while !conn.tx.is_empty() {
        match conn.stream.try_write(&conn.tx) {
            Ok(written) => conn.tx.advance(written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error),
        }
    }
    // Everything written: hold no buffer while idle.
    conn.tx = BytesMut::new();
    Ok(())
}

/// What the socket did.
enum Io {
    /// Bytes appended to the receive buffer (0: end of stream).
    Read(io::Result<usize>),
    /// Bytes of the send buffer written (the caller advances it).
    Wrote(io::Result<usize>),
}

/// Waits until the socket can take the rest of the send buffer or has
/// something to read, and does it: one syscall per wake-up.
///
/// The receive buffer is only allocated once data is there, so an idle
/// device holds none. The read goes through `AsyncRead`, which notices a
/// short read and clears the readiness without a second, empty `read`.
fn socket(conn: &mut Connection) -> impl Future<Output = Io> + '_ {
    std::future::poll_fn(move |cx| {
        if !conn.tx.is_empty()
            && let Poll::Ready(wrote) = Pin::new(&mut conn.stream).poll_write(cx, &conn.tx)
        {
            return Poll::Ready(Io::Wrote(wrote));
        }
        if let Err(error) = ready!(conn.stream.poll_read_ready(cx)) {
            return Poll::Ready(Io::Read(Err(error)));
        }
        let limit = conn.codec.read_limit(conn.rx.len());
        let want = conn.codec.bytes_needed(&conn.rx).max(READ_CHUNK).min(limit);
        if want == 0 {
            // The codec guarantees that read_limit always has room for the
            // next whole frame.
            let full = io::Error::new(io::ErrorKind::InvalidData, "receive buffer full without a frame");
            return Poll::Ready(Io::Read(Err(full)));
        }
        conn.rx.reserve(want);
        let mut rx = (&mut conn.rx).limit(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut rx).map(Io::Read)
    })
}
