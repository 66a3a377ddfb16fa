//! The sessions live on this driver, and each session's mailbox: how the
//! rest of the driver (the event pipeline, the command subscriber, the
//! supersede notices, the drain) talks to a connection task without owning
//! it.
//!
//! A [`SessionHandle`] is deliberately small: an idle device costs its
//! connection task plus this, so there is no channel per session, only a
//! wake flag with its [`AtomicWaker`] and a mutex-guarded mailbox that is
//! empty (and unallocated) almost all the time. Waiting for the flag takes
//! no state in the waiting task (a `Notify` waiter would: 64 bytes in every
//! idle connection's task).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use cwp::session::Ending;
use cwp::{ByeReason, Command, Serial, SessionId};
use futures::task::AtomicWaker;

/// Why someone else wants a session to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// The same serial authenticated again (here or on another driver).
    Superseded,
    /// The driver is draining; reconnect after this many milliseconds.
    Draining {
        /// Spread over the drain period so devices do not return at once.
        reconnect_after_ms: u32,
    },
    /// Nothing heard from the device for the idle timeout.
    Idle,
    /// The operator revoked or changed the device's key (`CWP_KEYS_FILE`
    /// reloaded on SIGHUP).
    KeyRevoked,
}

impl CloseRequest {
    /// How the session ends: the `BYE` that tells the device why, or, for
    /// a key no longer accepted, `ERROR UNAUTHORIZED`.
    pub fn ending(self) -> Ending {
        match self {
            Self::Superseded => Ending::Bye(ByeReason::SUPERSEDED, 0),
            Self::Draining { reconnect_after_ms } => Ending::Bye(ByeReason::DRAINING, reconnect_after_ms),
            Self::Idle => Ending::Bye(ByeReason::IDLE, 0),
            Self::KeyRevoked => Ending::Unauthorized,
        }
    }
}

/// What other tasks leave for a connection task.
#[derive(Debug, Default)]
struct Mailbox {
    /// Commands to send, in the order they were published (a `Vec`, not a
    /// `VecDeque`: they are taken all at once, and it is 8 bytes smaller in
    /// every session).
    commands: Vec<Command>,
    /// Set once; the connection ends as soon as it sees it.
    close: Option<CloseRequest>,
    /// The idle sweep asks a quiet session to park ([`crate::session::park`]).
    park: bool,
    /// Something about file transfers waits in
    /// [`crate::files::FileService`] (kept there, not here: a parked
    /// session's size is budgeted).
    files: bool,
}

/// One authenticated session, shared between its connection task and the
/// parts of the driver that need to reach it.
#[derive(Debug)]
pub struct SessionHandle {
    /// The authenticated device.
    pub serial: Serial,
    /// The id announced in `WELCOME` and registered with the bridge.
    pub session_id: SessionId,
    /// Highest event id of this serial known to be durably stored: the
    /// `last_event_id` from `WELCOME`, then whatever the bridge confirms.
    durable_event_id: AtomicU64,
    /// Events handed to the pipeline and not yet confirmed durable.
    pending_events: AtomicU32,
    /// When the device was last heard from, on [`monotonic_ms`]'s clock.
    /// Read by the idle sweep ([`crate::session::idle`]), so that no session needs
    /// a timer of its own.
    heard_ms: AtomicU64,
    mailbox: Mutex<Mailbox>,
    /// Set when something was left for the connection task: new acks, a
    /// command, or a close request; cleared when the task sees it.
    woken: AtomicBool,
    /// The connection task waiting for `woken`; while the session is
    /// parked, the park's waker for it.
    waiter: AtomicWaker,
    /// Whether the session is parked: it has no task, the park holds its
    /// socket ([`crate::session::park`]).
    parked: AtomicBool,
}

/// Milliseconds since the first call, on a clock that never goes back.
pub fn monotonic_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl SessionHandle {
    /// A handle for a session starting with `last_event_id` already stored.
    pub fn new(serial: Serial, session_id: SessionId, last_event_id: u64) -> Self {
        Self {
            serial,
            session_id,
            durable_event_id: AtomicU64::new(last_event_id),
            pending_events: AtomicU32::new(0),
            heard_ms: AtomicU64::new(monotonic_ms()),
            mailbox: Mutex::new(Mailbox::default()),
            woken: AtomicBool::new(false),
            waiter: AtomicWaker::new(),
            parked: AtomicBool::new(false),
        }
    }

    fn mailbox(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when something was left for the connection task.
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    /// [`Self::woken`] as a poll: ready (and reset) once something was
    /// left since the last time it was.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read: a wake between the two
        // still wakes this task.
        self.waiter.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The device was heard from (a whole frame arrived).
    pub fn heard(&self) {
        self.heard_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The highest event id known durable.
    pub fn durable_event_id(&self) -> u64 {
        self.durable_event_id.load(Ordering::Acquire)
    }

    /// Events of this session awaiting storage.
    pub fn pending_events(&self) -> u32 {
        self.pending_events.load(Ordering::Acquire)
    }

    /// Counts an event handed to the pipeline.
    pub fn event_submitted(&self) {
        self.pending_events.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by the pipeline when events up to `event_id` (`count` of them
    /// from this session) are durable. Does not wake: the pipeline wakes
    /// once per session per batch.
    pub fn events_durable(&self, event_id: u64, count: u32) {
        self.durable_event_id.fetch_max(event_id, Ordering::AcqRel);
        self.pending_events.fetch_sub(count, Ordering::AcqRel);
    }

    /// Wakes the connection task.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waiter.wake();
    }

    /// Queues a command for the device.
    pub fn push_command(&self, command: Command) {
        self.mailbox().commands.push(command);
        self.wake();
    }

    /// Tells the connection task that something about file transfers
    /// waits for it ([`crate::files::FileService::take_mail`]).
    pub fn note_file_mail(&self) {
        self.mailbox().files = true;
        self.wake();
    }

    /// Asks the connection to end. The first request wins.
    pub fn request_close(&self, request: CloseRequest) {
        self.mailbox().close.get_or_insert(request);
        self.wake();
    }

    /// Takes the queued commands (the session's end reports them).
    pub fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut self.mailbox().commands)
    }

    /// What the connection task finds in the mailbox, with one lock: the
    /// close request (it stays), the queued commands and the park request
    /// (taken).
    pub fn take_mail(&self) -> Mail {
        let mut mailbox = self.mailbox();
        Mail {
            close: mailbox.close,
            commands: std::mem::take(&mut mailbox.commands),
            park: std::mem::take(&mut mailbox.park),
            files: std::mem::take(&mut mailbox.files),
        }
    }

    /// Asks a quiet session to park; it does if it has nothing in flight.
    pub fn request_park(&self) {
        self.mailbox().park = true;
        self.wake();
    }

    /// Marks the session parked (by the park) or running again.
    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }

    /// Whether the session is parked.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }
}

/// What [`SessionHandle::take_mail`] found.
#[derive(Debug)]
pub struct Mail {
    /// Someone asked the session to end, and why.
    pub close: Option<CloseRequest>,
    /// Commands to send, in the order they were published.
    pub commands: Vec<Command>,
    /// The idle sweep asked the session to park.
    pub park: bool,
    /// Something about file transfers waits
    /// ([`crate::files::FileService::take_mail`]).
    pub files: bool,
}

/// A registry entry: the session, found by its serial. The serial is not
/// stored twice: each entry is one pointer, not a 33-byte key beside it.
#[derive(Debug)]
struct Registered(Arc<SessionHandle>);

impl PartialEq for Registered {
    fn eq(&self, other: &Self) -> bool {
        self.0.serial == other.0.serial
    }
}

impl Eq for Registered {}

impl std::hash::Hash for Registered {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.serial.hash(state);
    }
}

impl std::borrow::Borrow<Serial> for Registered {
    fn borrow(&self) -> &Serial {
        &self.0.serial
    }
}

/// The live sessions of this driver, by serial: at most one per serial.
/// Also the serials being registered with the bridge (authenticated, no
/// `WELCOME` yet): their command channels are subscribed before
/// `OpenSession`, so that a durable command enqueued after the bridge
/// read the device's ledger wakes the session (see [`Registry::begin_opening`]).
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashSet<Registered>>,
    opening: Mutex<HashMap<Serial, Opening>>,
}

/// A serial being registered.
#[derive(Debug, Default)]
struct Opening {
    /// Its handshakes between [`Registry::begin_opening`] and
    /// [`Registry::end_opening`] (a device may reconnect meanwhile).
    handshakes: u32,
    /// Whether `{"ledger":true}` came meanwhile.
    woken: bool,
}

impl Registry {
    fn sessions(&self) -> MutexGuard<'_, HashSet<Registered>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opening(&self) -> MutexGuard<'_, HashMap<Serial, Opening>> {
        self.opening.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handshake of `serial` is about to register its session: its
    /// command channel is wanted from now on (the caller subscribes it
    /// before `OpenSession`), and a ledger wake-up is remembered.
    pub fn begin_opening(&self, serial: Serial) {
        self.opening().entry(serial).or_default().handshakes += 1;
    }

    /// The handshake begun with [`Registry::begin_opening`] is registered
    /// (the session inserted first) or failed; returns whether a ledger
    /// wake-up came since it began. The flag stays for the serial's other
    /// handshakes still opening: each of them must fetch.
    pub fn end_opening(&self, serial: &Serial) -> bool {
        let mut opening = self.opening();
        let Some(entry) = opening.get_mut(serial) else {
            return false;
        };
        let woken = entry.woken;
        entry.handshakes = entry.handshakes.saturating_sub(1);
        if entry.handshakes == 0 {
            opening.remove(serial);
        }
        woken
    }

    /// Remembers a ledger wake-up for `serial` if a handshake of it is
    /// registering; returns whether one is.
    pub fn wake_opening(&self, serial: &Serial) -> bool {
        match self.opening().get_mut(serial) {
            Some(entry) => {
                entry.woken = true;
                true
            }
            None => false,
        }
    }

    /// Whether `serial`'s command channel must be subscribed: it has a
    /// live session or one being registered.
    pub fn wants_commands(&self, serial: &Serial) -> bool {
        // One lock at a time: no order to keep between the two.
        let live = self.sessions().contains(serial);
        live || self.opening().contains_key(serial)
    }

    /// Every serial whose command channel must be subscribed (after a
    /// Redis restart).
    pub fn serials_wanting_commands(&self) -> Vec<Serial> {
        let mut serials: HashSet<Serial> = self.serials().into_iter().collect();
        let opening: Vec<Serial> = self.opening().keys().copied().collect();
        serials.extend(opening);
        serials.into_iter().collect()
    }

    /// Registers a new session and returns the one it replaces, if any
    /// (the caller supersedes it).
    pub fn insert(&self, session: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        self.sessions().replace(Registered(session)).map(|previous| previous.0)
    }

    /// Removes `session` if it is still the registered one for its serial;
    /// returns whether it was (a superseding session may have replaced it).
    pub fn remove(&self, session: &Arc<SessionHandle>) -> bool {
        let mut sessions = self.sessions();
        match sessions.get(&session.serial) {
            Some(current) if Arc::ptr_eq(&current.0, session) => {
                sessions.remove(&session.serial);
                true
            }
            _ => false,
        }
    }

    /// The live session of `serial`.
    pub fn get(&self, serial: &Serial) -> Option<Arc<SessionHandle>> {
        self.sessions().get(serial).map(|entry| entry.0.clone())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions().is_empty()
    }

    /// Every live serial (for resubscribing after a Redis restart).
    pub fn serials(&self) -> Vec<Serial> {
        self.sessions().iter().map(|entry| entry.0.serial).collect()
    }

    /// Up to `limit` live serials in sorted order, and how many there are in all.
    pub fn sample(&self, limit: usize) -> (Vec<Serial>, usize) {
        let sessions = self.sessions();
        let mut serials: Vec<Serial> = sessions.iter().map(|entry| entry.0.serial).collect();
        let total = serials.len();
        if limit < total {
            serials.select_nth_unstable(limit);
            serials.truncate(limit);
        }
        serials.sort_unstable();
        (serials, total)
    }

    /// What the idle sweep acts on, in one pass over the sessions (times
    /// on [`monotonic_ms`]'s clock; `None`: no such cutoff yet, or parking
    /// is off).
    pub fn quiet(&self, idle_cutoff_ms: Option<u64>, park_cutoff_ms: Option<u64>) -> Quiet {
        let mut quiet = Quiet::default();
        for Registered(session) in self.sessions().iter() {
            let heard_ms = session.heard_ms.load(Ordering::Relaxed);
            if idle_cutoff_ms.is_some_and(|cutoff| heard_ms < cutoff) {
                quiet.idle.push(session.clone());
            } else if park_cutoff_ms.is_some_and(|cutoff| heard_ms < cutoff)
                && !session.is_parked()
                // Asked again each sweep until they are stored: a bridge
                // outage would wake every waiting session ten times a second.
                && session.pending_events() == 0
            {
                quiet.to_park.push(session.clone());
            }
        }
        quiet
    }

    /// Every live session (for the drain).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions().iter().map(|entry| entry.0.clone()).collect()
    }
}

/// The sessions one idle sweep found quiet ([`Registry::quiet`]).
#[derive(Debug, Default)]
pub struct Quiet {
    /// Unheard for the idle timeout, parked or not: to be closed.
    pub idle: Vec<Arc<SessionHandle>>,
    /// Running, nothing awaiting storage, unheard for `DRIVER_PARK_AFTER`:
    /// to be asked to park.
    pub to_park: Vec<Arc<SessionHandle>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(serial: &str) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(serial.parse().unwrap(), SessionId([1; 16]), 0))
    }

    #[test]
    fn a_newer_session_replaces_an_older_one_which_cannot_remove_it() {
        let registry = Registry::default();
        let old = handle("CTRL-1");
        let new = handle("CTRL-1");
        assert!(registry.insert(old.clone()).is_none());
        assert!(Arc::ptr_eq(&registry.insert(new.clone()).unwrap(), &old));
        assert!(
            !registry.remove(&old),
            "the superseded session must not unregister its successor"
        );
        assert!(Arc::ptr_eq(&registry.get(&new.serial).unwrap(), &new));
        assert!(registry.remove(&new));
        assert!(registry.is_empty());
    }

    #[test]
    fn the_first_close_request_wins() {
        let session = handle("CTRL-1");
        session.request_close(CloseRequest::Superseded);
        session.request_close(CloseRequest::Draining { reconnect_after_ms: 5 });
        assert_eq!(session.take_mail().close, Some(CloseRequest::Superseded));
        assert_eq!(
            session.take_mail().close,
            Some(CloseRequest::Superseded),
            "a close request stays"
        );
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_seen_once() {
        let session = handle("CTRL-1");
        session.wake();
        session.wake();
        session.woken().await;
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            session.poll_woken(&mut cx).is_pending(),
            "two wakes before a wait are seen once"
        );
        session.push_command(Command {
            command_id: cwp::CommandId([7; 16]),
            name: cwp::Str8::truncating("reboot"),
            body: bytes::Bytes::new(),
        });
        assert!(session.poll_woken(&mut cx).is_ready());
    }

    #[test]
    fn only_sessions_unheard_since_the_cutoff_are_listed() {
        let registry = Registry::default();
        let quiet = handle("QUIET");
        let chatty = handle("CHATTY");
        registry.insert(quiet.clone());
        registry.insert(chatty.clone());
        quiet.heard_ms.store(10, Ordering::Relaxed);
        chatty.heard_ms.store(30, Ordering::Relaxed);
        let unheard = registry.quiet(Some(20), None).idle;
        assert_eq!(unheard.len(), 1);
        assert!(Arc::ptr_eq(&unheard[0], &quiet));
    }

    #[test]
    fn only_running_quiet_sessions_are_asked_to_park() {
        let registry = Registry::default();
        let quiet = handle("QUIET");
        let parked = handle("PARKED");
        let chatty = handle("CHATTY");
        let waiting = handle("WAITING");
        for session in [&quiet, &parked, &chatty, &waiting] {
            registry.insert(session.clone());
        }
        quiet.heard_ms.store(10, Ordering::Relaxed);
        parked.heard_ms.store(10, Ordering::Relaxed);
        parked.set_parked(true);
        chatty.heard_ms.store(30, Ordering::Relaxed);
        waiting.heard_ms.store(10, Ordering::Relaxed);
        waiting.event_submitted();
        let parkable = registry.quiet(None, Some(20)).to_park;
        assert_eq!(parkable.len(), 1);
        assert!(Arc::ptr_eq(&parkable[0], &quiet));
    }

    #[test]
    fn a_session_silent_for_the_idle_timeout_is_closed_not_parked() {
        let registry = Registry::default();
        let silent = handle("SILENT");
        registry.insert(silent.clone());
        silent.heard_ms.store(10, Ordering::Relaxed);
        let quiet = registry.quiet(Some(20), Some(25));
        assert_eq!(quiet.idle.len(), 1);
        assert!(quiet.to_park.is_empty());
    }

    #[test]
    fn a_park_request_is_seen_once() {
        let session = handle("CTRL-1");
        assert!(!session.take_mail().park);
        session.request_park();
        assert!(session.take_mail().park);
        assert!(!session.take_mail().park);
    }

    #[test]
    fn sample_lists_a_sorted_subset_and_the_total() {
        let registry = Registry::default();
        for serial in ["C", "A", "D", "B"] {
            registry.insert(handle(serial));
        }
        let (serials, total) = registry.sample(2);
        assert_eq!(total, 4);
        assert_eq!(serials.len(), 2);
        assert!(serials[0] < serials[1]);
    }
}
