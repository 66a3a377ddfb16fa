//! CWP/1 §3 Files, the server's side of one file transfer, with no I/O:
//! what `FILE_ACCEPT` and `FILE_ACK` mean for the transfer, which bytes
//! may be sent next, and which frames break the protocol.
//!
//! A [`FileTransfer`] starts when the server sends `FILE_OFFER`. The
//! device's `FILE_ACCEPT` gives the offset it holds and its window; the
//! server then sends chunks in order from that offset, never more than
//! `window` bytes beyond the last `FILE_ACK.offset`
//! ([`FileTransfer::next_chunk`]). The CWP/1 errors the spec implies for
//! file frames that do not fit (all fatal):
//!
//! | frame | when | error |
//! |---|---|---|
//! | `FILE_ACCEPT`, `FILE_ACK` | no file was offered on this connection | `UNEXPECTED` |
//! | `FILE_ACCEPT`, `FILE_ACK` | `file_id` is not the offered file's | `UNEXPECTED` |
//! | `FILE_ACCEPT` | the offer was accepted already | `UNEXPECTED` |
//! | `FILE_ACCEPT` | `offset` beyond the file's size | `UNEXPECTED` |
//! | `FILE_ACK` | before `FILE_ACCEPT` | `UNEXPECTED` |
//! | `FILE_ACK` | `offset` below an earlier `FILE_ACK`'s, or beyond the bytes sent | `UNEXPECTED` |
//! | `FILE_ACK` | `status` is not 0, 1 or 2 | `MALFORMED` |
//!
//! A transfer the server stopped (the rollout was paused or cancelled) may
//! still get the device's answers to chunks already on their way: after
//! [`FileTransfer::stop`], frames about that file are ignored.

use crate::error::{DecodeError, Malformation};
use crate::fields::FileId;
use crate::frame::{FileAccept, FileAck, FileAckStatus, FrameType};
use crate::session::Violation;

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `FILE_OFFER` sent, no answer yet.
    Offered,
    /// Accepted: chunks flow.
    Sending {
        /// The last `FILE_ACK.offset` (or the accepted offset).
        acked: u64,
        /// Bytes sent so far (the next chunk starts here).
        sent: u64,
        /// `FILE_ACCEPT.window`.
        window: u32,
    },
    /// The server stopped it: late answers about this file are ignored.
    Stopped,
}

/// What a device frame means for the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStep {
    /// `FILE_ACCEPT` with window 0: the device declines; the transfer ends.
    Declined,
    /// Accepted from `offset`: send chunks.
    Accepted {
        /// What the device holds already.
        offset: u64,
    },
    /// The device holds `offset` bytes.
    Progress {
        /// `FILE_ACK.offset`.
        offset: u64,
    },
    /// The device has the whole file and its SHA-256 matched; the transfer
    /// ends.
    Complete,
    /// The device's SHA-256 did not match: it discarded the file; the
    /// transfer ends (the server may offer it again).
    DigestMismatch,
    /// The device gave up; the transfer ends.
    Aborted {
        /// `FILE_ACK.offset`.
        offset: u64,
    },
    /// About a transfer the server stopped: nothing to do.
    Ignored,
}

impl TransferStep {
    /// Whether the transfer is over after this step.
    pub fn ends(&self) -> bool {
        matches!(
            self,
            Self::Declined | Self::Complete | Self::DigestMismatch | Self::Aborted { .. }
        )
    }
}

/// One file transfer on one connection, on the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTransfer {
    file_id: FileId,
    size: u64,
    state: State,
}

impl FileTransfer {
    /// `FILE_OFFER` of a file of `size` bytes was sent.
    pub fn offered(file_id: FileId, size: u64) -> Self {
        Self {
            file_id,
            size,
            state: State::Offered,
        }
    }

    /// The offered file.
    pub fn file_id(&self) -> FileId {
        self.file_id
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The device's last `FILE_ACK.offset` (or its accepted offset); 0
    /// before it accepted.
    pub fn acked(&self) -> u64 {
        match self.state {
            State::Sending { acked, .. } => acked,
            _ => 0,
        }
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        match self.state {
            State::Sending { sent, .. } => sent,
            _ => 0,
        }
    }

    /// Whether chunks may flow (accepted, not stopped).
    pub fn is_sending(&self) -> bool {
        matches!(self.state, State::Sending { .. })
    }

    /// Whether the server stopped it.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The next chunk to send, as (offset, length), at most `max_chunk`
    /// bytes: `None` when everything was sent, nothing was accepted, or
    /// the window is full (CWP/1 §3: never more than `window` bytes beyond
    /// the last `FILE_ACK.offset`).
    pub fn next_chunk(&self, max_chunk: usize) -> Option<(u64, usize)> {
        let State::Sending { acked, sent, window } = self.state else {
            return None;
        };
        let room = (acked + u64::from(window)).saturating_sub(sent);
        let left = self.size - sent;
        let len = room.min(left).min(max_chunk as u64);
        (len > 0).then_some((sent, len as usize))
    }

    /// `len` bytes from [`FileTransfer::next_chunk`]'s offset were queued.
    pub fn chunk_sent(&mut self, len: usize) {
        if let State::Sending { sent, .. } = &mut self.state {
            *sent += len as u64;
        }
    }

    /// The server stops the transfer between chunks: nothing more is sent,
    /// late answers about the file are ignored.
    pub fn stop(&mut self) {
        self.state = State::Stopped;
    }

    /// The device's `FILE_ACCEPT`.
    pub fn on_accept(&mut self, accept: &FileAccept) -> Result<TransferStep, Violation> {
        if accept.file_id != self.file_id {
            return Err(unexpected(
                FrameType::FILE_ACCEPT,
                "FILE_ACCEPT names another file than the one offered",
            ));
        }
        match self.state {
            State::Stopped => return Ok(TransferStep::Ignored),
            State::Sending { .. } => {
                return Err(unexpected(FrameType::FILE_ACCEPT, "the file was accepted already"));
            }
            State::Offered => {}
        }
        if accept.offset > self.size {
            return Err(unexpected(
                FrameType::FILE_ACCEPT,
                "FILE_ACCEPT offset is beyond the file's size",
            ));
        }
        if accept.window == 0 {
            self.state = State::Stopped;
            return Ok(TransferStep::Declined);
        }
        self.state = State::Sending {
            acked: accept.offset,
            sent: accept.offset,
            window: accept.window,
        };
        Ok(TransferStep::Accepted { offset: accept.offset })
    }

    /// The device's `FILE_ACK`.
    pub fn on_ack(&mut self, ack: &FileAck) -> Result<TransferStep, Violation> {
        if ack.file_id != self.file_id {
            return Err(unexpected(
                FrameType::FILE_ACK,
                "FILE_ACK names another file than the one offered",
            ));
        }
        let (acked, sent) = match self.state {
            State::Stopped => return Ok(TransferStep::Ignored),
            State::Offered => return Err(unexpected(FrameType::FILE_ACK, "FILE_ACK before FILE_ACCEPT")),
            State::Sending { acked, sent, .. } => (acked, sent),
        };
        match ack.status {
            FileAckStatus::OK | FileAckStatus::DIGEST_MISMATCH | FileAckStatus::ABORTED => {}
            _ => {
                return Err(Violation::Undecodable(DecodeError::Malformed {
                    frame_type: FrameType::FILE_ACK,
                    reason: Malformation::UnknownStatus,
                }));
            }
        }
        if ack.offset > sent {
            return Err(unexpected(
                FrameType::FILE_ACK,
                "FILE_ACK offset is beyond the bytes sent",
            ));
        }
        if ack.status == FileAckStatus::DIGEST_MISMATCH {
            self.state = State::Stopped;
            return Ok(TransferStep::DigestMismatch);
        }
        if ack.status == FileAckStatus::ABORTED {
            self.state = State::Stopped;
            return Ok(TransferStep::Aborted { offset: ack.offset });
        }
        if ack.offset < acked {
            return Err(unexpected(FrameType::FILE_ACK, "FILE_ACK offset went backwards"));
        }
        if let State::Sending { acked, .. } = &mut self.state {
            *acked = ack.offset;
        }
        if ack.offset == self.size {
            self.state = State::Stopped;
            return Ok(TransferStep::Complete);
        }
        Ok(TransferStep::Progress { offset: ack.offset })
    }
}

/// A `FILE_ACCEPT` or `FILE_ACK` on a connection where no file was offered.
pub fn no_transfer(frame_type: FrameType) -> Violation {
    unexpected(frame_type, "no file transfer is in progress")
}

fn unexpected(ref_type: FrameType, reason: &'static str) -> Violation {
    Violation::Unexpected { ref_type, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const FILE: FileId = FileId([7; 16]);
    const OTHER: FileId = FileId([8; 16]);

    fn accept(offset: u64, window: u32) -> FileAccept {
        FileAccept {
            file_id: FILE,
            offset,
            window,
        }
    }

    fn ack(offset: u64, status: FileAckStatus) -> FileAck {
        FileAck {
            file_id: FILE,
            offset,
            status,
        }
    }

    fn code(result: Result<TransferStep, Violation>) -> ErrorCode {
        result.expect_err("a violation").code()
    }

    #[test]
    fn chunks_stay_within_the_window_beyond_the_last_ack() {
        let mut transfer = FileTransfer::offered(FILE, 10_000);
        assert_eq!(transfer.next_chunk(1000), None, "nothing before FILE_ACCEPT");
        assert_eq!(
            transfer.on_accept(&accept(2000, 2500)),
            Ok(TransferStep::Accepted { offset: 2000 })
        );
        assert_eq!(transfer.next_chunk(1000), Some((2000, 1000)));
        transfer.chunk_sent(1000);
        assert_eq!(transfer.next_chunk(1000), Some((3000, 1000)));
        transfer.chunk_sent(1000);
        assert_eq!(
            transfer.next_chunk(1000),
            Some((4000, 500)),
            "the window's last 500 bytes"
        );
        transfer.chunk_sent(500);
        assert_eq!(transfer.next_chunk(1000), None, "window full");
        assert_eq!(
            transfer.on_ack(&ack(3000, FileAckStatus::OK)),
            Ok(TransferStep::Progress { offset: 3000 })
        );
        assert_eq!(transfer.next_chunk(4000), Some((4500, 1000)));
        transfer.chunk_sent(1000);
        assert_eq!(
            transfer.on_ack(&ack(5500, FileAckStatus::OK)),
            Ok(TransferStep::Progress { offset: 5500 })
        );
        let mut sent = 5500;
        while let Some((offset, len)) = transfer.next_chunk(1000) {
            assert_eq!(offset, sent);
            assert!(offset + len as u64 <= transfer.acked() + 2500);
            transfer.chunk_sent(len);
            sent += len as u64;
        }
        assert_eq!(sent, 8000);
        transfer.on_ack(&ack(8000, FileAckStatus::OK)).unwrap();
        while let Some((_, len)) = transfer.next_chunk(1000) {
            transfer.chunk_sent(len);
        }
        assert_eq!(transfer.sent(), 10_000, "never beyond the size");
        assert_eq!(
            transfer.on_ack(&ack(10_000, FileAckStatus::OK)),
            Ok(TransferStep::Complete)
        );
        assert!(TransferStep::Complete.ends());
    }

    #[test]
    fn window_zero_declines_and_a_resume_at_the_end_sends_nothing() {
        let mut transfer = FileTransfer::offered(FILE, 100);
        assert_eq!(transfer.on_accept(&accept(0, 0)), Ok(TransferStep::Declined));
        assert_eq!(transfer.next_chunk(10), None);

        let mut transfer = FileTransfer::offered(FILE, 100);
        transfer.on_accept(&accept(100, 4096)).unwrap();
        assert_eq!(transfer.next_chunk(10), None);
        assert_eq!(
            transfer.on_ack(&ack(100, FileAckStatus::OK)),
            Ok(TransferStep::Complete)
        );
    }

    #[test]
    fn digest_mismatch_and_abort_end_the_transfer() {
        let mut transfer = FileTransfer::offered(FILE, 100);
        transfer.on_accept(&accept(0, 1000)).unwrap();
        transfer.chunk_sent(100);
        assert_eq!(
            transfer.on_ack(&ack(100, FileAckStatus::DIGEST_MISMATCH)),
            Ok(TransferStep::DigestMismatch)
        );
        assert_eq!(transfer.next_chunk(10), None);

        let mut transfer = FileTransfer::offered(FILE, 100);
        transfer.on_accept(&accept(0, 1000)).unwrap();
        transfer.chunk_sent(40);
        assert_eq!(
            transfer.on_ack(&ack(40, FileAckStatus::ABORTED)),
            Ok(TransferStep::Aborted { offset: 40 })
        );
    }

    #[test]
    fn frames_that_do_not_fit_the_transfer_are_the_documented_errors() {
        let offered = FileTransfer::offered(FILE, 1000);
        let mut accepted = offered.clone();
        accepted.on_accept(&accept(100, 500)).unwrap();
        accepted.chunk_sent(300);
        accepted.on_ack(&ack(200, FileAckStatus::OK)).unwrap();

        let other_accept = FileAccept {
            file_id: OTHER,
            ..accept(0, 10)
        };
        let other_ack = FileAck {
            file_id: OTHER,
            ..ack(0, FileAckStatus::OK)
        };
        assert_eq!(code(offered.clone().on_accept(&other_accept)), ErrorCode::UNEXPECTED);
        assert_eq!(code(accepted.clone().on_ack(&other_ack)), ErrorCode::UNEXPECTED);
        assert_eq!(
            code(offered.clone().on_accept(&accept(1001, 10))),
            ErrorCode::UNEXPECTED,
            "beyond the size"
        );
        assert_eq!(
            code(accepted.clone().on_accept(&accept(0, 10))),
            ErrorCode::UNEXPECTED,
            "accepted twice"
        );
        assert_eq!(
            code(offered.clone().on_ack(&ack(0, FileAckStatus::OK))),
            ErrorCode::UNEXPECTED,
            "ack first"
        );
        assert_eq!(
            code(accepted.clone().on_ack(&ack(150, FileAckStatus::OK))),
            ErrorCode::UNEXPECTED,
            "backwards"
        );
        assert_eq!(
            code(accepted.clone().on_ack(&ack(401, FileAckStatus::OK))),
            ErrorCode::UNEXPECTED,
            "beyond sent"
        );
        assert_eq!(
            code(accepted.clone().on_ack(&ack(300, FileAckStatus(3)))),
            ErrorCode::MALFORMED
        );
        assert_eq!(no_transfer(FrameType::FILE_ACK).code(), ErrorCode::UNEXPECTED);
        // The refused frames changed nothing: the transfer goes on.
        assert_eq!(accepted.acked(), 200);
        assert_eq!(
            accepted.on_ack(&ack(400, FileAckStatus::OK)),
            Ok(TransferStep::Progress { offset: 400 })
        );
    }

    #[test]
    fn a_stopped_transfer_ignores_late_answers_about_its_file_only() {
        let mut transfer = FileTransfer::offered(FILE, 1000);
        transfer.on_accept(&accept(0, 500)).unwrap();
        transfer.chunk_sent(500);
        transfer.stop();
        assert_eq!(transfer.next_chunk(100), None);
        assert_eq!(transfer.on_ack(&ack(500, FileAckStatus::OK)), Ok(TransferStep::Ignored));
        assert_eq!(transfer.on_accept(&accept(0, 500)), Ok(TransferStep::Ignored));
        let other_ack = FileAck {
            file_id: OTHER,
            ..ack(0, FileAckStatus::OK)
        };
        assert_eq!(code(transfer.on_ack(&other_ack)), ErrorCode::UNEXPECTED);
    }
}
