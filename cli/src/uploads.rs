//! `drover uploads`: the finished uploads recorded in `cwp:uploads`
//! ([`drover_schema::upload_fields`]).

use drover_schema::upload_fields;
use serde_json::{Map, Value as Json};

use crate::args::UploadsArgs;
use crate::deployment::Deployment;
use crate::exit::Exit;
use crate::output::{self, Paint, Style};
use crate::streams::{self, Entry};

/// `drover uploads`.
pub async fn run(mut deployment: Deployment, args: &UploadsArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = args.serial.as_deref().map(crate::parse_serial).transpose()?;
    let keep = |entry: &Entry| {
        serial
            .as_ref()
            .is_none_or(|serial| entry.bytes(upload_fields::SERIAL).as_deref() == Some(serial.as_bytes()))
    };
    let streams = [drover_schema::UPLOADS.to_owned()];
    streams::print(&mut deployment, &streams, &args.window, keep, json, to_json, to_line).await?;
    Ok(Exit::Success)
}

/// One upload as JSON: its stream id and every field, the size and time as
/// numbers.
pub fn to_json(entry: &Entry) -> Json {
    let mut object = Map::new();
    object.insert("id".to_owned(), Json::from(entry.entry.id.as_str()));
    for name in upload_fields::ALL {
        let value = match (name, entry.number(name)) {
            (upload_fields::SIZE | upload_fields::COMPLETED_MS, Some(number)) => Json::from(number),
            _ => entry.text(name).map_or(Json::Null, Json::from),
        };
        object.insert(name.to_owned(), value);
    }
    Json::Object(object)
}

/// One upload for a person: when, serial, name, size, the start of its
/// SHA-256, where it lies under `UPLOAD_DIR`.
pub fn to_line(entry: &Entry, style: Style) -> String {
    let text = |name| output::printable(&entry.text(name).unwrap_or_default());
    let completed = entry
        .number(upload_fields::COMPLETED_MS)
        .map_or_else(|| entry.entry.id.clone(), output::time_ms);
    let sha256 = text(upload_fields::SHA256);
    format!(
        "{}  {}  {}  {} bytes  sha256 {}…  {}",
        style.paint(Some(Paint::Dim), &completed),
        text(upload_fields::SERIAL),
        text(upload_fields::NAME),
        text(upload_fields::SIZE),
        sha256.chars().take(12).collect::<String>(),
        text(upload_fields::PATH),
    )
}
