//! The established session loop: one device's session from `WELCOME` to
//! its end (or until it parks), carrying out what the rules
//! ([`cwp::ServerSession`], free of I/O) decide for each frame.
//!
//! Every idle device's task is this loop's future, so it is kept small:
//! the mailbox and the socket are polled in place, handling frames is
//! boxed while it runs, and the goodbye is boxed too (sizes measured with
//! `size_of_val`, docs/BENCHMARKS.md "Idle devices").

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use cwp::session::{Ending, FileFrame, Step, UploadFrame};
use cwp::{EventStore, ServerFrame, ServerSession};
use drover_proto::bridge::{FileTransferEvent, FileTransferVerdict};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::context::{self, Sessions};
use super::park::{ParkedSession, SessionState};
use crate::admission::{Admission, EventPermit, PendingEvent};
use crate::connection::{Connection, ReadError};
use crate::files::{FILL_BYTES, FileMail, Transfer, UNSENT_LOWAT};
use crate::refusal::Refusal;
use crate::registry::{CloseRequest, SessionHandle};
use crate::upload::{UploadError, Uploads};

/// How long a closing session waits for its events to become durable
/// before it acknowledges what it can and leaves.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A freshly authenticated session: it parks right away (nothing is in
/// flight yet, and a session gets a task only when its device has
/// something to say), or, if the device already sent more, parking is off
/// or the driver is draining (the session then leaves at once), runs in a
/// task of its own on the sessions' runtime, tracked by
/// [`Sessions::connections`] and holding `permit`.
pub fn start(
    sessions: &Arc<Sessions>,
    connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
) {
    let state = SessionState {
        rules: ServerSession::new(session.durable_event_id(), sessions.settings.event_window),
        last_heard_ms: drover_service::clock::unix_ms(),
    };
    if sessions.settings.park_after.is_some() && connection.is_idle() && !sessions.draining.is_signaled() {
        park_or_end(sessions, connection, session, permit, state);
        return;
    }
    // Registered with the sessions' runtime before its task is spawned, so
    // that the task holds one connection, not a detached one and the
    // attached one.
    match connection.register_with(&sessions.runtime) {
        Ok(connection) => {
            let task = run(sessions.clone(), connection, session, permit, Start::Fresh(state));
            sessions.connections.spawn_on(task, &sessions.runtime);
        }
        Err(err) => {
            warn!(serial = %session.serial, error = %err, "cannot hand the connection to the sessions' runtime");
            context::end(sessions, &session, state.last_heard_ms);
            sessions.metrics.connections.dec();
        }
    }
}

/// Hands a quiet session (nothing in flight, nothing buffered) to the
/// park. If it cannot be parked, the session ends and its connection
/// closes.
pub fn park_or_end(
    sessions: &Sessions,
    connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
    state: SessionState,
) {
    let last_heard_ms = state.last_heard_ms;
    let (stream, peer, codec) = match connection.into_parts() {
        Ok(parts) => parts,
        Err(err) => {
            warn!(serial = %session.serial, error = %err, "cannot park the session");
            context::end(sessions, &session, last_heard_ms);
            sessions.metrics.connections.dec();
            return;
        }
    };
    let parked = ParkedSession::new(stream, peer, codec, state, session, permit);
    if let Err(session) = sessions.park.park(parked) {
        debug!(serial = %session.serial, "the park has stopped: closing the session");
        context::end(sessions, &session, last_heard_ms);
        sessions.metrics.connections.dec();
    }
}

/// A parked session needed again (its device spoke, or its mailbox was
/// woken): its task is spawned on the sessions' runtime (the caller runs
/// on it), or, if its socket cannot be registered again, it ends.
pub fn resume(sessions: &Arc<Sessions>, parked: ParkedSession) {
    let (stream, peer, codec, state, session, permit) = parked.into_parts();
    match Connection::resume(stream, peer, codec) {
        Ok(connection) => {
            let task = run(sessions.clone(), connection, session, permit, Start::Fresh(state));
            sessions.connections.spawn(task);
        }
        Err(err) => {
            warn!(serial = %session.serial, %peer, error = %err, "cannot resume a parked session");
            context::end(sessions, &session, state.last_heard_ms);
            sessions.metrics.connections.dec();
        }
    }
}

/// A session moving between the sessions' runtime and the transfers'
/// thread (its task ends on one and a new one starts on the other): while
/// it sends a file it runs on the transfers' thread, so that sealing
/// chunks never delays another device's `ACK` on the sessions' runtime and
/// runs at the thread's lower CPU priority (`DRIVER_TRANSFER_NICE`).
/// If its socket cannot be registered there, the session ends as a cut
/// connection does.
fn move_session(
    sessions: &Arc<Sessions>,
    connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
    mut moving: Box<Moving>,
) {
    let runtime = if moving.to_transfers {
        &sessions.transfers
    } else {
        &sessions.runtime
    };
    match connection.register_with(runtime) {
        Ok(connection) => {
            if moving.to_transfers {
                sessions.metrics.file_transfers.inc();
            }
            let task = run(sessions.clone(), connection, session, permit, Start::Moved(moving));
            sessions.connections.spawn_on(task, runtime);
        }
        Err(err) => {
            warn!(serial = %session.serial, error = %err, "cannot move the session between runtimes: closing it");
            moving.upload.close();
            if let Some(transfer) = moving.transfer.take()
                && transfer.is_live()
            {
                sessions.files.report(
                    &session,
                    &transfer.rollout,
                    FileTransferEvent::Released,
                    transfer.rules.acked(),
                );
            }
            context::end(sessions, &session, moving.state.last_heard_ms);
            sessions.metrics.connections.dec();
        }
    }
}

/// Where a session's task starts.
pub enum Start {
    /// A session just established, or resumed from the park: nothing in
    /// flight but what [`SessionState`] holds.
    Fresh(SessionState),
    /// A session moving between runtimes ([`move_session`]), with all it
    /// holds.
    Moved(Box<Moving>),
}

/// All a running session holds, on its way to another runtime.
pub struct Moving {
    state: SessionState,
    upload: Uploads,
    transfer: Option<Box<Transfer>>,
    quiet: bool,
    /// Where it goes: the transfers' thread, or back.
    to_transfers: bool,
}

/// An established session, to its end, on the sessions' runtime (or on
/// the transfers' thread while it sends a file).
///
/// A block, not an `async fn`: an `async fn` moves its arguments into
/// locals of its own and its future keeps both copies; the block uses the
/// captured ones in place. Measured with `size_of_val`: 864 bytes as an
/// `async fn`, 528 as a block, in every running session's task (504 with
/// rustc 1.95, 512 with the file transfer's pointer; the test below keeps
/// it there).
///
/// Ends when the session ends, or when it parks: its state then goes to
/// the park ([`super::park`]), which resumes it in a new task.
#[allow(clippy::manual_async_fn, reason = "the async fn's future is 336 bytes larger")]
pub fn run(
    sessions: Arc<Sessions>,
    mut connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
    start: Start,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut loop_state = Established::new(&sessions, &session, &mut connection, start);
        let leaving = loop_state.run().await;
        if loop_state.on_transfers {
            sessions.metrics.file_transfers.dec();
        }
        let last_heard_ms = match leaving {
            Leaving::Parks => {
                let state = loop_state.into_state();
                park_or_end(&sessions, connection, session, permit, state);
                return;
            }
            Leaving::Moves => {
                let moving = loop_state.into_moving();
                move_session(&sessions, connection, session, permit, moving);
                return;
            }
            Leaving::Ended => loop_state.last_heard_ms,
        };
        context::end(&sessions, &session, last_heard_ms);
        // The connection's place under DRIVER_MAX_CONNECTIONS.
        drop(permit);
        sessions.metrics.connections.dec();
    }
}

/// How the session loop ends.
enum Exit {
    /// The session ends this way.
    End(Ending),
    /// The session parks ([`super::park`]).
    Park,
    /// The session moves to the other runtime ([`move_session`]).
    Move,
}

/// How a session's task ends.
enum Leaving {
    /// The session ended (its goodbye is sent).
    Ended,
    /// It parks.
    Parks,
    /// It goes on in a task on the other runtime.
    Moves,
}

/// What woke an idle session loop.
enum Wake {
    /// Its mailbox: commands, a close request (the idle sweep's too), acks.
    Mailbox,
    /// Its socket (`false`: the socket failed).
    Readable(bool),
    /// Its socket takes more bytes (a transfer has chunks to send).
    Writable,
}

/// The established session's state.
struct Established<'a> {
    sessions: &'a Arc<Sessions>,
    session: &'a Arc<SessionHandle>,
    /// Borrowed: the task keeps one copy of the connection, not two.
    conn: &'a mut Connection,
    /// CWP/1 §3: what each frame calls for.
    rules: ServerSession,
    /// When the device was last heard from, Unix ms (for the registry).
    last_heard_ms: u64,
    /// CWP/1 §3 Uploads: the one upload this connection may have open.
    upload: Uploads,
    /// CWP/1 §3 Files: the one transfer of this connection, if any.
    transfer: Option<Box<Transfer>>,
    /// The device has nothing to send for now: it sent a heartbeat
    /// (`PING`). The session then parks as soon as nothing is in flight,
    /// without waiting for the idle sweep.
    quiet: bool,
    /// Whether the task runs on the transfers' thread.
    on_transfers: bool,
}

impl<'a> Established<'a> {
    fn new(
        sessions: &'a Arc<Sessions>,
        session: &'a Arc<SessionHandle>,
        conn: &'a mut Connection,
        start: Start,
    ) -> Self {
        let (state, upload, transfer, quiet, on_transfers) = match start {
            Start::Fresh(state) => (state, Uploads::default(), None, false, false),
            Start::Moved(moving) => {
                let Moving {
                    state,
                    upload,
                    transfer,
                    quiet,
                    to_transfers,
                } = *moving;
                (state, upload, transfer, quiet, to_transfers)
            }
        };
        Self {
            sessions,
            session,
            conn,
            rules: state.rules,
            last_heard_ms: state.last_heard_ms,
            upload,
            transfer,
            quiet,
            on_transfers,
        }
    }

    /// What a parked session keeps.
    fn into_state(self) -> SessionState {
        SessionState {
            rules: self.rules,
            last_heard_ms: self.last_heard_ms,
        }
    }

    /// What a moving session keeps: all of it.
    fn into_moving(self) -> Box<Moving> {
        let to_transfers = !self.on_transfers;
        Box::new(Moving {
            upload: self.upload,
            transfer: self.transfer,
            quiet: self.quiet,
            to_transfers,
            state: SessionState {
                rules: self.rules,
                last_heard_ms: self.last_heard_ms,
            },
        })
    }

    /// Serves the session until it ends, parks or moves.
    async fn run(&mut self) -> Leaving {
        let ending = match self.serve().await {
            Exit::Park => return Leaving::Parks,
            Exit::Move => return Leaving::Moves,
            Exit::End(ending) => ending,
        };
        // Once per session, and large (flushing an upload, waiting for
        // acks, sending the goodbye): boxed, so that idle sessions' tasks
        // are only as large as the loop.
        Box::pin(self.finish(ending)).await;
        Leaving::Ended
    }

    /// Whether the session sends a file (or awaits the outcome of one it
    /// sent): it then belongs on the transfers' thread.
    fn is_transferring(&self) -> bool {
        self.transfer
            .as_ref()
            .is_some_and(|transfer| transfer.is_live() || transfer.finishing)
    }

    /// Whether the session can park: nothing in flight either way, so
    /// that its state is all in [`SessionState`] and the codec.
    fn can_park(&self) -> bool {
        self.session.pending_events() == 0
            && !self.upload.is_open()
            && !self.is_transferring()
            && self.conn.is_idle()
            && !self.rules.has_ended()
    }

    /// After the loop: say goodbye as the ending requires.
    async fn finish(&mut self, ending: Ending) {
        // A graceful goodbye makes the upload's buffered bytes durable and
        // says so first (a drain must not cost devices data they already
        // sent). Otherwise unflushed bytes were never reported and the
        // device sends them again. The upload's lock goes before the goodbye.
        if matches!(ending, Ending::Bye(..))
            && let Some(status) = self.upload.flush_before_close(&self.sessions.uploads).await
        {
            self.conn.queue(&ServerFrame::UploadStatus(status));
        }
        self.upload.close();
        // A transfer cut short waits for the device's next session, with
        // the offset the device acknowledged.
        if let Some(transfer) = self.transfer.take()
            && transfer.is_live()
        {
            self.sessions.files.report(
                self.session,
                &transfer.rollout,
                FileTransferEvent::Released,
                transfer.rules.acked(),
            );
        }
        match ending {
            Ending::Quiet => {}
            Ending::Bye(reason, reconnect_after_ms) => {
                self.flush_acks().await;
                self.conn.send_bye(reason, reconnect_after_ms).await;
            }
            Ending::Unauthorized => {
                self.conn
                    .send_refusal(&self.sessions.metrics, &Refusal::KeyRevoked)
                    .await;
            }
            Ending::Fatal(violation) => {
                debug!(serial = %self.session.serial, peer = %self.conn.peer(), %violation, "session ends on a protocol violation");
                self.conn
                    .send_refusal(&self.sessions.metrics, &Refusal::Violation(violation))
                    .await;
            }
        }
    }

    /// The session loop: mailbox, then wait for the device or the
    /// mailbox.
    async fn serve(&mut self) -> Exit {
        if self.sessions.draining.is_signaled() {
            self.session.request_close(self.sessions.drain_request());
        }
        loop {
            let asked_to_park = match self.read_mailbox() {
                Ok(asked_to_park) => asked_to_park,
                Err(ending) => return Exit::End(ending),
            };
            if self.is_transferring() != self.on_transfers {
                return Exit::Move;
            }
            if let Err(ending) = self.send_chunks() {
                return Exit::End(ending);
            }
            if self.conn.flush().await.is_err() {
                return Exit::End(Ending::Quiet);
            }
            self.conn
                .release_idle_buffers(self.upload.is_open(), self.is_transferring());
            let quiet = std::mem::take(&mut self.quiet) && self.sessions.settings.park_after.is_some();
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
            // other, not both. No timer: the idle sweep (`super::idle`)
            // asks quiet sessions to close through the mailbox.
            // Polled in place: neither the mailbox nor the socket's
            // readiness keeps state in the task while it waits.
            let sending = self.transfer.as_ref().is_some_and(|transfer| transfer.wants_to_send());
            let wake = std::future::poll_fn(|cx| {
                if self.session.poll_woken(cx).is_ready() {
                    return Poll::Ready(Wake::Mailbox);
                }
                if let Poll::Ready(ready) = self.conn.poll_read_ready(cx) {
                    return Poll::Ready(Wake::Readable(ready.is_ok()));
                }
                if sending && self.conn.poll_write_ready(cx).is_ready() {
                    return Poll::Ready(Wake::Writable);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Mailbox | Wake::Writable => {}
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
            if request == CloseRequest::Idle {
                info!(serial = %self.session.serial, peer = %self.conn.peer(), "no frame for {:?}: closing idle session", self.sessions.settings.idle_timeout);
            }
            if request == CloseRequest::KeyRevoked {
                info!(serial = %self.session.serial, peer = %self.conn.peer(), "the device's key was revoked or changed: closing its session");
            }
            return Err(request.ending());
        }
        for command in mail.commands {
            self.conn.queue(&ServerFrame::Command(command));
            self.sessions.metrics.command("delivered");
        }
        self.queue_ack();
        if mail.files {
            let files = self.sessions.files.take_mail(&self.session.session_id);
            self.on_file_mail(files);
        }
        Ok(mail.park)
    }

    /// CWP/1 §3 Files: what the bridge said about offers and transfers.
    fn on_file_mail(&mut self, mail: FileMail) {
        for answer in mail.answers {
            let rollout = answer.rollout;
            let Some(transfer) = self.transfer.as_mut().filter(|transfer| transfer.rollout == rollout) else {
                continue;
            };
            match answer.verdict {
                FileTransferVerdict::Stop => {
                    debug!(serial = %self.session.serial, rollout, "file transfer stopped by its rollout");
                    transfer.rules.stop();
                    transfer.finishing = false;
                }
                FileTransferVerdict::Reoffer => {
                    let offer = transfer.reoffer();
                    self.conn.queue(&offer);
                }
                FileTransferVerdict::Finished => {
                    self.transfer = None;
                    self.sessions.files.fetch(self.session.serial);
                }
                FileTransferVerdict::Continue | FileTransferVerdict::Unspecified => {
                    if answer.event == FileTransferEvent::Progress
                        && let Some((event, offset)) = transfer.progress_recorded(answer.offset)
                    {
                        self.sessions.files.report(self.session, &rollout, event, offset);
                    }
                }
            }
        }
        if let Some(grant) = mail.offer {
            if self.is_transferring() {
                // One transfer per connection: the same one again changes
                // nothing; another waits for the device's next session.
                if self
                    .transfer
                    .as_ref()
                    .is_some_and(|transfer| transfer.rollout != grant.rollout_id)
                {
                    self.sessions.files.report(
                        self.session,
                        &grant.rollout_id,
                        FileTransferEvent::Released,
                        grant.offset,
                    );
                }
            } else {
                let throttle = self.sessions.files.throttle(&grant);
                match Transfer::start(&self.sessions.files.store, &grant, throttle) {
                    Ok((transfer, offer)) => {
                        if let Err(err) = self.conn.limit_unsent(UNSENT_LOWAT) {
                            debug!(serial = %self.session.serial, error = %err, "cannot limit the socket's unsent bytes");
                        }
                        self.conn.queue(&offer);
                        self.transfer = Some(transfer);
                    }
                    Err(err) => {
                        warn!(serial = %self.session.serial, rollout = grant.rollout_id, error = %err, "cannot offer a rollout's file: is FILES_DIR shared with the operators?");
                        self.sessions.files.report(
                            self.session,
                            &grant.rollout_id,
                            FileTransferEvent::Released,
                            grant.offset,
                        );
                    }
                }
            }
        }
        if mail.wake {
            match self.transfer.as_mut() {
                // Report now: a pause or a cancel answers STOP.
                Some(transfer) if transfer.is_live() => {
                    if let Some((event, offset)) = transfer.progress_report(true) {
                        self.sessions
                            .files
                            .report(self.session, &transfer.rollout, event, offset);
                    }
                }
                Some(transfer) if transfer.finishing => {}
                _ => self.sessions.files.fetch(self.session.serial),
            }
        }
    }

    /// Queues the transfer's next chunks, if the window has room, when
    /// everything queued before went out (so that whatever else is queued
    /// waits behind [`FILL_BYTES`] of chunks at most).
    fn send_chunks(&mut self) -> Result<(), Ending> {
        if !self.conn.is_sent() {
            return Ok(());
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return Ok(());
        };
        let max_chunk = (self.sessions.settings.max_payload as usize).saturating_sub(cwp::TAG_LEN);
        let mut queued = 0;
        while queued < FILL_BYTES {
            // The rollout's limit on this driver: wait for it, woken.
            if let Some(wake) = transfer.held_back(max_chunk) {
                if let Some(delay) = wake {
                    self.sessions.files.wake_after(self.session, delay);
                }
                break;
            }
            let conn = &mut *self.conn;
            match transfer.queue_next_chunk(max_chunk, |len, fill| conn.queue_file_chunk_with(len, fill)) {
                None => break,
                Some(Ok(len)) => queued += len,
                Some(Err(err)) => {
                    // The store failed under us: the device keeps what it
                    // has and resumes in a later session.
                    warn!(serial = %self.session.serial, rollout = transfer.rollout, error = %err, "cannot read a rollout's file; the transfer stops");
                    let offset = transfer.rules.acked();
                    transfer.rules.stop();
                    let rollout = transfer.rollout.clone();
                    self.sessions
                        .files
                        .report(self.session, &rollout, FileTransferEvent::Released, offset);
                    self.transfer = None;
                    break;
                }
            }
        }
        self.sessions.metrics.file_bytes_sent.inc_by(queued as u64);
        Ok(())
    }

    /// CWP/1 §3 Files: `FILE_ACCEPT` or `FILE_ACK`.
    fn on_file_frame(&mut self, frame: FileFrame) -> Result<(), Ending> {
        let Some(transfer) = self.transfer.as_mut() else {
            let frame_type = match frame {
                FileFrame::Accept(_) => cwp::FrameType::FILE_ACCEPT,
                FileFrame::Ack(_) => cwp::FrameType::FILE_ACK,
            };
            return Err(self.rules.end(Ending::Fatal(cwp::transfer::no_transfer(frame_type))));
        };
        match transfer.on_frame(frame) {
            Ok(Some((event, offset))) => {
                let rollout = transfer.rollout.clone();
                self.sessions.files.report(self.session, &rollout, event, offset);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(violation) => Err(self.rules.end(Ending::Fatal(violation))),
        }
    }

    /// Reads what is there and handles every whole frame. `Ok(true)` if
    /// the device was heard from.
    async fn read_and_handle(&mut self) -> Result<bool, Ending> {
        match self.conn.read_available() {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(ReadError::Closed) => return Err(Ending::Quiet),
            Err(ReadError::Io(err)) => {
                debug!(serial = %self.session.serial, peer = %self.conn.peer(), error = %err, "connection failed");
                return Err(Ending::Quiet);
            }
            Err(ReadError::Decode(err)) => return Err(self.rules.on_undecodable(err)),
        }
        self.last_heard_ms = drover_service::clock::unix_ms();
        loop {
            let frame = match self.conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(ReadError::Decode(err)) => {
                    debug!(serial = %self.session.serial, peer = %self.conn.peer(), error = %err, "undecodable frame");
                    return Err(self.rules.on_undecodable(err));
                }
                Err(_) => return Err(self.rules.end(Ending::Quiet)),
            };
            match &frame {
                cwp::DeviceFrame::Bye(bye) => {
                    debug!(serial = %self.session.serial, peer = %self.conn.peer(), reason = %bye.reason, "device said BYE");
                }
                cwp::DeviceFrame::Ping(_) => self.quiet = true,
                _ => {}
            }
            let store = SessionEvents {
                admission: &self.sessions.admission,
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
    async fn apply(&mut self, step: Step<EventPermit>) -> Result<(), Ending> {
        match step {
            Step::Nothing => {}
            Step::Send(frame) => self.conn.queue(&frame),
            Step::Refuse(refusal) => self
                .conn
                .queue_refusal(&self.sessions.metrics, &Refusal::Event(refusal)),
            Step::Duplicate(ack) => {
                self.sessions.metrics.events_duplicate.inc();
                self.sessions.metrics.events_acked.inc();
                self.conn.queue(&ServerFrame::Ack(ack));
            }
            Step::Store(event, permit) => {
                self.sessions.metrics.events_received.inc();
                permit.submit(PendingEvent {
                    session: self.session.clone(),
                    event,
                    received: Instant::now(),
                    received_ms: self.last_heard_ms,
                });
            }
            Step::End(ending) => return Err(ending),
            Step::File(frame) => self.on_file_frame(frame)?,
            Step::Upload(UploadFrame::Begin(begin)) => {
                // Beginning and ending an upload (file system work, the
                // bridge's record) make large futures, once per upload:
                // boxed, so that they do not size every idle session's task.
                let opened = Box::pin(self.upload.begin(&self.sessions.uploads, self.session.serial, begin)).await;
                match opened {
                    Ok(status) => self.conn.queue(&ServerFrame::UploadStatus(status)),
                    Err(err) => return self.upload_failed(err),
                }
            }
            // `read_and_handle` hands blocks to `on_block` directly.
            Step::Upload(UploadFrame::Block(data)) => Box::pin(self.on_block(data)).await?,
            Step::Upload(UploadFrame::End(end)) => {
                match Box::pin(self.upload.end(&self.sessions.uploads, self.session.serial, end)).await {
                    Ok(Some(ended)) => {
                        if let Some(status) = ended.status {
                            self.conn.queue(&ServerFrame::UploadStatus(status));
                        }
                        match ended.done {
                            Ok(done) => self.conn.queue(&ServerFrame::UploadDone(done)),
                            Err(err) => return self.upload_failed(err),
                        }
                    }
                    Ok(None) => {}
                    Err(err) => return self.upload_failed(err),
                }
            }
        }
        Ok(())
    }

    /// CWP/1 §3 Uploads: one `BLOCK`'s data.
    async fn on_block(&mut self, data: bytes::Bytes) -> Result<(), Ending> {
        match self.upload.block(&self.sessions.uploads, data).await {
            Ok(Some(status)) => self.conn.queue(&ServerFrame::UploadStatus(status)),
            Ok(None) => {}
            Err(err) => return self.upload_failed(err),
        }
        Ok(())
    }

    /// An upload frame failed: a violation ends the session, the other
    /// failures are answered and the session goes on.
    fn upload_failed(&mut self, err: UploadError) -> Result<(), Ending> {
        let err = match err.into_violation() {
            Ok(violation) => return Err(self.rules.end(Ending::Fatal(violation))),
            Err(err) => err,
        };
        debug!(serial = %self.session.serial, peer = %self.conn.peer(), error = %err, "upload refused");
        self.conn.queue_refusal(&self.sessions.metrics, &Refusal::Upload(err));
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
                    peer = %self.conn.peer(),
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
/// the driver's admission.
struct SessionEvents<'a> {
    admission: &'a Admission,
    session: &'a SessionHandle,
}

impl EventStore for SessionEvents<'_> {
    type Permit = EventPermit;

    fn durable_event_id(&self) -> u64 {
        self.session.durable_event_id()
    }

    fn pending_events(&self) -> u32 {
        self.session.pending_events()
    }

    fn admit(&self, event: &cwp::Event) -> Option<EventPermit> {
        self.admission.admit(event.body.len()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every running session's task is this future: 504 bytes with rustc
    /// 1.95, before the driver was split by role and after
    /// (docs/BENCHMARKS.md, "Idle devices"); 512 since a session holds its
    /// file transfer (one pointer, CWP/1 §3 Files). A field held across
    /// the loop's await grows every running device (a parked one holds
    /// none of it).
    #[test]
    fn a_running_session_fits_its_memory_budget() {
        let size = future_size(run);
        assert!(size <= 512, "a running session's task future is {size} bytes");
    }
}
