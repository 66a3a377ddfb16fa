//! How large one `EventBatch` to the vendor-bridge may grow, and so how
//! large one event may be: every batch given to the event stream
//! ([`crate::stream`]) must keep within these limits (the driver's
//! pipeline forms its batches within them, the HTTP gateway splits a
//! request's events by them), and the driver's configuration refuses a
//! DRIVER_MAX_PAYLOAD that could break them.

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 2048;
/// Body bytes after which a batch takes no more events. The last event
/// taken may overshoot it by up to one event body (DRIVER_MAX_PAYLOAD).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The protobuf bytes of one event beyond its body: the serial (at most 32
/// bytes) and every field's tag and length at their widest, rounded up.
const EVENT_ENCODING_OVERHEAD: usize = 96;

/// The largest event body (DRIVER_MAX_PAYLOAD) for which every batch fits
/// in one gRPC message of `drover_proto::MAX_MESSAGE_BYTES`. A larger one
/// could build a batch the bridge refuses on every retry: the stream would
/// stop forever, so the configuration refuses it instead.
pub const MAX_EVENT_BODY_BYTES: usize = drover_proto::MAX_MESSAGE_BYTES
    - MAX_BATCH_BYTES
    - MAX_BATCH_EVENTS * EVENT_ENCODING_OVERHEAD
    // The batch's own id and the message's framing.
    - 64;

#[cfg(test)]
mod tests {
    use drover_proto::bridge::{Event, EventBatch};
    use prost::Message as _;

    use super::*;

    /// The widest event the overhead allows for: a 32-byte serial and every
    /// integer at its largest.
    #[test]
    fn the_overhead_covers_the_widest_event() {
        let batch = EventBatch {
            batch_id: u64::MAX,
            events: vec![Event {
                serial: "S".repeat(32),
                event_id: u64::MAX,
                time_ms: u64::MAX,
                kind: u32::MAX,
                body: Vec::new().into(),
                received_ms: u64::MAX,
            }],
        };
        assert!(batch.encoded_len() <= EVENT_ENCODING_OVERHEAD);
    }
}
