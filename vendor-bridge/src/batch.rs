//! A driver's `EventBatch` checked before it may reach Redis: every serial
//! is a valid [`cwp::Serial`] (it becomes part of key and channel names),
//! every kind fits the wire's u16, and every command result (kind `0xFFFF`)
//! already has the JSON notice that the store publishes when the result is
//! newly stored.

use base64::Engine as _;
use drover_proto::bridge::{Event, EventBatch};
use serde::Serialize;

/// The event kind of a command result (CWP/1 §Commands).
pub const COMMAND_RESULT_KIND: u32 = cwp::Event::COMMAND_RESULT_KIND as u32;

/// A batch whose every event passed the checks.
#[derive(Debug)]
pub struct ValidBatch {
    /// The driver's id for the batch, echoed in `BatchDurable`.
    pub batch_id: u64,
    /// The events, in the driver's order, exactly as received.
    pub events: Vec<Event>,
    /// Each event's serial, checked: `serials[i]` is `events[i].serial`.
    pub serials: Vec<cwp::Serial>,
    /// The notice on the device's result channel
    /// ([`drover_schema::COMMAND_RESULTS`]) of each command-result event, in
    /// the order those events appear in `events`.
    pub results: Vec<ResultNotice>,
    /// Bytes of serials, bodies and notices: bounds how many batches one
    /// script call may carry.
    pub payload_bytes: usize,
}

/// A command-result event's notice, and the command it answers (what
/// settles a durable command in its ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultNotice {
    /// The JSON published on the device's result channel.
    pub notice: String,
    /// The command's id, hyphenated; empty when the result is unreadable.
    pub command_id: String,
}

/// Why a batch was refused. The driver validates the same things, so this
/// only happens with a broken or hostile client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatch {
    /// The serial is not 1–32 bytes of `[A-Za-z0-9._-]`.
    #[error("batch {batch_id}, event {index}: invalid serial {serial:?}")]
    Serial {
        /// The batch's id.
        batch_id: u64,
        /// The event's position in the batch.
        index: usize,
        /// The serial as sent, for the log.
        serial: String,
    },
    /// The kind does not fit in the wire's u16.
    #[error("batch {batch_id}, event {index}: kind {kind} is above 65535")]
    Kind {
        /// The batch's id.
        batch_id: u64,
        /// The event's position in the batch.
        index: usize,
        /// The kind as sent.
        kind: u32,
    },
}

impl ValidBatch {
    /// Checks every event of `batch` and prepares its command-result notices.
    pub fn check(batch: EventBatch) -> Result<Self, InvalidBatch> {
        let batch_id = batch.batch_id;
        let mut serials = Vec::with_capacity(batch.events.len());
        let mut results = Vec::new();
        let mut payload_bytes = 0;
        for (index, event) in batch.events.iter().enumerate() {
            let serial = cwp::Serial::from_bytes(event.serial.as_bytes()).map_err(|_| InvalidBatch::Serial {
                batch_id,
                index,
                serial: event.serial.chars().take(64).collect(),
            })?;
            if event.kind > u32::from(u16::MAX) {
                return Err(InvalidBatch::Kind {
                    batch_id,
                    index,
                    kind: event.kind,
                });
            }
            payload_bytes += serial.as_bytes().len() + event.body.len();
            if event.kind == COMMAND_RESULT_KIND {
                let notice = command_result_notice(&serial, event.body.clone(), event.received_ms);
                payload_bytes += notice.notice.len() + notice.command_id.len();
                results.push(notice);
            }
            serials.push(serial);
        }
        Ok(Self {
            batch_id,
            events: batch.events,
            serials,
            results,
            payload_bytes,
        })
    }
}

/// The JSON published on the device's result channel
/// ([`drover_schema::COMMAND_RESULTS`]) for a command-result event:
/// `{"id","serial","status","data"}`, `data` being the result's output as
/// text, or `null` with `data_b64` when it is not UTF-8, and `time_ms`, when
/// the driver received it. A body that is not a command result gives
/// `"status":"INVALID"` and an `error`.
pub fn command_result_notice(serial: &cwp::Serial, body: bytes::Bytes, received_ms: u64) -> ResultNotice {
    let mut command_id = String::new();
    let notice = match cwp::CommandResult::decode(body) {
        Ok(result) => {
            let (data, data_b64) = match std::str::from_utf8(&result.data) {
                Ok(text) => (Some(text), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&result.data)),
                ),
            };
            command_id = result.command_id.to_string();
            let notice = CommandResultNotice {
                id: Some(command_id.clone()),
                serial: serial.as_str(),
                status: result.status.to_string(),
                data,
                data_b64,
                error: None,
                time_ms: received_ms,
            };
            serde_json::to_string(&notice)
        }
        Err(malformation) => serde_json::to_string(&CommandResultNotice {
            id: None,
            serial: serial.as_str(),
            status: "INVALID".to_owned(),
            data: None,
            data_b64: None,
            error: Some(format!("the event body is not a command result: {malformation}")),
            time_ms: received_ms,
        }),
    };
    ResultNotice {
        // Serialising strings and options into JSON cannot fail.
        notice: notice.unwrap_or_default(),
        command_id,
    }
}

/// The result channel's message for a device's result (its fields:
/// [`drover_schema::result_fields`]).
#[derive(Serialize)]
struct CommandResultNotice<'a> {
    id: Option<String>,
    serial: &'a str,
    /// `OK`, `FAILED`, `UNSUPPORTED`, `BUSY`, or the status byte in decimal.
    status: String,
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    time_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cwp::{CommandId, CommandResult, CommandStatus};

    fn serial() -> cwp::Serial {
        "CTRL-1".parse().unwrap()
    }

    fn result_body(status: u8, data: &'static [u8]) -> Bytes {
        CommandResult {
            command_id: CommandId([0x11; 16]),
            status: CommandStatus(status),
            data: Bytes::from_static(data),
        }
        .encode()
    }

    #[test]
    fn a_text_result_is_published_with_its_status_name() {
        assert_eq!(
            command_result_notice(&serial(), result_body(0, b"rebooting"), 42).notice,
            r#"{"id":"11111111-1111-1111-1111-111111111111","serial":"CTRL-1","status":"OK","data":"rebooting","time_ms":42}"#
        );
        assert_eq!(
            command_result_notice(&serial(), result_body(0, b"rebooting"), 42).command_id,
            "11111111-1111-1111-1111-111111111111"
        );
    }

    #[test]
    fn a_binary_result_carries_base64_and_an_unknown_status_its_number() {
        assert_eq!(
            command_result_notice(&serial(), result_body(9, b"\xff\x00"), 42).notice,
            r#"{"id":"11111111-1111-1111-1111-111111111111","serial":"CTRL-1","status":"9","data":null,"data_b64":"/wA=","time_ms":42}"#
        );
    }

    #[test]
    fn a_body_too_short_for_a_result_is_published_as_invalid() {
        assert_eq!(
            command_result_notice(&serial(), Bytes::from_static(b"short"), 42).notice,
            r#"{"id":null,"serial":"CTRL-1","status":"INVALID","data":null,"error":"the event body is not a command result: body too short","time_ms":42}"#
        );
    }

    #[test]
    fn every_notice_uses_the_schemas_field_names() {
        for notice in [
            command_result_notice(&serial(), result_body(0, b"rebooting"), 1).notice,
            command_result_notice(&serial(), result_body(9, b"\xff\x00"), 1).notice,
            command_result_notice(&serial(), Bytes::from_static(b"short"), 1).notice,
        ] {
            let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&notice).unwrap();
            for field in fields.keys() {
                assert!(
                    drover_schema::result_fields::ALL.contains(&field.as_str()),
                    "{field} in {notice}"
                );
            }
        }
    }

    fn event(serial: &str, kind: u32) -> Event {
        Event {
            serial: serial.to_owned(),
            event_id: 1,
            kind,
            ..Event::default()
        }
    }

    #[test]
    fn serials_and_kinds_are_checked() {
        let bad_serial = EventBatch {
            batch_id: 7,
            events: vec![event("CTRL-1", 1), event("CTRL 2", 1)],
        };
        assert!(matches!(
            ValidBatch::check(bad_serial),
            Err(InvalidBatch::Serial {
                batch_id: 7,
                index: 1,
                ..
            })
        ));
        let bad_kind = EventBatch {
            batch_id: 8,
            events: vec![event("CTRL-1", 65536)],
        };
        assert!(matches!(
            ValidBatch::check(bad_kind),
            Err(InvalidBatch::Kind { kind: 65536, .. })
        ));
        let good = ValidBatch::check(EventBatch {
            batch_id: 9,
            events: vec![event("CTRL-1", 65535), event("CTRL-1", 3)],
        })
        .unwrap();
        assert_eq!(good.results.len(), 1);
    }
}
