//! One device connection's socket and buffers: reads, writes, the codec.
//!
//! [`Connection`] owns the socket, the device's address, the codec (with
//! the seal once the handshake has started sealing) and the two buffers.
//! It reads whatever the socket has, decodes whole frames, queues encoded
//! frames and writes them out, without a future of its own when the
//! socket takes the bytes at once (every idle session's task carries what
//! waits here, so waiting is boxed). Both buffers are released whenever
//! they are empty, so a quiet connection holds none.
//!
//! The handshake ([`crate::handshake`]) and the established session
//! ([`crate::session`]) use it; a parked session ([`crate::session::park`])
//! keeps only its socket and codec ([`Connection::into_parts`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, BytesMut};
use cwp::{ByeReason, DecodeError, DeviceFrame, Held, Received, ServerBye, ServerCodec, ServerFrame};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::refusal::Refusal;

/// Bytes read per read call at most: big enough for bulk uploads to read
/// many frames per syscall, small enough to keep active connections lean.
const READ_CHUNK: usize = 16 * 1024;
/// How long a device that stopped reading may block our writes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket, the codec and the buffers of one connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// The device's address (from the PROXY header when behind HAProxy).
    peer: SocketAddr,
    /// Framing, and the seal from `WELCOME` on.
    codec: ServerCodec,
    /// Bytes read and not yet decoded.
    rx: BytesMut,
    /// Frames encoded and not yet written.
    tx: BytesMut,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
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
    /// handshake thread's, [`crate::handshake::thread`], to the sessions').
    pub fn register_with(self, runtime: &tokio::runtime::Handle) -> io::Result<Self> {
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

    /// A parked session's socket and codec, running again (the caller
    /// runs on the runtime the socket registers with).
    pub fn resume(stream: std::net::TcpStream, peer: SocketAddr, codec: ServerCodec) -> io::Result<Self> {
        Ok(Self {
            stream: TcpStream::from_std(stream)?,
            peer,
            codec,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
        })
    }

    /// What a parked session keeps: the socket, no longer registered with
    /// tokio, the device's address and the codec. Only for a connection
    /// with nothing buffered either way ([`Connection::is_idle`]).
    pub fn into_parts(self) -> io::Result<(std::net::TcpStream, SocketAddr, ServerCodec)> {
        debug_assert!(self.is_idle(), "a connection with buffered bytes cannot park");
        Ok((self.stream.into_std()?, self.peer, self.codec))
    }

    /// The device's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The codec (the handshake starts sealing and sets the payload limit).
    pub fn codec_mut(&mut self) -> &mut ServerCodec {
        &mut self.codec
    }

    /// Whether nothing is buffered either way.
    pub fn is_idle(&self) -> bool {
        self.rx.is_empty() && self.tx.is_empty()
    }

    /// Polls the socket's readiness to read, in place: no state in the
    /// waiting task. `Err` when the socket failed.
    pub fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    /// Polls the socket's readiness to write, in place.
    pub fn poll_write_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    /// Whether everything queued was written.
    pub fn is_sent(&self) -> bool {
        self.tx.is_empty()
    }

    /// Limits the bytes the kernel holds unsent (`TCP_NOTSENT_LOWAT`):
    /// the socket is writable only below it, so bulk data queued there
    /// stays short and frames queued after it go out soon.
    pub fn limit_unsent(&self, bytes: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.stream).set_tcp_notsent_lowat(bytes)
    }

    /// Reads whatever the socket has now, up to the codec's limit.
    /// `Ok(0)` means the socket had nothing after all (spurious readiness).
    pub fn read_available(&mut self) -> Result<usize, ReadError> {
        let limit = self.codec.read_limit(self.rx.len()).min(READ_CHUNK);
        self.read_up_to(limit)
    }

    /// Reads at most `limit` bytes of what the socket has now.
    fn read_up_to(&mut self, limit: usize) -> Result<usize, ReadError> {
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
    pub fn next_frame(&mut self) -> Result<Option<DeviceFrame>, ReadError> {
        self.codec.decode(&mut self.rx).map_err(ReadError::Decode)
    }

    /// Waits for the next frame of the handshake, holding no more than
    /// `held` allows whatever a header announces (CWP/1 §2: no valid frame
    /// before `WELCOME` is longer than a `HELLO`; a longer one passes
    /// through the CRC without being kept, and is answered as the spec
    /// says).
    pub async fn read_held(&mut self, held: &mut Held) -> Result<Received<DeviceFrame>, ReadError> {
        loop {
            if let Some(received) = self.codec.decode_held(&mut self.rx, held).map_err(ReadError::Decode)? {
                return Ok(received);
            }
            self.stream.readable().await?;
            let limit = self.codec.read_limit_held(self.rx.len(), held).min(READ_CHUNK);
            self.read_up_to(limit)?;
        }
    }

    /// Encodes a frame into the send buffer.
    pub fn queue(&mut self, frame: &ServerFrame) {
        self.codec.encode(frame, &mut self.tx);
    }

    /// Queues a `FILE_CHUNK` of `len` bytes that `fill` writes in place in
    /// the send buffer ([`cwp::ServerCodec::encode_file_chunk_with`]).
    pub fn queue_file_chunk_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.codec.encode_file_chunk_with(len, &mut self.tx, fill)
    }

    /// Writes the send buffer out.
    pub async fn flush(&mut self) -> io::Result<()> {
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
    /// `uploading`, the receive buffer stays, and while `transferring` the
    /// send buffer: their space is reclaimed in place for the next blocks
    /// or chunks instead of being allocated (and its pages faulted in)
    /// again.
    pub fn release_idle_buffers(&mut self, uploading: bool, transferring: bool) {
        if !uploading && self.rx.is_empty() && self.rx.capacity() > 0 {
            self.rx = BytesMut::new();
        }
        if !transferring && self.tx.capacity() > READ_CHUNK {
            self.tx = BytesMut::new();
        }
    }

    /// Queues the `ERROR` of a refusal (sealed or not, as the handshake
    /// stage requires), counting it by code.
    pub fn queue_refusal(&mut self, metrics: &Metrics, refusal: &Refusal) {
        let error = refusal.to_frame();
        metrics.error_sent(error.code);
        self.queue(&ServerFrame::Error(error));
    }

    /// Sends the `ERROR` of a refusal and waits until it is written.
    pub async fn send_refusal(&mut self, metrics: &Metrics, refusal: &Refusal) {
        self.queue_refusal(metrics, refusal);
        let _ = self.flush().await;
    }

    /// Sends `BYE` and closes the write side.
    pub async fn send_bye(&mut self, reason: ByeReason, reconnect_after_ms: u32) {
        self.queue(&ServerFrame::Bye(ServerBye {
            reason,
            reconnect_after_ms,
        }));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
