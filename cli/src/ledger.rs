//! Durable commands (README, "Durable commands"): `drover send --queue`
//! runs the ledger's enqueue script ([`drover_schema::ledger`]) exactly as
//! the main application would, then publishes what it returns: the
//! outcomes on the device's result channel and the wake-up on its command
//! channel. `drover queue` reads the ledger; `drover cancel` runs the
//! cancel script.
//!
//! With `--wait`, the result channel is subscribed before the enqueue, as
//! for `drover send`, and every outcome of the command is printed until
//! its last one.

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use drover_redis::{Delivery, Subscriber};
use drover_schema::ledger::{self, cancelled, enqueued, status};
use drover_schema::{command_fields, ledger_fields, result_fields};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use crate::args::{CancelArgs, QueueArgs, SendArgs};
use crate::deployment::Deployment;
use crate::exit::{Exit, usage};
use crate::output::{self, Cell, Style, Table};
use crate::send::Body;

static ENQUEUE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ledger::ENQUEUE_SCRIPT));
static CANCEL: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ledger::CANCEL_SCRIPT));

/// The longest command name the protocol carries (a `str8`).
const MAX_NAME: usize = 255;

/// `drover send --queue`.
pub async fn enqueue(mut deployment: Deployment, args: &SendArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    if args.name.is_empty() || args.name.len() > MAX_NAME {
        return Err(usage(format!(
            "a command's name is 1-{MAX_NAME} bytes, not {}",
            args.name.len()
        )));
    }
    let body_b64 = match crate::send::body(args)? {
        Body::None => String::new(),
        Body::Text(text) => base64::engine::general_purpose::STANDARD.encode(text),
        Body::Base64(b64) => b64,
    };
    let ttl_ms = u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX);
    if ttl_ms == 0 {
        return Err(usage("--ttl must be at least 1ms"));
    }
    let max_queued = crate::config::max_queued()?;
    let id = args.id.unwrap_or_else(uuid::Uuid::new_v4).hyphenated().to_string();
    let results_channel = drover_schema::COMMAND_RESULTS.name(&serial);

    let mut results = if args.wait {
        Some(crate::send::subscribe_results(&deployment, &results_channel).await?)
    } else {
        None
    };

    let partition = deployment.layout.partition_of(&serial);
    let ledger_key = deployment.layout.ledger(&serial);
    let reply: Vec<String> = ENQUEUE
        .key(&ledger_key)
        .key(deployment.layout.command_outcomes(partition))
        .key(deployment.layout.ledger_due(partition))
        .arg(serial.as_str())
        .arg(&id)
        .arg(&args.name)
        .arg(&body_b64)
        .arg(ttl_ms)
        .arg(max_queued)
        .invoke_async(&mut deployment.redis)
        .await
        .with_context(|| format!("enqueueing in {ledger_key}"))?;
    let [answer, _, notices @ ..] = reply.as_slice() else {
        anyhow::bail!("the enqueue script answered {reply:?}");
    };
    for notice in notices {
        deployment.publish(&results_channel, notice).await?;
    }
    match answer.as_str() {
        enqueued::QUEUED => {
            let wake = serde_json::json!({ command_fields::LEDGER: true }).to_string();
            deployment
                .publish(&drover_schema::COMMANDS.name(&serial), &wake)
                .await?;
        }
        enqueued::DUPLICATE => {
            eprintln!("drover: command {id} is pending for {serial} already: nothing changed");
        }
        enqueued::FULL => {
            eprintln!(
                "drover: {serial} has {max_queued} durable commands pending (CMD_MAX_QUEUED): \
                 refused, nothing was queued (drover queue {serial}; drover cancel {serial} ID)"
            );
            if json {
                output::line(&serde_json::json!({"id": id, "serial": serial.as_str(), "status": "FULL"}).to_string())?;
            }
            return Ok(Exit::Refused);
        }
        other => anyhow::bail!("the enqueue script answered {other:?}"),
    }
    let Some(results) = results.as_mut() else {
        if json {
            output::line(&serde_json::json!({"id": id, "serial": serial.as_str(), "status": answer}).to_string())?;
        } else {
            output::line(&id)?;
            eprintln!("queued {} for {serial} (command {id})", args.name);
        }
        return Ok(Exit::Success);
    };
    if !json {
        output::line(&id)?;
    }
    follow_outcomes(results, &results_channel, &id, args.timeout, json).await
}

/// Prints each outcome of command `id` until its last one; the exit code
/// it means. A `DUPLICATE` enqueue follows the pending command too.
async fn follow_outcomes(
    results: &mut Subscriber,
    channel: &str,
    id: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<Exit> {
    let deadline = Instant::now() + timeout;
    loop {
        let delivery = tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                eprintln!(
                    "drover: command {id} has no final outcome within {}; it stays in the ledger until its ttl",
                    humantime::format_duration(timeout)
                );
                return Ok(Exit::Timeout);
            }
            delivery = results.next() => delivery,
        };
        match delivery {
            Some(Delivery::Message { payload, .. }) => {
                let Ok(Json::Object(notice)) = serde_json::from_slice::<Json>(&payload) else {
                    continue;
                };
                if notice.get(result_fields::ID).and_then(Json::as_str) != Some(id) {
                    continue;
                }
                let state = notice
                    .get(result_fields::STATUS)
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_owned();
                let exit = match state.as_str() {
                    status::QUEUED | status::SENT => None,
                    "OK" => Some(Exit::Success),
                    status::EXPIRED | status::CANCELLED | status::REJECTED | "UNDELIVERED" => Some(Exit::NotDelivered),
                    _ => Some(Exit::DeviceFailed),
                };
                if json {
                    output::line(&Json::Object(notice.clone()).to_string())?;
                } else {
                    print_outcome(&notice, &state, exit)?;
                }
                if let Some(exit) = exit {
                    return Ok(exit);
                }
            }
            Some(Delivery::Dropped(_) | Delivery::Disconnected) => {
                results
                    .subscribe(vec![channel.to_owned()])
                    .await
                    .with_context(|| format!("subscribing to {channel} again"))?;
            }
            None => anyhow::bail!("the connection to Redis was lost while waiting for outcomes"),
        }
    }
}

fn print_outcome(notice: &Map<String, Json>, state: &str, exit: Option<Exit>) -> std::io::Result<()> {
    match exit {
        None => {
            let attempt = notice.get(result_fields::ATTEMPT).and_then(Json::as_u64);
            match attempt {
                Some(attempt) => output::line(&format!("{state} (attempt {attempt})")),
                None => output::line(state),
            }
        }
        Some(exit) => crate::send::print_result(notice, state, exit),
    }
}

/// One pending command, as `drover queue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    id: String,
    entry: Map<String, Json>,
}

impl Pending {
    fn number(&self, field: &str) -> u64 {
        self.entry.get(field).and_then(Json::as_f64).map_or(0, |n| n as u64)
    }

    fn text(&self, field: &str) -> &str {
        self.entry.get(field).and_then(Json::as_str).unwrap_or("")
    }
}

/// `drover queue`.
pub async fn list(mut deployment: Deployment, args: &QueueArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    let key = deployment.layout.ledger(&serial);
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut deployment.redis)
        .await
        .with_context(|| format!("HGETALL {key}"))?;
    let mut pending: Vec<Pending> = fields
        .into_iter()
        .filter(|(field, _)| field != ledger_fields::SEQ)
        .filter_map(|(id, raw)| match serde_json::from_str::<Json>(&raw) {
            Ok(Json::Object(entry)) => Some(Pending { id, entry }),
            _ => None,
        })
        .collect();
    pending.sort_by_key(|p| p.number(ledger_fields::SEQ));
    let now = output::now_ms();
    if json {
        let array: Vec<Json> = pending
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "name": p.text(ledger_fields::NAME),
                    "state": p.text(ledger_fields::STATE),
                    "attempts": p.number(ledger_fields::ATTEMPTS),
                    "enqueued_ms": p.number(ledger_fields::ENQUEUED_MS),
                    "expires_ms": p.number(ledger_fields::EXPIRES_MS),
                    "expired": p.number(ledger_fields::EXPIRES_MS) <= now,
                })
            })
            .collect();
        output::line(&Json::Array(array).to_string())?;
        return Ok(Exit::Success);
    }
    if pending.is_empty() {
        eprintln!("no durable commands pending for {serial}");
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&["ID", "NAME", "STATE", "ATTEMPTS", "QUEUED", "EXPIRES"]);
    for p in &pending {
        let expires = p.number(ledger_fields::EXPIRES_MS);
        let state = if expires <= now {
            "EXPIRED".to_owned()
        } else {
            p.text(ledger_fields::STATE).to_owned()
        };
        table.row(vec![
            Cell::new(&p.id),
            Cell::new(output::printable(p.text(ledger_fields::NAME))),
            Cell::new(state),
            Cell::new(p.number(ledger_fields::ATTEMPTS).to_string()),
            Cell::new(output::ago(p.number(ledger_fields::ENQUEUED_MS), now)),
            Cell::new(output::time_ms(expires)),
        ]);
    }
    output::out(&table.render(Style::detect()))?;
    Ok(Exit::Success)
}

/// `drover cancel`.
pub async fn cancel(mut deployment: Deployment, args: &CancelArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    let id = args.id.hyphenated().to_string();
    let partition = deployment.layout.partition_of(&serial);
    let key = deployment.layout.ledger(&serial);
    let reply: Vec<String> = CANCEL
        .key(&key)
        .key(deployment.layout.command_outcomes(partition))
        .arg(serial.as_str())
        .arg(&id)
        .invoke_async(&mut deployment.redis)
        .await
        .with_context(|| format!("cancelling in {key}"))?;
    let [answer, detail] = reply.as_slice() else {
        anyhow::bail!("the cancel script answered {reply:?}");
    };
    let (exit, message) = match answer.as_str() {
        cancelled::CANCELLED => {
            deployment
                .publish(&drover_schema::COMMAND_RESULTS.name(&serial), detail)
                .await?;
            (Exit::Success, format!("cancelled command {id} for {serial}"))
        }
        cancelled::SENT => (
            Exit::Refused,
            format!("drover: command {id} was sent to {serial} already (attempt {detail}): it stays pending"),
        ),
        cancelled::UNKNOWN => (
            Exit::NotFound,
            format!("drover: no command {id} is pending for {serial} (answered, expired, cancelled or never queued)"),
        ),
        other => anyhow::bail!("the cancel script answered {other:?}"),
    };
    if json {
        output::line(&serde_json::json!({"id": id, "serial": serial.as_str(), "status": answer}).to_string())?;
    }
    eprintln!("{message}");
    Ok(exit)
}
