//! One device connection, from the first byte to the close, in the order of
//! CWP/1 §2: handshake, then the established session.
//!
//! [`Connection`] owns the socket, the codec and the two buffers; the
//! functions below run the handshake and carry out what the established
//! session's rules ([`crate::session`], free of I/O) decide for each
//! frame. Both buffers are released whenever they are empty. A quiet
//! session with nothing in flight parks: its task ends, and a
//! [`ParkedSession`] (socket, codec, the rules' state) waits in the park
//! ([`crate::park`]) until the device or the mailbox needs it. An open
//! upload adds its write buffer ([`crate::upload`]) and keeps the receive
//! buffer, so that its blocks cost no allocation; such a session does not
//! park.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf as _, BufMut as _, BytesMut};
use cwp::{
    ByeReason, DecodeError, DeviceFrame, ErrorCode, ErrorFrame, FrameType, Nonce, Serial, ServerBye, ServerCodec,
    ServerFrame, ServerHandshake, ServerStep, SessionId, Welcome,
};
use rand::RngExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::Driver;
use crate::bridge::unix_ms;
use crate::handshakes::HandshakeSlot;
use crate::metrics::{LimiterLabel, ReasonLabel};
use crate::pipeline::PendingEvent;
use crate::registry::{CloseRequest, SessionHandle};
use crate::session::{Ending, EventStore, Session, Step, UploadFrame, decode_error_frame};
use crate::upload::{UploadError, Uploads};

/// Bytes read per read call at most: big enough for bulk uploads to read
/// many frames per syscall, small enough to keep active connections lean.
const READ_CHUNK: usize = 16 * 1024;
/// How long a device that stopped reading may block our writes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing session waits for its events to become durable
/// before it acknowledges what it can and leaves.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the handshake waits for Redis to confirm the command
/// subscription before `WELCOME` (commands then start a little later).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket, the codec and the buffers of one connection.
pub struct Connection {
    stream: TcpStream,
    /// The device's address (from the PROXY header when behind HAProxy).
    peer: SocketAddr,
    codec: ServerCodec,
    rx: BytesMut,
    tx: BytesMut,
}

/// Why reading stopped.
#[derive(Debug)]
enum ReadError {
    /// The device closed the connection.
    Closed,
    /// The socket failed.
    Io(io::Error),
    /// The bytes are not CWP/1; the device gets this error.
    Decode(DecodeError),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl Connection {
    /// Moves the socket's registration to `runtime`'s I/O driver (from the
    /// handshake thread's, [`crate::handshake_thread`], to the sessions').
    fn register_with(self, runtime: &tokio::runtime::Handle) -> io::Result<Self> {
        let stream = self.stream.into_std()?;
        let _entered = runtime.enter();
        Ok(Self {
            stream: TcpStream::from_std(stream)?,
            ..self
        })
    }

    /// Wraps an accepted socket; `initial` holds bytes already read past a
    /// PROXY header.
    pub fn new(stream: TcpStream, peer: SocketAddr, initial: BytesMut) -> Self {
        Self {
            stream,
            peer,
            codec: ServerCodec::new(),
            rx: initial,
            tx: BytesMut::new(),
        }
    }

    /// Reads whatever the socket has now, up to the codec's limit.
    /// `Ok(0)` means the socket had nothing after all (spurious readiness).
    fn read_available(&mut self) -> Result<usize, ReadError> {
        let limit = self.codec.read_limit(self.rx.len()).min(READ_CHUNK);
        if limit == 0 {
            // A whole frame is buffered; decode it before reading more.
            return Ok(0);
        }
        self.rx.reserve(limit);
        match self.stream.try_read_buf(&mut (&mut self.rx).limit(limit)) {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => Ok(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    /// Decodes the next buffered frame, if a whole one is there.
    fn next_frame(&mut self) -> Result<Option<DeviceFrame>, ReadError> {
        self.codec.decode(&mut self.rx).map_err(ReadError::Decode)
    }

    /// Waits for the next whole frame.
    async fn read_frame(&mut self) -> Result<DeviceFrame, ReadError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            self.stream.readable().await?;
            self.read_available()?;
        }
    }

    /// Encodes a frame into the send buffer.
    fn queue(&mut self, frame: &ServerFrame) {
        self.codec.encode(frame, &mut self.tx);
    }

    /// Writes the send buffer out.
    async fn flush(&mut self) -> io::Result<()> {
        // Nearly always the socket takes it all at once, with no future to
        // wait on; waiting (and its timer) is boxed, so that it does not
        // size every idle session's task.
        if self.write_now()? {
            return Ok(());
        }
        Box::pin(self.write_waiting()).await
    }

    /// Writes what the socket takes without waiting; whether all of it went.
    fn write_now(&mut self) -> io::Result<bool> {
        while !self.tx.is_empty() {
            match self.stream.try_write(&self.tx) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.tx.advance(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        self.tx.clear();
        Ok(true)
    }

    /// Writes the rest of the send buffer, waiting for the device to read.
    async fn write_waiting(&mut self) -> io::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(&self.tx)).await {
            Ok(result) => result?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "device is not reading")),
        }
        self.tx.clear();
        Ok(())
    }

    /// Drops empty buffers so that an idle connection holds none. While
    /// `uploading`, the receive buffer stays: its space is reclaimed in
    /// place for the next blocks instead of being allocated again.
    fn release_idle_buffers(&mut self, uploading: bool) {
        if !uploading && self.rx.is_empty() && self.rx.capacity() > 0 {
            self.rx = BytesMut::new();
        }
        if self.tx.capacity() > READ_CHUNK {
            self.tx = BytesMut::new();
        }
    }

    /// Sends an `ERROR` (sealed or not, as the handshake stage requires),
    /// counting it.
    async fn send_error(&mut self, driver: &Driver, error: ErrorFrame) {
        driver.metrics.error_sent(error.code);
        self.queue(&ServerFrame::Error(error));
        let _ = self.flush().await;
    }

    /// Sends `BYE` and closes the write side.
    async fn send_bye(&mut self, reason: ByeReason, reconnect_after_ms: u32) {
        self.queue(&ServerFrame::Bye(ServerBye {
            reason,
            reconnect_after_ms,
        }));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Serves one accepted connection: the handshake here (on the handshake
/// thread, [`crate::handshake_thread`]); then, once the device is
/// authenticated, its session parks ([`crate::park`]), or, if the device
/// already sent more or parking is off, runs in a task of its own on the
/// sessions' runtime (tracked by `connections`, holding `permit`), which
/// carries nothing the handshake needed.
///
/// The handshake runs in a tracing span (`peer`, then `serial`); the
/// established session does not: a span lives in the subscriber's registry
/// with its formatted fields for as long as it is open, a few hundred bytes
/// per idle device. Session logs name the serial themselves.
pub async fn serve(
    driver: Arc<Driver>,
    mut connection: Connection,
    slot: HandshakeSlot,
    permit: OwnedSemaphorePermit,
    connections: &TaskTracker,
) {
    driver.metrics.connections.inc();
    let span = info_span!("conn", peer = %connection.peer, serial = tracing::field::Empty);
    let Some(session) = handshake(&driver, &mut connection, slot).instrument(span).await else {
        driver.metrics.connections.dec();
        return;
    };
    // Registered with the sessions' runtime before its task is spawned, so
    // that the task holds one connection, not a detached one and the
    // attached one.
    let state = SessionState {
        rules: Session::new(session.durable_event_id(), driver.config.event_window),
        last_heard_ms: unix_ms(),
    };
    // Nothing is in flight yet: unless the device already sent more, the
    // session parks right here, without ever having a task on the
    // sessions' runtime.
    if driver.config.park_after.is_some() && connection.rx.is_empty() && connection.tx.is_empty() {
        if let Err(session) = park(&driver, connection, session, permit, state) {
            end_session(&driver, &session, unix_ms());
            driver.metrics.connections.dec();
        }
        return;
    }
    match connection.register_with(&driver.sessions) {
        Ok(connection) => {
            let sessions = driver.sessions.clone();
            connections.spawn_on(established(driver, connection, session, permit, state), &sessions);
        }
        Err(err) => {
            warn!(serial = %session.serial, error = %err, "cannot hand the connection to the sessions' runtime");
            end_session(&driver, &session, unix_ms());
            driver.metrics.connections.dec();
        }
    }
}

/// What an established session carries from one task to the next when it
/// parks ([`crate::park`]).
#[derive(Debug)]
struct SessionState {
    /// CWP/1 §3: the event ids seen and acknowledged.
    rules: Session,
    /// When the device was last heard from, Unix ms (for the registry).
    last_heard_ms: u64,
}

/// An established session without a task: what it needs to resume where
/// it stopped. Held by the park ([`crate::park`]).
#[derive(Debug)]
pub struct ParkedSession {
    /// No longer registered with tokio: the park's epoll set watches it.
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// The seal and its sequence numbers, and the payload limit.
    codec: ServerCodec,
    state: SessionState,
    session: Arc<SessionHandle>,
    /// The connection's place under DRIVER_MAX_CONNECTIONS.
    permit: OwnedSemaphorePermit,
}

impl ParkedSession {
    /// The session's registry entry.
    pub fn session(&self) -> &Arc<SessionHandle> {
        &self.session
    }

    /// The socket, for the park's epoll set.
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.stream.as_fd()
    }

    /// The session running again: its task's future, to spawn on the
    /// sessions' runtime (the caller must be running on it). `None` if the
    /// socket cannot be registered again; the session has then ended.
    pub fn resume(self, driver: Arc<Driver>) -> Option<impl Future<Output = ()> + Send + use<>> {
        let Self {
            stream,
            peer,
            codec,
            state,
            session,
            permit,
        } = self;
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let connection = Connection {
                    stream,
                    peer,
                    codec,
                    rx: BytesMut::new(),
                    tx: BytesMut::new(),
                };
                Some(established(driver, connection, session, permit, state))
            }
            Err(err) => {
                warn!(serial = %session.serial, %peer, error = %err, "cannot resume a parked session");
                end_session(&driver, &session, state.last_heard_ms);
                driver.metrics.connections.dec();
                None
            }
        }
    }
}

/// An established session, to its end, on the sessions' runtime.
///
/// A block, not an `async fn`: an `async fn` moves its arguments into
/// locals of its own and its future keeps both copies; the block uses the
/// captured ones in place. Measured with `size_of_val`: 864 bytes as an
/// `async fn`, 528 as a block, in every running session's task (496
/// since the rules' state shrank for parking).
///
/// Ends when the session ends, or when it parks: its state then goes to
/// the park ([`crate::park`]), which resumes it in a new task.
#[allow(clippy::manual_async_fn, reason = "the async fn's future is 336 bytes larger")]
fn established(
    driver: Arc<Driver>,
    mut connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
    state: SessionState,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut loop_state = Established::new(&driver, &session, &mut connection, state);
        let parks = loop_state.run().await;
        let state = loop_state.into_state();
        let last_heard_ms = state.last_heard_ms;
        if parks {
            match park(&driver, connection, session, permit, state) {
                Ok(()) => return,
                Err(session) => end_session(&driver, &session, last_heard_ms),
            }
        } else {
            end_session(&driver, &session, last_heard_ms);
            // The connection's place under DRIVER_MAX_CONNECTIONS.
            drop(permit);
        }
        driver.metrics.connections.dec();
    }
}

/// Hands a quiet session to the park. Gives the session back if it cannot
/// be parked; its connection is then closed.
fn park(
    driver: &Driver,
    connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
    state: SessionState,
) -> Result<(), Arc<SessionHandle>> {
    let Connection {
        stream, peer, codec, ..
    } = connection;
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            warn!(serial = %session.serial, %peer, error = %err, "cannot park the session");
            return Err(session);
        }
    };
    let parked = ParkedSession {
        stream,
        peer,
        codec,
        state,
        session,
        permit,
    };
    driver.park.park(parked).inspect_err(|session| {
        debug!(serial = %session.serial, "the park has stopped: closing the session");
    })
}

/// HELLO → CHALLENGE → AUTH → (bridge: OpenSessions) → WELCOME. Returns the
/// registered session, or `None` after answering the device's failure.
/// `slot` is this connection's place among the unauthenticated ones; it is
/// given up once `AUTH` is verified.
async fn handshake(driver: &Arc<Driver>, conn: &mut Connection, slot: HandshakeSlot) -> Option<Arc<SessionHandle>> {
    let deadline = slot.deadline;
    let mut handshake = ServerHandshake::default();
    // The serial claimed in HELLO, for counting a failed AUTH against it.
    let mut claimed: Option<Serial> = None;
    let (serial, firmware, session_key) = loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, conn.read_frame()) => read,
            () = slot.evicted() => {
                driver.metrics.handshake("evicted");
                let error = ErrorFrame::new(
                    ErrorCode::BUSY,
                    FrameType(0),
                    "too many handshakes in progress, retry later",
                );
                conn.send_error(driver, error).await;
                return None;
            }
        };
        let frame = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(ReadError::Decode(err))) => {
                debug!(error = %err, "undecodable handshake frame");
                driver.metrics.handshake("malformed");
                conn.send_error(driver, decode_error_frame(&err)).await;
                return None;
            }
            Ok(Err(ReadError::Closed | ReadError::Io(_))) => {
                driver.metrics.handshake("closed");
                return None;
            }
            Err(_elapsed) => {
                driver.metrics.handshake("timeout");
                let error = ErrorFrame::new(ErrorCode::TIMEOUT, FrameType(0), "handshake not completed in time");
                conn.send_error(driver, error).await;
                return None;
            }
        };
        if let DeviceFrame::Hello(hello) = &frame {
            // Refused before anything else is done for it (no nonce, no
            // key lookup), with the same answer whether the serial exists.
            if let Some(limiter) = driver.auth_limits.refuses(conn.peer.ip(), &hello.serial) {
                debug!(serial = %hello.serial, limiter = limiter.label(), "too many failed authentications: HELLO refused");
                driver.metrics.handshake("rate_limited");
                driver
                    .metrics
                    .auth_rate_limited
                    .get_or_create(&LimiterLabel {
                        limiter: limiter.label(),
                    })
                    .inc();
                let error = ErrorFrame::new(
                    ErrorCode::BUSY,
                    FrameType::HELLO,
                    "too many failed authentications, retry later",
                );
                conn.send_error(driver, error).await;
                return None;
            }
            claimed = Some(hello.serial);
        }
        let fresh_nonce = || Nonce(rand::random());
        match handshake.receive(frame, fresh_nonce, |serial| driver.keys.device_key(serial)) {
            Ok(ServerStep::Challenge(challenge)) => {
                conn.queue(&ServerFrame::Challenge(challenge));
                if conn.flush().await.is_err() {
                    driver.metrics.handshake("closed");
                    return None;
                }
            }
            Ok(ServerStep::Authenticated {
                serial,
                firmware,
                session_key,
            }) => break (serial, firmware, session_key),
            Err(err) => {
                info!(code = %err.code, detail = err.detail, "handshake refused");
                if err.code == ErrorCode::UNAUTHORIZED {
                    driver.metrics.handshake("unauthorized");
                    let reason = if err.detail == "unknown serial" {
                        "unknown_serial"
                    } else {
                        "wrong_mac"
                    };
                    driver
                        .metrics
                        .auth_failures
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    if let Some(serial) = &claimed {
                        driver.auth_limits.failed(conn.peer.ip(), serial);
                    }
                } else {
                    driver.metrics.handshake("unexpected");
                }
                conn.send_error(driver, err.to_frame()).await;
                return None;
            }
        }
    };
    // Authenticated: the rest of the handshake is the server's own work.
    drop(slot);
    tracing::Span::current().record("serial", tracing::field::display(&serial));

    let session_id = SessionId(rand::random());
    // The bridge gets what is left of the handshake's time (at least a
    // second): under a connect storm, registering is what takes time.
    let remaining = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    let opened = match driver
        .bridge
        .open_session(&serial, &session_id, conn.peer, &firmware, remaining)
        .await
    {
        Ok(opened) => opened,
        Err(status) => {
            warn!(%serial, code = ?status.code(), message = %crate::bridge::describe(&status), "cannot register the session: vendor-bridge unavailable");
            driver.metrics.handshake("bridge_unavailable");
            // Still before WELCOME: the ERROR is unsealed.
            let error = ErrorFrame::new(
                ErrorCode::INTERNAL,
                FrameType::AUTH,
                "event store unavailable, retry later",
            );
            conn.send_error(driver, error).await;
            return None;
        }
    };

    let session = Arc::new(SessionHandle::new(serial, session_id, opened.last_event_id));
    if let Some(previous) = driver.registry.insert(session.clone()) {
        info!(%serial, "superseding this driver's older session of the same serial");
        previous.request_close(CloseRequest::Superseded);
    }
    driver.metrics.sessions.inc();
    if !driver.subscriptions.sync_confirmed(serial, SUBSCRIBE_TIMEOUT).await {
        warn!(%serial, "command subscription not confirmed by Redis yet; commands may start late");
    }

    conn.codec.start_sealing(&session_key);
    conn.queue(&ServerFrame::Welcome(Welcome {
        session: session_id,
        heartbeat_s: driver.config.heartbeat_s,
        max_payload: driver.config.max_payload,
        event_window: driver.config.event_window,
        last_event_id: opened.last_event_id,
        server: cwp::Str8::truncating(&driver.config.driver_id),
    }));
    conn.codec.set_max_payload(driver.config.max_payload);
    if conn.flush().await.is_err() {
        driver.metrics.handshake("closed");
        return Some(session);
    }
    driver.metrics.handshake("ok");
    debug!(%serial, last_event_id = opened.last_event_id, "session established");
    Some(session)
}

/// How the session loop ends.
enum Exit {
    /// The session ends this way.
    End(Ending),
    /// The session parks ([`crate::park`]).
    Park,
}

/// What woke an idle session loop.
enum Wake {
    /// Its mailbox: commands, a close request (the idle sweep's too), acks.
    Mailbox,
    /// Its socket (`false`: the socket failed).
    Readable(bool),
}

/// The established session's state.
struct Established<'a> {
    driver: &'a Arc<Driver>,
    session: &'a Arc<SessionHandle>,
    /// Borrowed: the task keeps one copy of the connection, not two.
    conn: &'a mut Connection,
    /// CWP/1 §3: what each frame calls for.
    rules: Session,
    /// When the device was last heard from, Unix ms (for the registry).
    last_heard_ms: u64,
    /// CWP/1 §3 Uploads: the one upload this connection may have open.
    upload: Uploads,
    /// The device has nothing to send for now: it sent a heartbeat
    /// (`PING`). The session then parks as soon as nothing is in flight,
    /// without waiting for the idle sweep.
    quiet: bool,
}

impl<'a> Established<'a> {
    fn new(
        driver: &'a Arc<Driver>,
        session: &'a Arc<SessionHandle>,
        conn: &'a mut Connection,
        state: SessionState,
    ) -> Self {
        Self {
            driver,
            session,
            conn,
            rules: state.rules,
            last_heard_ms: state.last_heard_ms,
            upload: Uploads::default(),
            quiet: false,
        }
    }

    /// What a parked session keeps.
    fn into_state(self) -> SessionState {
        SessionState {
            rules: self.rules,
            last_heard_ms: self.last_heard_ms,
        }
    }

    /// Serves the session until it ends (`false`) or parks (`true`).
    async fn run(&mut self) -> bool {
        let ending = match self.serve().await {
            Exit::Park => return true,
            Exit::End(ending) => ending,
        };
        // Once per session, and large (flushing an upload, waiting for
        // acks, sending the goodbye): boxed, so that idle sessions' tasks
        // are only as large as the loop.
        Box::pin(self.finish(ending)).await;
        false
    }

    /// Whether the session can park: nothing in flight either way, so
    /// that its state is all in [`SessionState`] and the codec.
    fn can_park(&self) -> bool {
        self.session.pending_events() == 0
            && !self.upload.is_open()
            && self.conn.rx.is_empty()
            && self.conn.tx.is_empty()
            && !self.rules.has_ended()
    }

    /// After the loop: say goodbye as the ending requires.
    async fn finish(&mut self, ending: Ending) {
        // A graceful goodbye makes the upload's buffered bytes durable and
        // says so first (a drain must not cost devices data they already
        // sent). Otherwise unflushed bytes were never reported and the
        // device sends them again. The upload's lock goes before the goodbye.
        if matches!(ending, Ending::Bye(..))
            && let Some(status) = self.upload.flush_before_close(self.driver).await
        {
            self.conn.queue(&ServerFrame::UploadStatus(status));
        }
        self.upload.close();
        match ending {
            Ending::Quiet => {}
            Ending::Bye(reason, reconnect_after_ms) => {
                self.flush_acks().await;
                self.conn.send_bye(reason, reconnect_after_ms).await;
            }
            Ending::Fatal(error) => {
                if error.code == ErrorCode::INTERNAL {
                    error!(tags.serial = %self.session.serial, peer = %self.conn.peer, message = %error.message, "session failed");
                }
                self.conn.send_error(self.driver, error).await;
            }
        }
    }

    /// The session loop: mailbox, then wait for the device or the
    /// mailbox.
    async fn serve(&mut self) -> Exit {
        if self.driver.draining.load(Ordering::Acquire) {
            self.session
                .request_close(crate::drain::close_request(&self.driver.config));
        }
        loop {
            let asked_to_park = match self.read_mailbox() {
                Ok(asked_to_park) => asked_to_park,
                Err(ending) => return Exit::End(ending),
            };
            if self.conn.flush().await.is_err() {
                return Exit::End(Ending::Quiet);
            }
            self.conn.release_idle_buffers(self.upload.is_open());
            let quiet = std::mem::take(&mut self.quiet) && self.driver.config.park_after.is_some();
            if (asked_to_park || quiet) && self.can_park() {
                // Whatever the socket already holds is read first: a
                // parked session has nothing unread but what the kernel
                // will report to the park.
                match Box::pin(self.read_and_handle()).await {
                    Ok(false) => return Exit::Park,
                    Ok(true) => self.session.heard(),
                    Err(ending) => return Exit::End(ending),
                }
                continue;
            }

            // The wait yields a plain value, so that its futures are gone
            // before the handling below: an idle task holds one or the
            // other, not both. No timer: the idle sweep (`crate::idle`)
            // asks quiet sessions to close through the mailbox.
            // Polled in place: neither the mailbox nor the socket's
            // readiness keeps state in the task while it waits.
            let wake = std::future::poll_fn(|cx| {
                if self.session.poll_woken(cx).is_ready() {
                    return Poll::Ready(Wake::Mailbox);
                }
                self.conn
                    .stream
                    .poll_read_ready(cx)
                    .map(|ready| Wake::Readable(ready.is_ok()))
            })
            .await;
            match wake {
                Wake::Mailbox => {}
                Wake::Readable(false) => return Exit::End(Ending::Quiet),
                // Boxed: handling frames takes most of the loop's future,
                // and an idle session's task would carry it while it waits.
                // One short-lived allocation per read instead.
                Wake::Readable(true) => match Box::pin(self.read_and_handle()).await {
                    Ok(true) => self.session.heard(),
                    Ok(false) => {}
                    Err(ending) => return Exit::End(ending),
                },
            }
        }
    }

    /// Carries out what the mailbox holds: a close request ends the session
    /// (`Err`), commands and the acknowledgement of what became durable are
    /// queued. Returns whether the idle sweep asked the session to park.
    /// Not async: the mail is gone before the loop waits again.
    fn read_mailbox(&mut self) -> Result<bool, Ending> {
        let mail = self.session.take_mail();
        if let Some(request) = mail.close {
            let delay = match request {
                CloseRequest::Superseded | CloseRequest::Idle => 0,
                CloseRequest::Draining { reconnect_after_ms } => reconnect_after_ms,
            };
            if request == CloseRequest::Idle {
                info!(serial = %self.session.serial, peer = %self.conn.peer, "no frame for {:?}: closing idle session", self.driver.config.idle_timeout);
            }
            return Err(Ending::Bye(request.bye_reason(), delay));
        }
        for command in mail.commands {
            self.conn.queue(&ServerFrame::Command(command));
            self.driver.metrics.command("delivered");
        }
        self.queue_ack();
        Ok(mail.park)
    }

    /// Reads what is there and handles every whole frame. `Ok(true)` if
    /// the device was heard from.
    async fn read_and_handle(&mut self) -> Result<bool, Ending> {
        match self.conn.read_available() {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(ReadError::Closed) => return Err(Ending::Quiet),
            Err(ReadError::Io(err)) => {
                debug!(serial = %self.session.serial, peer = %self.conn.peer, error = %err, "connection failed");
                return Err(Ending::Quiet);
            }
            Err(ReadError::Decode(err)) => return Err(self.rules.on_undecodable(&err)),
        }
        self.last_heard_ms = unix_ms();
        loop {
            let frame = match self.conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(ReadError::Decode(err)) => {
                    debug!(serial = %self.session.serial, peer = %self.conn.peer, error = %err, "undecodable frame");
                    return Err(self.rules.on_undecodable(&err));
                }
                Err(_) => return Err(self.rules.end(Ending::Quiet)),
            };
            match &frame {
                DeviceFrame::Bye(bye) => {
                    debug!(serial = %self.session.serial, peer = %self.conn.peer, reason = %bye.reason, "device said BYE");
                }
                DeviceFrame::Ping(_) => self.quiet = true,
                _ => {}
            }
            let store = PipelineStore {
                driver: self.driver,
                session: self.session,
            };
            match self.rules.on_frame(frame, &store) {
                // Blocks are the one frame whose handling may wait (a full
                // buffer is written out): kept apart so that the other
                // steps' handling stays small.
                Step::Upload(UploadFrame::Block(data)) => self.on_block(data).await?,
                step => self.apply(step).await?,
            }
        }
    }

    /// Carries out what the rules decided for one frame.
    async fn apply(&mut self, step: Step) -> Result<(), Ending> {
        match step {
            Step::Nothing => {}
            Step::Send(frame) => {
                if let ServerFrame::Error(error) = &frame {
                    self.driver.metrics.error_sent(error.code);
                }
                self.conn.queue(&frame);
            }
            Step::Duplicate(ack) => {
                self.driver.metrics.events_duplicate.inc();
                self.driver.metrics.events_acked.inc();
                self.conn.queue(&ServerFrame::Ack(ack));
            }
            Step::Store(event) => {
                self.driver.metrics.events_received.inc();
                self.driver.pipeline.submit(PendingEvent {
                    session: self.session.clone(),
                    event,
                    received: Instant::now(),
                    received_ms: self.last_heard_ms,
                });
            }
            Step::End(ending) => return Err(ending),
            Step::Upload(UploadFrame::Begin(begin)) => {
                // Beginning and ending an upload (file system work, the
                // bridge's record) make large futures, once per upload:
                // boxed, so that they do not size every idle session's task.
                let opened = Box::pin(self.upload.begin(self.driver, self.session.serial, begin)).await;
                match opened {
                    Ok(status) => self.conn.queue(&ServerFrame::UploadStatus(status)),
                    Err(err) => return self.upload_failed(&err),
                }
            }
            // `read_and_handle` hands blocks to `on_block` directly.
            Step::Upload(UploadFrame::Block(data)) => Box::pin(self.on_block(data)).await?,
            Step::Upload(UploadFrame::End(end)) => {
                match Box::pin(self.upload.end(self.driver, self.session.serial, end)).await {
                    Ok(Some(ended)) => {
                        if let Some(status) = ended.status {
                            self.conn.queue(&ServerFrame::UploadStatus(status));
                        }
                        match ended.done {
                            Ok(done) => self.conn.queue(&ServerFrame::UploadDone(done)),
                            Err(err) => return self.upload_failed(&err),
                        }
                    }
                    Ok(None) => {}
                    Err(err) => return self.upload_failed(&err),
                }
            }
        }
        Ok(())
    }

    /// CWP/1 §3 Uploads: one `BLOCK`'s data.
    async fn on_block(&mut self, data: bytes::Bytes) -> Result<(), Ending> {
        match self.upload.block(self.driver, data).await {
            Ok(Some(status)) => self.conn.queue(&ServerFrame::UploadStatus(status)),
            Ok(None) => {}
            Err(err) => return self.upload_failed(&err),
        }
        Ok(())
    }

    /// An upload frame failed: fatal errors end the session, the others
    /// are sent and the session goes on.
    fn upload_failed(&mut self, err: &UploadError) -> Result<(), Ending> {
        let error = err.to_frame();
        if error.fatal {
            return Err(self.rules.end(Ending::Fatal(error)));
        }
        debug!(serial = %self.session.serial, peer = %self.conn.peer, code = %error.code, error = %err, "upload refused");
        self.driver.metrics.error_sent(error.code);
        self.conn.queue(&ServerFrame::Error(error));
        Ok(())
    }

    /// Queues an `ACK` for everything durable, if it says anything new.
    fn queue_ack(&mut self) {
        if let Some(ack) = self.rules.ack(self.session.durable_event_id(), false) {
            self.conn.queue(&ServerFrame::Ack(ack));
        }
    }

    /// Before leaving: wait (bounded) until this session's events are
    /// durable, then acknowledge them.
    async fn flush_acks(&mut self) {
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        while self.session.pending_events() > 0 {
            if tokio::time::timeout_at(deadline, self.session.woken()).await.is_err() {
                warn!(
                    serial = %self.session.serial,
                    peer = %self.conn.peer,
                    pending = self.session.pending_events(),
                    "events still not durable at close: they stay unacknowledged and the device will resend them"
                );
                break;
            }
        }
        self.queue_ack();
    }
}

/// The session's events as the rules see them: its registry entry and
/// the driver's pipeline.
struct PipelineStore<'a> {
    driver: &'a Driver,
    session: &'a SessionHandle,
}

impl EventStore for PipelineStore<'_> {
    fn durable_event_id(&self) -> u64 {
        self.session.durable_event_id()
    }

    fn pending_events(&self) -> u32 {
        self.session.pending_events()
    }

    fn admit(&self) -> bool {
        self.driver.pipeline.admit().is_ok()
    }
}

/// Unregisters the session everywhere; commands that did not go out are
/// reported as undelivered.
fn end_session(driver: &Arc<Driver>, session: &Arc<SessionHandle>, last_heard_ms: u64) {
    driver.metrics.sessions.dec();
    driver.registry.remove(session);
    driver.subscriptions.sync(session.serial);
    for command in session.take_commands() {
        crate::commands::report(
            &driver.bridge,
            &driver.metrics,
            session.serial,
            "UNDELIVERED",
            Some(command.command_id.to_string()),
            "the device's session ended before delivery".to_owned(),
            &[],
        );
    }
    let bridge = driver.bridge.clone();
    let serial = session.serial;
    let session_id = session.session_id;
    tokio::spawn(async move {
        if let Err(status) = bridge.close_session(&serial, &session_id, last_heard_ms).await {
            debug!(%serial, code = ?status.code(), "could not mark the session closed");
        }
    });
}

/// A random delay in `[0, period]`, in milliseconds, for `BYE DRAINING`.
pub fn spread_ms(period: Duration) -> u32 {
    let max = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    rand::rng().random_range(0..=max)
}
