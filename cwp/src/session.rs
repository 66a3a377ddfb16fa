//! CWP/1 §3, the established session's rules on the server's side, with no
//! I/O: what each device frame after `WELCOME` calls for.
//!
//! [`ServerSession::on_frame`] takes one decoded frame and returns one
//! [`Step`] for the server to carry out (send a frame, refuse an event,
//! store an event, serve an upload frame, end the session). What the rules
//! need from the server's storage (how far this session's events are
//! durable, whether there is room for one more) comes through
//! [`EventStore`]; room is a value, [`EventStore::Permit`], that the store
//! hands out in [`EventStore::admit`] and [`Step::Store`] carries to
//! whoever stores the event, so that no event is ever admitted without
//! being stored, nor stored without being admitted.
//!
//! Refusals and violations are typed ([`EventRefusal`], [`Violation`]); the
//! server turns them into `ERROR` frames in one place.

use crate::error::{DecodeError, ErrorCode};
use crate::frame::{
    Ack, ByeReason, DeviceFrame, ErrorFrame, Event, FileAccept, FileAck, Frame as _, FrameType, Pong, ServerFrame,
    UploadBegin, UploadEnd,
};

/// What the session's rules ask of event storage at the moment a frame
/// is handled.
pub trait EventStore {
    /// One event's room in the store, from [`EventStore::admit`] until the
    /// event is durable (or dropped, which gives the room back).
    type Permit;
    /// Highest event id of this session that is durable.
    fn durable_event_id(&self) -> u64;
    /// This session's events handed to storage, not yet durable.
    fn pending_events(&self) -> u32;
    /// Room for `event`, if the store has it.
    fn admit(&self, event: &Event) -> Option<Self::Permit>;
}

/// Why an event is refused. Never fatal: CWP/1 §4 has the device keep it
/// and send it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRefusal {
    /// `OUT_OF_ORDER`: ids must increase on a connection.
    OutOfOrder {
        /// The refused id.
        id: u64,
        /// The highest id accepted on this connection.
        last: u64,
    },
    /// `BUSY`: the device has `EVENT_WINDOW` events unacknowledged.
    WindowFull,
    /// `BUSY`: the server holds as many events awaiting storage as it may.
    StoreFull,
    /// `BUSY`: an earlier event was refused and must be sent again first,
    /// or a later cumulative `ACK` would cover it.
    RefusedFirst {
        /// The lowest refused id not sent again yet, if known.
        first: Option<u64>,
    },
}

impl EventRefusal {
    /// The code CWP/1 §4 gives this refusal.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::OutOfOrder { .. } => ErrorCode::OUT_OF_ORDER,
            Self::WindowFull | Self::StoreFull | Self::RefusedFirst { .. } => ErrorCode::BUSY,
        }
    }
}

impl std::fmt::Display for EventRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfOrder { id, last } => write!(f, "event id {id} <= {last}"),
            Self::WindowFull => f.write_str("event window full: wait for ACK"),
            Self::StoreFull => f.write_str("server cannot store now, retry later"),
            Self::RefusedFirst { first: Some(first) } => write!(f, "event {first} was refused: send it again first"),
            Self::RefusedFirst { first: None } => f.write_str("earlier events were refused: send them again first"),
        }
    }
}

/// Why a session ends with a fatal `ERROR`: the device broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The receive buffer holds bytes that are not CWP/1 (CWP/1 §1: the
    /// byte stream can no longer be trusted).
    Undecodable(DecodeError),
    /// `UNEXPECTED`: a frame this state does not allow.
    Unexpected {
        /// The offending frame.
        ref_type: FrameType,
        /// Why, for the device's log.
        reason: &'static str,
    },
}

impl Violation {
    /// The code CWP/1 §4 gives this violation (always fatal).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Undecodable(err) => err.code(),
            Self::Unexpected { .. } => ErrorCode::UNEXPECTED,
        }
    }

    /// The frame the `ERROR` refers to.
    pub fn ref_type(&self) -> FrameType {
        match self {
            Self::Undecodable(err) => err.ref_type(),
            Self::Unexpected { ref_type, .. } => *ref_type,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undecodable(err) => err.fmt(f),
            Self::Unexpected { reason, .. } => f.write_str(reason),
        }
    }
}

/// How an established session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Already closed or nothing more to say.
    Quiet,
    /// Send `BYE` with this reason and delay, after flushing acks.
    Bye(ByeReason, u32),
    /// Send the fatal `ERROR` for this violation and close.
    Fatal(Violation),
    /// The server no longer accepts the key this session was authenticated
    /// with (revoked or changed by its operator): a fatal `UNAUTHORIZED`.
    Unauthorized,
}

/// An upload frame, served by the server's upload store (it needs the disk
/// and the event store).
#[derive(Debug)]
pub enum UploadFrame {
    /// `UPLOAD_BEGIN`
    Begin(UploadBegin),
    /// A `BLOCK`'s data.
    Block(bytes::Bytes),
    /// `UPLOAD_END`
    End(UploadEnd),
}

/// A file transfer frame, served by the server's transfer of the
/// connection ([`crate::transfer`]: whether one is in progress is the
/// server's to know).
#[derive(Debug)]
pub enum FileFrame {
    /// `FILE_ACCEPT`
    Accept(FileAccept),
    /// `FILE_ACK`
    Ack(FileAck),
}

/// What one device frame calls for. `P` is the store's
/// [`EventStore::Permit`].
#[derive(Debug)]
pub enum Step<P> {
    /// Nothing to answer.
    Nothing,
    /// Send this frame; the session goes on.
    Send(ServerFrame),
    /// Refuse the event with this non-fatal `ERROR`; the session goes on.
    Refuse(EventRefusal),
    /// A resend of an event that is already durable (its `ACK` was lost):
    /// send this `ACK` again, store nothing.
    Duplicate(Ack),
    /// The event was admitted: store it, with the room it was given.
    Store(Event, P),
    /// Serve this upload frame.
    Upload(UploadFrame),
    /// Serve this file transfer frame.
    File(FileFrame),
    /// The session ends.
    End(Ending),
}

/// One established session's protocol state, on the server's side.
#[derive(Debug)]
pub struct ServerSession {
    /// Highest event id accepted on this connection (ids must increase).
    last_event_id: u64,
    /// Events refused with `BUSY` and not yet sent again, if any. Until they
    /// are all stored, no later event may be: its cumulative `ACK` would
    /// cover them, and they were never stored.
    /// Boxed: rare, and every idle session holds this struct.
    refused: Option<Box<Refused>>,
    /// Highest id acknowledged to the device so far.
    last_ack: u64,
    /// `EVENT_WINDOW`: events this session may have pending at most.
    window: u16,
    /// Set once a step ended the session: nothing after that is handled.
    ended: bool,
}

impl ServerSession {
    /// A session whose events are durable up to `durable_event_id` (what
    /// the server said in `WELCOME`), with `WELCOME`'s `event_window`.
    pub fn new(durable_event_id: u64, event_window: u16) -> Self {
        Self {
            last_event_id: 0,
            refused: None,
            last_ack: durable_event_id,
            window: event_window,
            ended: false,
        }
    }

    /// Whether a step ended the session.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// The next frame the device sent. After a step that ended the session,
    /// every frame is ignored ([`Step::Nothing`]).
    pub fn on_frame<S: EventStore>(&mut self, frame: DeviceFrame, store: &S) -> Step<S::Permit> {
        if self.ended {
            return Step::Nothing;
        }
        let step = match frame {
            DeviceFrame::Event(event) => self.on_event(event, store),
            DeviceFrame::Ping(ping) => Step::Send(ServerFrame::Pong(Pong { token: ping.token })),
            // Answers to server PINGs: being heard from is all that matters.
            DeviceFrame::Pong(_) => Step::Nothing,
            DeviceFrame::Bye(_) => Step::End(Ending::Bye(ByeReason::NORMAL, 0)),
            DeviceFrame::UploadBegin(begin) => Step::Upload(UploadFrame::Begin(begin)),
            DeviceFrame::Block(block) => Step::Upload(UploadFrame::Block(block.data)),
            DeviceFrame::UploadEnd(end) => Step::Upload(UploadFrame::End(end)),
            DeviceFrame::Hello(_) | DeviceFrame::Auth(_) => unexpected(&frame, "the handshake is already complete"),
            DeviceFrame::FileAccept(accept) => Step::File(FileFrame::Accept(accept)),
            DeviceFrame::FileAck(ack) => Step::File(FileFrame::Ack(ack)),
        };
        if matches!(step, Step::End(_)) {
            self.ended = true;
        }
        step
    }

    /// The receive buffer holds bytes that are not CWP/1: the session ends
    /// with the error that says why.
    pub fn on_undecodable(&mut self, err: DecodeError) -> Ending {
        self.ended = true;
        Ending::Fatal(Violation::Undecodable(err))
    }

    /// Something outside the rules (a failed upload frame, the connection)
    /// ended the session: nothing after it is handled.
    pub fn end(&mut self, ending: Ending) -> Ending {
        self.ended = true;
        ending
    }

    /// The `ACK` to send for everything durable now, if it says anything
    /// new; with `again`, even if it was acknowledged before.
    pub fn ack(&mut self, durable_event_id: u64, again: bool) -> Option<Ack> {
        let durable = durable_event_id;
        if durable > self.last_ack || (again && durable > 0) {
            self.last_ack = durable;
            Some(Ack { event_id: durable })
        } else {
            None
        }
    }

    /// CWP/1 §3 Events.
    fn on_event<S: EventStore>(&mut self, event: Event, store: &S) -> Step<S::Permit> {
        let id = event.event_id;
        if id <= self.last_event_id {
            return Step::Refuse(EventRefusal::OutOfOrder {
                id,
                last: self.last_event_id,
            });
        }
        let durable = store.durable_event_id();
        if id <= durable {
            self.last_event_id = id;
            self.last_ack = durable;
            return Step::Duplicate(Ack { event_id: durable });
        }
        if let Some(refused) = &mut self.refused
            && let Some(refusal) = refused.out_of_turn(id)
        {
            return Step::Refuse(refusal);
        }
        // The window is checked before the store is asked: a permit is
        // room that only a stored event gives back.
        let admitted = if store.pending_events() >= u32::from(self.window) {
            Err(EventRefusal::WindowFull)
        } else {
            store.admit(&event).ok_or(EventRefusal::StoreFull)
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(refusal) => {
                match &mut self.refused {
                    Some(refused) => refused.refuse(id),
                    None => self.refused = Some(Box::new(Refused::new(id))),
                }
                return Step::Refuse(refusal);
            }
        };
        if self.refused.as_mut().is_some_and(|refused| refused.stored(id)) {
            self.refused = None;
        }
        self.last_event_id = id;
        Step::Store(event, permit)
    }
}

/// The `ERROR` frame of an event refusal (non-fatal, about an `EVENT`).
pub fn refusal_frame(refusal: EventRefusal) -> ErrorFrame {
    ErrorFrame::new(refusal.code(), FrameType::EVENT, &refusal.to_string())
}

/// The fatal `ERROR` frame of a violation.
pub fn violation_frame(violation: &Violation) -> ErrorFrame {
    ErrorFrame::new(violation.code(), violation.ref_type(), &violation.to_string())
}

fn unexpected<P>(frame: &DeviceFrame, reason: &'static str) -> Step<P> {
    Step::End(Ending::Fatal(Violation::Unexpected {
        ref_type: frame.frame_type(),
        reason,
    }))
}

/// The events of one connection refused with `BUSY` and not stored since.
///
/// A device sends its events in id order and, after a refusal, sends the
/// refused ones again in the same order, so they are the ids it sent from
/// `first` to `last`. Until `last` is stored, every event above it is
/// refused as well (and extends the range): otherwise the cumulative `ACK`
/// of a later event would tell the device that refused ones are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused {
    /// The lowest refused id not sent again yet; `None` once it was stored
    /// (the next one to come is then any id up to `last`, in order).
    first: Option<u64>,
    /// The highest refused id.
    last: u64,
}

impl Refused {
    fn new(id: u64) -> Self {
        Self {
            first: Some(id),
            last: id,
        }
    }

    /// Why `id` must wait, if it must: it is above the refused range, or
    /// skips its lowest id.
    fn out_of_turn(&mut self, id: u64) -> Option<EventRefusal> {
        if id > self.last {
            self.last = id;
            return Some(EventRefusal::RefusedFirst { first: self.first });
        }
        match self.first {
            Some(first) if id > first => Some(EventRefusal::RefusedFirst { first: Some(first) }),
            _ => None,
        }
    }

    /// `id` was refused (again).
    fn refuse(&mut self, id: u64) {
        self.last = self.last.max(id);
        if self.first.is_none_or(|first| id < first) {
            self.first = Some(id);
        }
    }

    /// `id` is to be stored; whether every refused event now is.
    fn stored(&mut self, id: u64) -> bool {
        if self.first.is_some_and(|first| id >= first) {
            self.first = None;
        }
        id >= self.last
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use crate::{Auth, AuthMac, Block, DeviceBye, FileAck, FileAckStatus, FileId, Ping};
    use bytes::Bytes;

    use super::*;

    /// Event storage as the tests set it.
    #[derive(Default)]
    struct Storage {
        durable: Cell<u64>,
        pending: Cell<u32>,
        full: Cell<bool>,
    }

    impl EventStore for Storage {
        type Permit = ();

        fn durable_event_id(&self) -> u64 {
            self.durable.get()
        }

        fn pending_events(&self) -> u32 {
            self.pending.get()
        }

        fn admit(&self, _event: &Event) -> Option<()> {
            (!self.full.get()).then_some(())
        }
    }

    fn event(id: u64) -> DeviceFrame {
        DeviceFrame::Event(Event {
            event_id: id,
            time_ms: 0,
            kind: 1,
            body: Bytes::new(),
        })
    }

    /// Sends `EVENT(id)`; a stored event counts as pending, as the pipeline
    /// counts it.
    fn send_event(session: &mut ServerSession, storage: &Storage, id: u64) -> Step<()> {
        let step = session.on_frame(event(id), storage);
        if matches!(step, Step::Store(..)) {
            storage.pending.set(storage.pending.get() + 1);
        }
        step
    }

    /// The code of a refused event's `ERROR`, which is never fatal and
    /// always about the `EVENT`.
    fn error_code(step: &Step<()>) -> Option<ErrorCode> {
        match step {
            Step::Refuse(refusal) => {
                let error = refusal_frame(*refusal);
                assert!(!error.fatal);
                assert_eq!(error.ref_type, FrameType::EVENT);
                Some(error.code)
            }
            _ => None,
        }
    }

    #[test]
    fn event_ids_must_increase_within_a_connection() {
        let storage = Storage::default();
        let mut session = ServerSession::new(0, 16);
        assert!(matches!(send_event(&mut session, &storage, 5), Step::Store(..)));
        for id in [5, 4] {
            let step = send_event(&mut session, &storage, id);
            assert_eq!(error_code(&step), Some(ErrorCode::OUT_OF_ORDER), "event {id}");
        }
        assert!(matches!(send_event(&mut session, &storage, 9), Step::Store(..)));
    }

    #[test]
    fn a_resend_of_a_stored_event_is_acknowledged_again_and_not_stored() {
        let storage = Storage::default();
        storage.durable.set(7);
        let mut session = ServerSession::new(7, 16);
        match send_event(&mut session, &storage, 3) {
            Step::Duplicate(ack) => assert_eq!(ack.event_id, 7),
            other => panic!("{other:?}"),
        }
        // Acknowledged already: the loop has nothing new to say.
        assert_eq!(session.ack(7, false), None);
        assert!(matches!(send_event(&mut session, &storage, 8), Step::Store(..)));
    }

    #[test]
    fn a_full_window_refuses_the_event_and_every_later_one_until_it_comes_again() {
        let storage = Storage::default();
        let mut session = ServerSession::new(0, 2);
        assert!(matches!(send_event(&mut session, &storage, 1), Step::Store(..)));
        assert!(matches!(send_event(&mut session, &storage, 2), Step::Store(..)));
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 3)),
            Some(ErrorCode::BUSY)
        );
        // Room again: still, 4 would be acknowledged over 3, never stored.
        storage.pending.set(0);
        storage.durable.set(2);
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 4)),
            Some(ErrorCode::BUSY)
        );
        assert!(matches!(send_event(&mut session, &storage, 3), Step::Store(..)));
        assert!(matches!(send_event(&mut session, &storage, 4), Step::Store(..)));
    }

    #[test]
    fn no_event_is_stored_above_refused_ones_until_they_all_are() {
        let storage = Storage::default();
        let mut session = ServerSession::new(0, 1);
        assert!(matches!(send_event(&mut session, &storage, 6), Step::Store(..)));
        for id in [7, 8] {
            assert_eq!(
                error_code(&send_event(&mut session, &storage, id)),
                Some(ErrorCode::BUSY)
            );
        }
        storage.pending.set(0);
        storage.durable.set(6);
        assert!(matches!(send_event(&mut session, &storage, 7), Step::Store(..)));
        storage.pending.set(0);
        // 8 was refused too: a new 9 now would be acknowledged over it.
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 9)),
            Some(ErrorCode::BUSY)
        );
        assert!(matches!(send_event(&mut session, &storage, 8), Step::Store(..)));
        storage.pending.set(0);
        assert!(matches!(send_event(&mut session, &storage, 9), Step::Store(..)));
        storage.pending.set(0);
        assert!(matches!(send_event(&mut session, &storage, 10), Step::Store(..)));
    }

    #[test]
    fn a_full_pipeline_refuses_with_busy_until_it_has_room() {
        let storage = Storage::default();
        storage.full.set(true);
        let mut session = ServerSession::new(0, 16);
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 1)),
            Some(ErrorCode::BUSY)
        );
        storage.full.set(false);
        assert!(matches!(send_event(&mut session, &storage, 1), Step::Store(..)));
    }

    #[test]
    fn acks_are_cumulative_and_sent_when_they_say_something_new() {
        let mut session = ServerSession::new(4, 16);
        assert_eq!(session.ack(4, false), None, "WELCOME said 4 already");
        assert_eq!(session.ack(6, false), Some(Ack { event_id: 6 }));
        assert_eq!(session.ack(6, false), None);
        assert_eq!(session.ack(6, true), Some(Ack { event_id: 6 }));
        assert_eq!(
            ServerSession::new(0, 16).ack(0, true),
            None,
            "nothing stored, nothing to acknowledge"
        );
    }

    #[test]
    fn ping_is_answered_with_its_token_and_bye_ends_the_session_normally() {
        let storage = Storage::default();
        let mut session = ServerSession::new(0, 16);
        match session.on_frame(DeviceFrame::Ping(Ping { token: 42 }), &storage) {
            Step::Send(ServerFrame::Pong(pong)) => assert_eq!(pong.token, 42),
            other => panic!("{other:?}"),
        }
        let bye = DeviceFrame::Bye(DeviceBye { reason: ByeReason(0) });
        match session.on_frame(bye, &storage) {
            Step::End(Ending::Bye(reason, 0)) => assert_eq!(reason, ByeReason::NORMAL),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_frames_go_to_the_transfer() {
        let file_ack = DeviceFrame::FileAck(FileAck {
            file_id: FileId([0; 16]),
            offset: 0,
            status: FileAckStatus(0),
        });
        let mut session = ServerSession::new(0, 16);
        assert!(matches!(
            session.on_frame(file_ack, &Storage::default()),
            Step::File(FileFrame::Ack(_))
        ));
    }

    #[test]
    fn handshake_frames_end_the_session_with_a_fatal_unexpected() {
        let auth = DeviceFrame::Auth(Auth { mac: AuthMac([0; 32]) });
        let mut session = ServerSession::new(0, 16);
        match session.on_frame(auth, &Storage::default()) {
            Step::End(Ending::Fatal(violation)) => {
                let error = violation_frame(&violation);
                assert_eq!(
                    (error.code, error.fatal, error.ref_type),
                    (ErrorCode::UNEXPECTED, true, FrameType::AUTH)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_is_handled_after_the_session_ended() {
        let storage = Storage::default();
        let mut session = ServerSession::new(0, 16);
        let ending = session.on_undecodable(DecodeError::BadVersion { found: 9 });
        assert!(matches!(&ending, Ending::Fatal(violation) if violation_frame(violation).fatal));
        for frame in [
            event(1),
            DeviceFrame::Ping(Ping { token: 1 }),
            DeviceFrame::Block(Block { data: Bytes::new() }),
        ] {
            assert!(matches!(session.on_frame(frame, &storage), Step::Nothing));
        }
    }
}
