//! Parked sessions: established sessions whose devices are quiet, held
//! with no task and no registration with tokio's I/O driver.
//!
//! A running session costs its task (its future and tokio's task header,
//! about 670 bytes) and its socket's registration with tokio (its
//! `ScheduledIo`, about 270 bytes), before anything of its own. Devices
//! are quiet nearly all the time (a heartbeat every 30 s), so once one has
//! been silent for `DRIVER_PARK_AFTER` the idle sweep ([`super::idle`])
//! asks its session to park. If nothing is in flight (no event awaiting
//! storage, no open upload, nothing buffered either way) the session hands
//! the park what it needs to resume exactly where it stopped, a
//! [`ParkedSession`] (the socket, the codec with its seal and sequence
//! numbers, the rules' event ids), and its task ends.
//!
//! The park is one task on the sessions' runtime, which owns the parked
//! sessions, and an epoll set of its own, which a thread (the watcher)
//! waits on. A parked socket that becomes readable (a frame, or the
//! close), or a wake of the parked session's mailbox (a command, a close
//! request: the mailbox's waker is the park's while the session is
//! parked) resumes the session in a new task, which reads and answers as
//! if it had never stopped. Nothing changes for the device: parking is
//! not visible on the wire.
//!
//! The watcher is a thread of its own, not a task, because registering the
//! epoll set with tokio's reactor needs unsafe code, which the workspace
//! forbids: tokio 1.54 deprecated `AsyncFd::new` and `with_interest` as
//! unsound (tokio#8587: safe code can swap the registered descriptor
//! through `get_mut`), and their sound replacement, `AsyncFd::register`,
//! is an `unsafe fn`. The watcher blocks in `epoll_wait` and forwards each
//! readable socket to the park task; each socket is reported once
//! (`EPOLLONESHOT`), and the park takes it out of the set when it resumes
//! the session. It costs one thread and an eventfd for the whole driver,
//! nothing per parked session.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use rustix::event::{EventfdFlags, epoll};
use slab::Slab;

use cwp::ServerCodec;
use drover_service::drain;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, warn};

use cwp::ServerSession;
use prometheus_client::metrics::gauge::Gauge;

use crate::registry::SessionHandle;

/// What an established session carries from one task to the next when it
/// parks.
#[derive(Debug)]
pub struct SessionState {
    /// CWP/1 §3: the event ids seen and acknowledged.
    pub rules: ServerSession,
    /// When the device was last heard from, Unix ms (for the registry).
    pub last_heard_ms: u64,
}

/// An established session without a task: what it needs to resume where
/// it stopped.
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
    fn session(&self) -> &Arc<SessionHandle> {
        &self.session
    }

    /// The socket, for the park's epoll set.
    fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.stream.as_fd()
    }

    /// What it holds, to resume it: the socket (registered with no
    /// runtime), the device's address, the codec, the rules' state, its
    /// registry entry and its connection permit.
    pub fn into_parts(
        self,
    ) -> (
        std::net::TcpStream,
        SocketAddr,
        ServerCodec,
        SessionState,
        Arc<SessionHandle>,
        OwnedSemaphorePermit,
    ) {
        (
            self.stream,
            self.peer,
            self.codec,
            self.state,
            self.session,
            self.permit,
        )
    }

    /// A quiet session's parts, to park.
    pub fn new(
        stream: std::net::TcpStream,
        peer: SocketAddr,
        codec: ServerCodec,
        state: SessionState,
        session: Arc<SessionHandle>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            stream,
            peer,
            codec,
            state,
            session,
            permit,
        }
    }
}

/// Readiness events taken from the epoll set per call.
const EVENTS_PER_WAIT: usize = 256;
/// The epoll data of the watcher's stop signal; a parked socket's data is
/// its [`Ticket`], whose key is below 2^32 - 1.
const STOP: u64 = u64::MAX;
/// Which parked session: its key in the park, and the parking's id, which
/// tells a stale wake (for a session since resumed, and its key reused)
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    key: u32,
    id: u32,
}

impl Ticket {
    fn to_u64(self) -> u64 {
        (u64::from(self.id) << 32) | u64::from(self.key)
    }

    fn from_u64(data: u64) -> Self {
        Self {
            key: data as u32,
            id: (data >> 32) as u32,
        }
    }
}

/// What the park is told.
enum Message {
    /// Hold this session until it is needed; the token counts it among
    /// the driver's connections on its way.
    Park(Box<Slot>, TaskTrackerToken),
    /// A parked session is needed: its mailbox was woken, or its socket
    /// is readable.
    Wake(Ticket),
}

/// One parked session.
struct Slot {
    parked: ParkedSession,
    id: u32,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Park(slot, _) => f.debug_tuple("Park").field(&slot.parked.session().serial).finish(),
            Self::Wake(ticket) => f.debug_tuple("Wake").field(ticket).finish(),
        }
    }
}

/// The sessions' way to the park.
#[derive(Debug, Clone)]
pub struct Park {
    /// Unbounded in type, bounded by the sessions: a session parking sends
    /// one `Park`, and while parked at most one `Wake` from its mailbox (the
    /// park's waker is registered once per parking, and a wake takes it)
    /// and one from the watcher (`EPOLLONESHOT`). So the queue never holds
    /// more than three messages per session, of which there are at most
    /// `DRIVER_MAX_CONNECTIONS`.
    inbox: mpsc::UnboundedSender<Message>,
    connections: TaskTracker,
}

/// The park's end of [`Park`], for [`run`].
#[derive(Debug)]
pub struct ParkInbox {
    inbox: mpsc::UnboundedReceiver<Message>,
    sender: mpsc::UnboundedSender<Message>,
}

/// A park whose sessions count among `connections` while parked (the
/// driver's shutdown waits for them as for running ones).
pub fn park(connections: TaskTracker) -> (Park, ParkInbox) {
    let (sender, inbox) = mpsc::unbounded_channel();
    (
        Park {
            inbox: sender.clone(),
            connections,
        },
        ParkInbox { inbox, sender },
    )
}

impl Park {
    /// Hands a session to the park. If the park has stopped, the parked
    /// state is dropped (the connection closes) and the session's registry
    /// entry comes back, for the caller to end the session.
    pub fn park(&self, parked: ParkedSession) -> Result<(), Arc<SessionHandle>> {
        let slot = Box::new(Slot { parked, id: 0 });
        let connection = self.connections.token();
        self.inbox
            .send(Message::Park(slot, connection))
            .map_err(|failed| match failed.0 {
                Message::Park(slot, _) => slot.parked.session().clone(),
                Message::Wake(_) => unreachable!("a park message was sent"),
            })
    }
}

/// The waker of a parked session's mailbox: tells the park to resume it.
struct ParkedWaker {
    park: mpsc::UnboundedSender<Message>,
    ticket: Ticket,
}

impl Wake for ParkedWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.park.send(Message::Wake(self.ticket));
    }
}

/// The thread that waits on the park's epoll set.
struct Watcher {
    stop: OwnedFd,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(epoll: Arc<OwnedFd>, park: mpsc::UnboundedSender<Message>) -> io::Result<Self> {
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC)?;
        epoll::add(&*epoll, &stop, epoll::EventData::new_u64(STOP), epoll::EventFlags::IN)?;
        let thread = std::thread::Builder::new()
            .name("park-watcher".to_owned())
            .spawn(move || watch(&epoll, &park))?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        if let Err(err) = rustix::io::write(&self.stop, &1u64.to_ne_bytes()) {
            warn!(error = %err, "cannot stop the park's watcher");
            return;
        }
        let _ = self.thread.join();
    }
}

/// Forwards every readable parked socket to the park, until stopped.
fn watch(epoll: &OwnedFd, park: &mpsc::UnboundedSender<Message>) {
    let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
    loop {
        events.clear();
        match epoll::wait(epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => {
                // Parked sessions still resume through their mailboxes,
                // and the idle sweep closes them in time.
                tracing::error!(error = %err, "the park's watcher failed: parked devices are not heard until the idle timeout");
                return;
            }
        }
        for event in events.drain(..) {
            let data = event.data.u64();
            if data == STOP {
                return;
            }
            if park.send(Message::Wake(Ticket::from_u64(data))).is_err() {
                return;
            }
        }
    }
}

/// The parked sessions and their epoll set.
struct Lot<R> {
    /// Runs a session again (spawns its task) or ends it.
    resume: R,
    /// `drover_driver_sessions_parked`.
    parked: Gauge,
    /// The parked sockets, each registered once (`EPOLLONESHOT`) with its
    /// [`Ticket`] as data; the watcher waits on it.
    epoll: Arc<OwnedFd>,
    slots: Slab<Box<Slot>>,
    /// While any session is parked: keeps the driver's shutdown waiting
    /// for them as for running connections. One for all, not one per
    /// session: 8 bytes less per parked device.
    occupied: Option<TaskTrackerToken>,
    next_id: u32,
    sender: mpsc::UnboundedSender<Message>,
}

/// Holds parked sessions and hands each back to `resume` when it is needed
/// (`resume` spawns its task before it returns), until `stop` is
/// signalled; `parked` counts them. Must run on the sessions' runtime:
/// resumed sessions register their sockets with the runtime it runs on.
pub async fn run<R>(inbox: ParkInbox, resume: R, parked: Gauge, stop: drain::Watch) -> io::Result<()>
where
    R: FnMut(ParkedSession) + Send,
{
    let ParkInbox { mut inbox, sender } = inbox;
    let epoll = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?);
    let watcher = Watcher::start(epoll.clone(), sender.clone())?;
    let mut lot = Lot {
        resume,
        parked,
        epoll,
        slots: Slab::new(),
        occupied: None,
        next_id: 0,
        sender,
    };
    loop {
        tokio::select! {
            () = stop.signaled() => break,
            message = inbox.recv() => match message {
                Some(Message::Park(slot, connection)) => {
                    // Kept as the lot's token if it has none yet, before
                    // the session may be resumed (and the lot emptied).
                    lot.occupied.get_or_insert(connection);
                    lot.park(slot);
                }
                Some(Message::Wake(ticket)) => lot.wake(ticket),
                None => break,
            },
        }
    }
    watcher.stop();
    let left = lot.slots.len();
    if left > 0 {
        warn!(
            sessions = left,
            "park stopped with sessions still parked: their connections close"
        );
    }
    Ok(())
}

impl<R: FnMut(ParkedSession)> Lot<R> {
    fn park(&mut self, mut slot: Box<Slot>) {
        self.next_id = self.next_id.wrapping_add(1);
        slot.id = self.next_id;
        let entry = self.slots.vacant_entry();
        // The highest key would make the highest ticket read as STOP.
        let Some(key) = u32::try_from(entry.key()).ok().filter(|key| *key < u32::MAX) else {
            self.spawn(slot);
            return;
        };
        let ticket = Ticket { key, id: slot.id };
        let added = epoll::add(
            &*self.epoll,
            slot.parked.socket(),
            epoll::EventData::new_u64(ticket.to_u64()),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT,
        );
        if let Err(err) = added {
            warn!(serial = %slot.parked.session().serial, error = %err, "cannot park the session; it stays running");
            self.spawn(slot);
            return;
        }
        let session = slot.parked.session().clone();
        session.set_parked(true);
        self.parked.inc();
        entry.insert(slot);
        let waker = Waker::from(Arc::new(ParkedWaker {
            park: self.sender.clone(),
            ticket,
        }));
        // A wake between the session's last look at its mailbox and now
        // went to its ended task: look once more, with the park's waker.
        // The resumed session reads its whole mailbox, whatever the flag.
        if session.poll_woken(&mut Context::from_waker(&waker)).is_ready() {
            self.resume(key as usize);
        }
    }

    fn wake(&mut self, ticket: Ticket) {
        let key = ticket.key as usize;
        if self.slots.get(key).is_some_and(|slot| slot.id == ticket.id) {
            self.resume(key);
        }
    }

    /// Takes the session parked under `key` out of the set and runs it.
    fn resume(&mut self, key: usize) {
        let Some(slot) = self.slots.try_remove(key) else {
            return;
        };
        if let Err(err) = epoll::delete(&*self.epoll, slot.parked.socket()) {
            debug!(serial = %slot.parked.session().serial, error = %err, "removing a parked socket from the park's set");
        }
        slot.parked.session().set_parked(false);
        self.parked.dec();
        self.spawn(slot);
    }

    fn spawn(&mut self, slot: Box<Slot>) {
        (self.resume)(slot.parked);
        // Only now, with the resumed session's task tracked: the drain
        // never sees the connection count at 0 in between.
        if self.slots.is_empty() {
            self.occupied = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_survives_the_epoll_data_and_never_reads_as_stop() {
        let ticket = Ticket {
            key: 70_000,
            id: 4_000_000_000,
        };
        assert_eq!(Ticket::from_u64(ticket.to_u64()), ticket);
        let highest = Ticket {
            key: u32::MAX - 1,
            id: u32::MAX,
        };
        assert_ne!(highest.to_u64(), STOP);
    }

    /// What a parked device costs is these two, beside its entries in the
    /// registry, the slab and the Redis client: each fills one of
    /// jemalloc's size classes (160 and 224 bytes) exactly. A field more
    /// costs every parked device the next class, 32 bytes.
    #[test]
    fn a_parked_device_fits_its_memory_budget() {
        let handle = std::mem::size_of::<SessionHandle>();
        assert!(handle + 16 <= 160, "SessionHandle is {handle} bytes (+16 for its Arc)");
        let slot = std::mem::size_of::<Slot>();
        assert!(slot <= 224, "a parked session is {slot} bytes");
    }
}
