//! `drover devices` and `drover device`: the registry, one hash per device
//! ([`drover_schema::device_fields`]) in its partition.

use std::collections::HashMap;

use anyhow::Context as _;
use cwp::Serial;
use drover_schema::device_fields;
use futures::{StreamExt as _, TryStreamExt as _};
use redis::Value;
use serde_json::{Map, Value as Json};

use crate::args::{DeviceArgs, DevicesArgs};
use crate::deployment::Deployment;
use crate::exit::Exit;
use crate::output::{self, Cell, Paint, Style, Table};

/// Registry entries read at once.
const READS_IN_FLIGHT: usize = 32;
/// Keys asked per `SCAN`.
const SCAN_COUNT: usize = 1000;

/// One registry entry.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its serial.
    pub serial: Serial,
    /// Its fields as the bridge wrote them.
    pub fields: HashMap<String, String>,
}

impl Device {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.field(name)?.parse().ok()
    }

    /// Whether a session of it is live.
    pub fn online(&self) -> bool {
        self.field(device_fields::ONLINE) == Some("1")
    }

    /// As JSON: the serial, then every field, `online` as a boolean and the
    /// times and ids as numbers.
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        object.insert("serial".to_owned(), Json::from(self.serial.as_str()));
        let mut names: Vec<&String> = self.fields.keys().collect();
        names.sort_by_key(|name| {
            device_fields::ALL
                .iter()
                .position(|known| known == name)
                .unwrap_or(usize::MAX)
        });
        for name in names {
            let text = &self.fields[name];
            let value = match name.as_str() {
                device_fields::ONLINE => Json::from(text == "1"),
                device_fields::CONNECTED_MS | device_fields::LAST_SEEN_MS | device_fields::LAST_EVENT_ID => text
                    .parse::<u64>()
                    .map_or_else(|_| Json::from(text.as_str()), Json::from),
                _ => Json::from(text.as_str()),
            };
            object.insert(name.clone(), value);
        }
        Json::Object(object)
    }
}

/// `drover devices`.
pub async fn list(mut deployment: Deployment, args: &DevicesArgs, json: bool) -> anyhow::Result<Exit> {
    let serials = registry_serials(&mut deployment).await?;
    let reads = serials.into_iter().map(|serial| {
        let mut deployment = deployment.clone();
        async move { read(&mut deployment, serial).await }
    });
    let mut devices: Vec<Device> = futures::stream::iter(reads)
        .buffer_unordered(READS_IN_FLIGHT)
        .try_filter_map(|device| async move { Ok(device) })
        .try_collect()
        .await?;
    devices.retain(|device| {
        (!args.online || device.online())
            && args
                .driver
                .as_deref()
                .is_none_or(|driver| device.field(device_fields::DRIVER) == Some(driver))
    });
    devices.sort_by(|a, b| a.serial.as_str().cmp(b.serial.as_str()));
    if json {
        let array = Json::Array(devices.iter().map(Device::to_json).collect());
        output::line(&array.to_string())?;
        return Ok(Exit::Success);
    }
    let now = output::now_ms();
    let mut table = Table::new(&[
        "serial",
        "online",
        "driver",
        "peer",
        "firmware",
        "last seen",
        "last event",
    ]);
    for device in &devices {
        let text = |name| device.field(name).unwrap_or("-");
        table.row(vec![
            Cell::new(device.serial.as_str()),
            if device.online() {
                Cell::painted("yes", Paint::Green)
            } else {
                Cell::painted("no", Paint::Yellow)
            },
            Cell::new(text(device_fields::DRIVER)),
            Cell::new(text(device_fields::PEER)),
            Cell::new(text(device_fields::FIRMWARE)),
            Cell::new(
                device
                    .number(device_fields::LAST_SEEN_MS)
                    .map_or_else(|| "-".to_owned(), |ms| output::ago(ms, now)),
            ),
            Cell::new(text(device_fields::LAST_EVENT_ID)),
        ]);
    }
    let style = Style::detect();
    output::out(&table.render(style))?;
    let online = devices.iter().filter(|d| d.online()).count();
    let noun = if devices.len() == 1 { "device" } else { "devices" };
    eprintln!("{} {noun}, {online} online", devices.len());
    Ok(Exit::Success)
}

/// `drover device SERIAL`.
pub async fn show(mut deployment: Deployment, args: &DeviceArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    let Some(device) = read(&mut deployment, serial).await? else {
        eprintln!("drover: the registry has no device {serial}");
        return Ok(Exit::NotFound);
    };
    if json {
        output::line(&device.to_json().to_string())?;
        return Ok(Exit::Success);
    }
    let style = Style::detect();
    let now = output::now_ms();
    let mut text = String::new();
    let mut add = |name: &str, value: String, paint: Option<Paint>| {
        text.push_str(&format!(
            "{:<13} {}\n",
            style.paint(Some(Paint::Bold), &format!("{name}:")),
            style.paint(paint, &output::printable(&value))
        ));
    };
    add("serial", serial.to_string(), None);
    if device.online() {
        add("online", "yes".to_owned(), Some(Paint::Green));
    } else {
        add("online", "no".to_owned(), Some(Paint::Yellow));
    }
    let when = |ms: Option<u64>| ms.map(|ms| format!("{} ({})", output::time_ms(ms), output::ago(ms, now)));
    for name in device_fields::ALL {
        let value = match name {
            device_fields::ONLINE => continue,
            device_fields::CONNECTED_MS | device_fields::LAST_SEEN_MS => when(device.number(name)),
            _ => device.field(name).map(str::to_owned),
        };
        let label = name.strip_suffix("_ms").unwrap_or(name).replace('_', " ");
        add(&label, value.unwrap_or_else(|| "-".to_owned()), None);
    }
    output::out(&text)?;
    Ok(Exit::Success)
}

/// `serial`'s registry entry, `None` when there is none.
async fn read(deployment: &mut Deployment, serial: Serial) -> anyhow::Result<Option<Device>> {
    let key = deployment.layout.device(&serial);
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut deployment.redis)
        .await
        .with_context(|| format!("HGETALL {key}"))?;
    Ok((!fields.is_empty()).then_some(Device { serial, fields }))
}

/// Every serial with a registry entry: `SCAN` on the one Redis, or on each
/// master of a cluster (a `SCAN` sees only its node's keys).
async fn registry_serials(deployment: &mut Deployment) -> anyhow::Result<Vec<Serial>> {
    let pattern = deployment.layout.device_pattern();
    let nodes = deployment.redis.nodes().await.context("listing the cluster's nodes")?;
    let mut serials = Vec::new();
    for node in nodes.iter().filter(|node| node.master) {
        anyhow::ensure!(
            node.healthy,
            "the cluster's master {} is failing: its devices cannot be listed",
            node.address
        );
        let mut cursor = 0u64;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let reply: Value = deployment
                .redis
                .on_node(node, &scan)
                .await
                .with_context(|| format!("SCAN on {}", node.address))?;
            let (next, keys): (u64, Vec<String>) =
                redis::from_redis_value(reply).with_context(|| format!("SCAN's reply from {}", node.address))?;
            serials.extend(keys.iter().filter_map(|key| deployment.layout.serial_of_device(key)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    serials.sort();
    serials.dedup();
    Ok(serials)
}
