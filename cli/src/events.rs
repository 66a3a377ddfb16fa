//! `drover events`: the stored events ([`drover_schema::event_fields`]),
//! decoded. A body is shown as text where it is UTF-8 and as hex
//! otherwise; a command result (kind 65535) also with its command id,
//! status and output.

use bytes::Bytes;
use cwp::{CommandResult, Event, Serial};
use drover_schema::event_fields;
use serde_json::{Map, Value as Json};

use crate::args::EventsArgs;
use crate::deployment::Deployment;
use crate::exit::Exit;
use crate::output::{self, Paint, Style};
use crate::streams::{self, Entry};

/// `drover events`.
pub async fn run(mut deployment: Deployment, args: &EventsArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = args.serial.as_deref().map(crate::parse_serial).transpose()?;
    // A serial's events are all in its partition's stream.
    let streams = match &serial {
        Some(serial) => vec![deployment.layout.events(deployment.layout.partition_of(serial))],
        None => deployment.layout.event_streams(),
    };
    let keep = |entry: &Entry| is_of(entry, serial.as_ref());
    streams::print(&mut deployment, &streams, &args.window, keep, json, to_json, to_line).await?;
    Ok(Exit::Success)
}

fn is_of(entry: &Entry, serial: Option<&Serial>) -> bool {
    serial.is_none_or(|serial| entry.bytes(event_fields::SERIAL).as_deref() == Some(serial.as_bytes()))
}

/// The command result in an event of kind 65535, if it decodes.
fn result_of(entry: &Entry) -> Option<CommandResult> {
    if entry.number(event_fields::KIND) != Some(u64::from(Event::COMMAND_RESULT_KIND)) {
        return None;
    }
    CommandResult::decode(Bytes::from(entry.bytes(event_fields::BODY)?)).ok()
}

/// One event as JSON: its stream and id, its fields (numbers as numbers),
/// the body as `body` (text) or `body_hex`, and a command result decoded
/// as `result`.
pub fn to_json(entry: &Entry) -> Json {
    let mut object = Map::new();
    object.insert("stream".to_owned(), Json::from(entry.stream.as_str()));
    object.insert("id".to_owned(), Json::from(entry.entry.id.as_str()));
    for name in event_fields::ALL {
        let value = match name {
            event_fields::BODY => {
                let (field, value) = output::text_or_hex(&entry.bytes(name).unwrap_or_default(), "body");
                object.insert(field, Json::from(value));
                continue;
            }
            event_fields::EVENT_ID | event_fields::TIME_MS | event_fields::KIND | event_fields::RECEIVED_MS => {
                match entry.number(name) {
                    Some(number) => Json::from(number),
                    None => entry.text(name).map_or(Json::Null, Json::from),
                }
            }
            _ => entry.text(name).map_or(Json::Null, Json::from),
        };
        object.insert(name.to_owned(), value);
    }
    if let Some(result) = result_of(entry) {
        let (field, data) = output::text_or_hex(&result.data, "data");
        let mut decoded = Map::new();
        decoded.insert("id".to_owned(), Json::from(result.command_id.to_string()));
        decoded.insert("status".to_owned(), Json::from(result.status.to_string()));
        decoded.insert(field, Json::from(data));
        object.insert("result".to_owned(), Json::Object(decoded));
    }
    Json::Object(object)
}

/// One event for a person: when the driver received it, serial, event id,
/// kind, body.
pub fn to_line(entry: &Entry, style: Style) -> String {
    let received = entry
        .number(event_fields::RECEIVED_MS)
        .map_or_else(|| entry.entry.id.clone(), output::time_ms);
    let serial = output::printable(&entry.text(event_fields::SERIAL).unwrap_or_default());
    let event_id = entry.text(event_fields::EVENT_ID).unwrap_or_default();
    let kind = entry.text(event_fields::KIND).unwrap_or_default();
    let what = match result_of(entry) {
        Some(result) => {
            let paint = if result.status == cwp::CommandStatus::OK {
                Paint::Green
            } else {
                Paint::Red
            };
            format!(
                "result {} of command {}: {}",
                style.paint(Some(paint), &result.status.to_string()),
                result.command_id,
                output::human_bytes(&result.data)
            )
        }
        None => format!(
            "kind {}  {}",
            output::printable(&kind),
            output::human_bytes(&entry.bytes(event_fields::BODY).unwrap_or_default())
        ),
    };
    format!(
        "{}  {serial}  #{}  {what}",
        style.paint(Some(Paint::Dim), &received),
        output::printable(&event_id)
    )
}
