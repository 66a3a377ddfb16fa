//! The established session's rules, CWP/1 §3, with no I/O: what each
//! device frame after `WELCOME` calls for.
//!
//! [`Session::on_frame`] takes one decoded frame and returns one [`Step`]
//! for the connection to carry out (send a frame, hand an event to the
//! pipeline, serve an upload frame, end the session). What the rules need
//! from the rest of the driver (how far this session's events are durable,
//! whether the pipeline has room) comes through [`EventStore`].
//!
//! This module depends on `cwp` and `std` only, so that the fuzz workspace
//! (`fuzz/`, target `session`) compiles this very file without the driver's
//! runtime dependencies and drives it with arbitrary frame sequences.

use cwp::{
    Ack, ByeReason, DecodeError, DeviceFrame, ErrorCode, ErrorFrame, Event, Frame as _, FrameType, Pong, ServerFrame,
    UploadBegin, UploadEnd,
};

/// What the session's rules ask of event storage at the moment a frame
/// is handled.
pub trait EventStore {
    /// Highest event id of this session that is durable.
    fn durable_event_id(&self) -> u64;
    /// This session's events handed to the pipeline, not yet durable.
    fn pending_events(&self) -> u32;
    /// Reserves the pipeline's room for one event; `false` when it is
    /// full. Every `true` is followed by a [`Step::Store`] of the event.
    fn admit(&self) -> bool;
}

/// How an established session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Already closed or nothing more to say.
    Quiet,
    /// Send `BYE` with this reason and delay, after flushing acks.
    Bye(ByeReason, u32),
    /// Send this fatal `ERROR` and close.
    Fatal(ErrorFrame),
}

/// An upload frame, served by [`crate::upload`] (it needs the disk and the
/// bridge).
#[derive(Debug)]
pub enum UploadFrame {
    /// `UPLOAD_BEGIN`
    Begin(UploadBegin),
    /// A `BLOCK`'s data.
    Block(bytes::Bytes),
    /// `UPLOAD_END`
    End(UploadEnd),
}

/// What one device frame calls for.
#[derive(Debug)]
pub enum Step {
    /// Nothing to answer.
    Nothing,
    /// Send this frame; the session goes on. Errors sent this way are
    /// never fatal.
    Send(ServerFrame),
    /// A resend of an event that is already durable (its `ACK` was lost):
    /// send this `ACK` again, store nothing.
    Duplicate(Ack),
    /// The event was admitted: hand it to the pipeline.
    Store(Event),
    /// Serve this upload frame.
    Upload(UploadFrame),
    /// The session ends.
    End(Ending),
}

/// One established session's protocol state.
#[derive(Debug)]
pub struct Session {
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

impl Session {
    /// A session whose events are durable up to `durable_event_id` (what
    /// the bridge said at registration), with `WELCOME`'s `event_window`.
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
    pub fn on_frame(&mut self, frame: DeviceFrame, store: &impl EventStore) -> Step {
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
            DeviceFrame::FileAccept(_) | DeviceFrame::FileAck(_) => {
                unexpected(&frame, "no file transfer is in progress")
            }
        };
        if matches!(step, Step::End(_)) {
            self.ended = true;
        }
        step
    }

    /// The receive buffer holds bytes that are not CWP/1: the session ends
    /// with the error that says why.
    pub fn on_undecodable(&mut self, err: &DecodeError) -> Ending {
        self.ended = true;
        Ending::Fatal(decode_error_frame(err))
    }

    /// An upload frame failed fatally, or the connection did: the session
    /// ends, nothing after it is handled.
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
    fn on_event(&mut self, event: Event, store: &impl EventStore) -> Step {
        let id = event.event_id;
        if id <= self.last_event_id {
            let message = format!("event id {id} <= {}", self.last_event_id);
            return refuse(ErrorCode::OUT_OF_ORDER, &message);
        }
        let durable = store.durable_event_id();
        if id <= durable {
            self.last_event_id = id;
            self.last_ack = durable;
            return Step::Duplicate(Ack { event_id: durable });
        }
        if let Some(refused) = &mut self.refused
            && let Some(message) = refused.out_of_turn(id)
        {
            return refuse(ErrorCode::BUSY, &message);
        }
        // The window is checked before the pipeline is asked: `admit`
        // reserves room that only a stored event gives back.
        let refusal = if store.pending_events() >= u32::from(self.window) {
            Some("event window full: wait for ACK")
        } else if !store.admit() {
            Some("server cannot store now, retry later")
        } else {
            None
        };
        if let Some(message) = refusal {
            match &mut self.refused {
                Some(refused) => refused.refuse(id),
                None => self.refused = Some(Box::new(Refused::new(id))),
            }
            return refuse(ErrorCode::BUSY, message);
        }
        if self.refused.as_mut().is_some_and(|refused| refused.stored(id)) {
            self.refused = None;
        }
        self.last_event_id = id;
        Step::Store(event)
    }
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
    fn out_of_turn(&mut self, id: u64) -> Option<String> {
        if id > self.last {
            self.last = id;
            let first = self
                .first
                .map_or_else(|| "earlier events".to_owned(), |first| format!("event {first}"));
            return Some(format!("{first} was refused: send it again first"));
        }
        match self.first {
            Some(first) if id > first => Some(format!("event {first} was refused: send it again first")),
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

/// The fatal `ERROR` for bytes that are not CWP/1.
pub fn decode_error_frame(err: &DecodeError) -> ErrorFrame {
    ErrorFrame::new(err.code(), err.ref_type(), &err.to_string())
}

fn refuse(code: ErrorCode, message: &str) -> Step {
    Step::Send(ServerFrame::Error(ErrorFrame::new(code, FrameType::EVENT, message)))
}

fn unexpected(frame: &DeviceFrame, message: &str) -> Step {
    Step::End(Ending::Fatal(ErrorFrame::new(
        ErrorCode::UNEXPECTED,
        frame.frame_type(),
        message,
    )))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use bytes::Bytes;
    use cwp::{Auth, AuthMac, Block, DeviceBye, FileAck, FileAckStatus, FileId, Ping};

    use super::*;

    /// Event storage as the tests set it.
    #[derive(Default)]
    struct Storage {
        durable: Cell<u64>,
        pending: Cell<u32>,
        full: Cell<bool>,
    }

    impl EventStore for Storage {
        fn durable_event_id(&self) -> u64 {
            self.durable.get()
        }

        fn pending_events(&self) -> u32 {
            self.pending.get()
        }

        fn admit(&self) -> bool {
            !self.full.get()
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
    fn send_event(session: &mut Session, storage: &Storage, id: u64) -> Step {
        let step = session.on_frame(event(id), storage);
        if matches!(step, Step::Store(_)) {
            storage.pending.set(storage.pending.get() + 1);
        }
        step
    }

    fn error_code(step: &Step) -> Option<ErrorCode> {
        match step {
            Step::Send(ServerFrame::Error(error)) => {
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
        let mut session = Session::new(0, 16);
        assert!(matches!(send_event(&mut session, &storage, 5), Step::Store(_)));
        for id in [5, 4] {
            let step = send_event(&mut session, &storage, id);
            assert_eq!(error_code(&step), Some(ErrorCode::OUT_OF_ORDER), "event {id}");
        }
        assert!(matches!(send_event(&mut session, &storage, 9), Step::Store(_)));
    }

    #[test]
    fn a_resend_of_a_stored_event_is_acknowledged_again_and_not_stored() {
        let storage = Storage::default();
        storage.durable.set(7);
        let mut session = Session::new(7, 16);
        match send_event(&mut session, &storage, 3) {
            Step::Duplicate(ack) => assert_eq!(ack.event_id, 7),
            other => panic!("{other:?}"),
        }
        // Acknowledged already: the loop has nothing new to say.
        assert_eq!(session.ack(7, false), None);
        assert!(matches!(send_event(&mut session, &storage, 8), Step::Store(_)));
    }

    #[test]
    fn a_full_window_refuses_the_event_and_every_later_one_until_it_comes_again() {
        let storage = Storage::default();
        let mut session = Session::new(0, 2);
        assert!(matches!(send_event(&mut session, &storage, 1), Step::Store(_)));
        assert!(matches!(send_event(&mut session, &storage, 2), Step::Store(_)));
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
        assert!(matches!(send_event(&mut session, &storage, 3), Step::Store(_)));
        assert!(matches!(send_event(&mut session, &storage, 4), Step::Store(_)));
    }

    #[test]
    fn no_event_is_stored_above_refused_ones_until_they_all_are() {
        let storage = Storage::default();
        let mut session = Session::new(0, 1);
        assert!(matches!(send_event(&mut session, &storage, 6), Step::Store(_)));
        for id in [7, 8] {
            assert_eq!(
                error_code(&send_event(&mut session, &storage, id)),
                Some(ErrorCode::BUSY)
            );
        }
        storage.pending.set(0);
        storage.durable.set(6);
        assert!(matches!(send_event(&mut session, &storage, 7), Step::Store(_)));
        storage.pending.set(0);
        // 8 was refused too: a new 9 now would be acknowledged over it.
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 9)),
            Some(ErrorCode::BUSY)
        );
        assert!(matches!(send_event(&mut session, &storage, 8), Step::Store(_)));
        storage.pending.set(0);
        assert!(matches!(send_event(&mut session, &storage, 9), Step::Store(_)));
        storage.pending.set(0);
        assert!(matches!(send_event(&mut session, &storage, 10), Step::Store(_)));
    }

    #[test]
    fn a_full_pipeline_refuses_with_busy_until_it_has_room() {
        let storage = Storage::default();
        storage.full.set(true);
        let mut session = Session::new(0, 16);
        assert_eq!(
            error_code(&send_event(&mut session, &storage, 1)),
            Some(ErrorCode::BUSY)
        );
        storage.full.set(false);
        assert!(matches!(send_event(&mut session, &storage, 1), Step::Store(_)));
    }

    #[test]
    fn acks_are_cumulative_and_sent_when_they_say_something_new() {
        let mut session = Session::new(4, 16);
        assert_eq!(session.ack(4, false), None, "WELCOME said 4 already");
        assert_eq!(session.ack(6, false), Some(Ack { event_id: 6 }));
        assert_eq!(session.ack(6, false), None);
        assert_eq!(session.ack(6, true), Some(Ack { event_id: 6 }));
        assert_eq!(
            Session::new(0, 16).ack(0, true),
            None,
            "nothing stored, nothing to acknowledge"
        );
    }

    #[test]
    fn ping_is_answered_with_its_token_and_bye_ends_the_session_normally() {
        let storage = Storage::default();
        let mut session = Session::new(0, 16);
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
    fn handshake_and_file_frames_end_the_session_with_a_fatal_unexpected() {
        let file_ack = DeviceFrame::FileAck(FileAck {
            file_id: FileId([0; 16]),
            offset: 0,
            status: FileAckStatus(0),
        });
        let auth = DeviceFrame::Auth(Auth { mac: AuthMac([0; 32]) });
        for (frame, ref_type) in [(auth, FrameType::AUTH), (file_ack, FrameType::FILE_ACK)] {
            let mut session = Session::new(0, 16);
            match session.on_frame(frame, &Storage::default()) {
                Step::End(Ending::Fatal(error)) => {
                    assert_eq!(
                        (error.code, error.fatal, error.ref_type),
                        (ErrorCode::UNEXPECTED, true, ref_type)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn nothing_is_handled_after_the_session_ended() {
        let storage = Storage::default();
        let mut session = Session::new(0, 16);
        let ending = session.on_undecodable(&DecodeError::BadVersion { found: 9 });
        assert!(matches!(ending, Ending::Fatal(error) if error.fatal));
        for frame in [
            event(1),
            DeviceFrame::Ping(Ping { token: 1 }),
            DeviceFrame::Block(Block { data: Bytes::new() }),
        ] {
            assert!(matches!(session.on_frame(frame, &storage), Step::Nothing));
        }
    }
}
