//! `drover send`: a command published on the device's channel exactly as
//! an operator would with `redis-cli` ([`drover_schema::command_fields`]),
//! and with `--wait` its result from the result channel
//! ([`drover_schema::result_fields`]).
//!
//! The result channel is subscribed *before* the command is published: a
//! device may answer within a millisecond, and pub/sub keeps nothing for
//! late subscribers. The bridge publishes there both the device's result
//! and the notice of a command that never reached it (`REJECTED`,
//! `UNDELIVERED`), so one subscription tells every outcome apart.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use drover_redis::{Delivery, Subscriber};
use drover_schema::{command_fields, result_fields};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use crate::args::SendArgs;
use crate::deployment::{Deployment, TIMEOUTS};
use crate::exit::{Exit, usage};
use crate::output::{self, Paint, Progress, Style};

/// The longest command name the protocol carries (a `str8`).
const MAX_NAME: usize = 255;

/// The body as it goes into the command's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Text(String),
    Base64(String),
}

/// `drover send`.
pub async fn run(mut deployment: Deployment, args: &SendArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    if args.name.is_empty() || args.name.len() > MAX_NAME {
        return Err(usage(format!(
            "a command's name is 1-{MAX_NAME} bytes, not {}",
            args.name.len()
        )));
    }
    let body = body(args)?;
    let id = args.id.unwrap_or_else(uuid::Uuid::new_v4).hyphenated().to_string();
    let message = command_json(&id, &args.name, &body);
    let results_channel = drover_schema::COMMAND_RESULTS.name(&serial);

    let mut results = if args.wait {
        Some(crate::send::subscribe_results(&deployment, &results_channel).await?)
    } else {
        None
    };

    let subscribers = deployment
        .publish(&drover_schema::COMMANDS.name(&serial), &message)
        .await?;
    if subscribers == 0 {
        if json {
            output::line(&sent_json(&id, serial.as_str(), subscribers).to_string())?;
        }
        eprintln!("drover: {serial} is offline (0 subscribers): nothing was sent, nothing is queued");
        return Ok(Exit::Offline);
    }
    let Some(results) = results.as_mut() else {
        if json {
            output::line(&sent_json(&id, serial.as_str(), subscribers).to_string())?;
        } else {
            output::line(&id)?;
            eprintln!("sent {} to {serial} (command {id})", args.name);
        }
        return Ok(Exit::Success);
    };

    let Some(result) = wait_for_result(results, &results_channel, &id, serial.as_str(), args.timeout).await? else {
        eprintln!(
            "drover: no result from {serial} within {} (command {id}); the device may still answer: \
             its result will be stored as an event of kind 65535 (drover events --serial {serial})",
            humantime::format_duration(args.timeout)
        );
        return Ok(Exit::Timeout);
    };
    let status = result.get(result_fields::STATUS).and_then(Json::as_str).unwrap_or("");
    let exit = match status {
        "OK" => Exit::Success,
        "REJECTED" | "UNDELIVERED" => Exit::NotDelivered,
        _ => Exit::DeviceFailed,
    };
    if json {
        output::line(&Json::Object(result.clone()).to_string())?;
    } else {
        print_result(&result, status, exit)?;
    }
    Ok(exit)
}

/// Waits at most `timeout` for the notice about command `id`; `None` when
/// none came. Notices about other commands (another operator's) are
/// skipped.
async fn wait_for_result(
    results: &mut Subscriber,
    channel: &str,
    id: &str,
    serial: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Map<String, Json>>> {
    let started = Instant::now();
    let deadline = started + timeout;
    let progress = Progress::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = tick.tick() => progress.update(&format!(
                "waiting for {serial}'s result… {}s of {}s",
                started.elapsed().as_secs(),
                timeout.as_secs_f64().ceil()
            )),
            delivery = results.next() => match delivery {
                Some(Delivery::Message { payload, .. }) => {
                    let Ok(Json::Object(notice)) = serde_json::from_slice::<Json>(&payload) else {
                        continue;
                    };
                    if notice.get(result_fields::ID).and_then(Json::as_str) == Some(id) {
                        return Ok(Some(notice));
                    }
                }
                // The cluster moved the channel's slot, or lost a node: a
                // notice published meanwhile is gone, but one still to
                // come is caught on the channel's new owner.
                Some(Delivery::Dropped(_) | Delivery::Disconnected) => {
                    results
                        .subscribe(vec![channel.to_owned()])
                        .await
                        .with_context(|| format!("subscribing to {channel} again"))?;
                }
                None => anyhow::bail!("the connection to Redis was lost while waiting for the result"),
            },
        }
    }
}

/// For a person: the status, painted, then the output.
/// A subscription to `channel`, a device's result channel, made before
/// the command goes out so that a quick answer is not missed.
pub(crate) async fn subscribe_results(deployment: &Deployment, channel: &str) -> anyhow::Result<Subscriber> {
    let mut subscriber = Subscriber::connect(&deployment.target, TIMEOUTS)
        .await
        .with_context(|| format!("subscribing to results at {}", deployment.target.describe()))?;
    subscriber
        .subscribe(vec![channel.to_owned()])
        .await
        .with_context(|| format!("subscribing to {channel}"))?;
    Ok(subscriber)
}

pub(crate) fn print_result(result: &Map<String, Json>, status: &str, exit: Exit) -> std::io::Result<()> {
    let style = Style::detect();
    let paint = match exit {
        Exit::Success => Paint::Green,
        Exit::DeviceFailed if status == "BUSY" => Paint::Yellow,
        _ => Paint::Red,
    };
    let text = |field: &str| result.get(field).and_then(Json::as_str);
    let mut lines = vec![style.paint(Some(paint), &output::printable(status))];
    if let Some(error) = text(result_fields::ERROR) {
        lines.push(output::printable(error));
    }
    match (text(result_fields::DATA), text(result_fields::DATA_B64)) {
        (Some(data), _) if !data.is_empty() => lines.push(output::printable(data)),
        (_, Some(b64)) => lines.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_or_else(|_| format!("(data_b64) {b64}"), |bytes| output::human_bytes(&bytes)),
        ),
        _ => {}
    }
    output::line(&lines.join("\n"))
}

/// The body from the arguments; a file's bytes go as text when they are
/// UTF-8, as base64 otherwise.
pub(crate) fn body(args: &SendArgs) -> anyhow::Result<Body> {
    if let Some(text) = &args.body {
        return Ok(Body::Text(text.clone()));
    }
    if let Some(b64) = &args.body_b64 {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|err| usage(format!("--body-b64 is not base64: {err}")))?;
        return Ok(Body::Base64(b64.trim().to_owned()));
    }
    if let Some(path) = &args.body_file {
        let bytes = std::fs::read(path).map_err(|err| usage(format!("--body-file {}: {err}", path.display())))?;
        return Ok(match String::from_utf8(bytes) {
            Ok(text) => Body::Text(text),
            Err(err) => Body::Base64(base64::engine::general_purpose::STANDARD.encode(err.into_bytes())),
        });
    }
    Ok(Body::None)
}

/// The command as published.
fn command_json(id: &str, name: &str, body: &Body) -> String {
    let mut object = Map::new();
    object.insert(command_fields::ID.to_owned(), Json::from(id));
    object.insert(command_fields::NAME.to_owned(), Json::from(name));
    match body {
        Body::None => {}
        Body::Text(text) => {
            object.insert(command_fields::BODY.to_owned(), Json::from(text.as_str()));
        }
        Body::Base64(b64) => {
            object.insert(command_fields::BODY_B64.to_owned(), Json::from(b64.as_str()));
        }
    }
    Json::Object(object).to_string()
}

/// What `--json` prints for a command sent without waiting.
fn sent_json(id: &str, serial: &str, subscribers: i64) -> Json {
    serde_json::json!({ "id": id, "serial": serial, "subscribers": subscribers })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_command_is_the_json_an_operator_would_publish() {
        let parsed = |id: &str, name: &str, body: &Body| -> Json {
            serde_json::from_str(&command_json(id, name, body)).unwrap()
        };
        assert_eq!(
            parsed(
                "11111111-1111-1111-1111-111111111111",
                "reboot",
                &Body::Text("{\"delay_s\":5}".into())
            ),
            serde_json::json!({"id": "11111111-1111-1111-1111-111111111111", "name": "reboot", "body": "{\"delay_s\":5}"})
        );
        assert_eq!(
            parsed("i", "blink", &Body::Base64("AAEC".into())),
            serde_json::json!({"id": "i", "name": "blink", "body_b64": "AAEC"})
        );
        assert_eq!(
            parsed("i", "ping", &Body::None),
            serde_json::json!({"id": "i", "name": "ping"})
        );
    }
}
