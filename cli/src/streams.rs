//! Reading Redis streams for `drover events` and `drover uploads`: a
//! window of what is stored (`--since`, `--limit`) over one stream or all
//! partitions' streams, merged in time order, then with `--follow` what
//! is stored after it, with no gap and nothing twice.
//!
//! Each stream's last id (its *tip*) is read first: the backlog ends
//! there and following starts after it, so an entry stored while the
//! backlog is read is printed once, by the follow.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

use crate::args::Window;
use crate::deployment::{Deployment, FOLLOW_BLOCK};
use crate::exit::usage;

/// Entries per `XRANGE`/`XREAD`.
const PAGE: usize = 1000;
/// Entries shown without `--since` or `--limit`.
const DEFAULT_LIMIT: usize = 20;
/// Between two rounds of non-blocking reads when following several
/// streams of a cluster.
const POLL: Duration = Duration::from_millis(250);

/// One stream entry and the stream it is from.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream's name.
    pub stream: String,
    /// Its id and fields.
    pub entry: StreamId,
}

impl Entry {
    /// A field's raw bytes.
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        redis::from_redis_value_ref::<Vec<u8>>(self.entry.map.get(name)?).ok()
    }

    /// A field as text (lossy: device bytes are shown, never trusted).
    pub fn text(&self, name: &str) -> Option<String> {
        self.bytes(name)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A field as a number.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.text(name)?.parse().ok()
    }

    fn order(&self) -> (u64, u64) {
        id_order(&self.entry.id)
    }
}

/// A stream id's `(ms, seq)`, for ordering entries of several streams.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// `--since` as the first stream id to show: a duration ago (`10m`), a
/// Unix time in ms (digits only), a stream id (`1714557600000-3`) or an
/// RFC 3339 time.
pub fn since_id(text: &str, now_ms: u64) -> Result<String, String> {
    let text = text.trim();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) {
        return Ok(format!("{text}-0"));
    }
    if let Some((ms, seq)) = text.split_once('-')
        && digits(ms)
        && digits(seq)
    {
        return Ok(text.to_owned());
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?
            .as_millis();
        return Ok(format!("{ms}-0"));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => {
            let ago = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
            Ok(format!("{}-0", now_ms.saturating_sub(ago)))
        }
        Err(_) => Err(format!(
            "--since {text:?}: give a duration ago (10m, 2h, 7d), a Unix time in ms, a stream id or an RFC 3339 time"
        )),
    }
}

/// [`read`], printing each kept entry on a line of its own: `to_json`'s
/// object with `--json` (`json`), `to_line`'s text otherwise.
pub async fn print(
    deployment: &mut Deployment,
    streams: &[String],
    window: &Window,
    keep: impl Fn(&Entry) -> bool,
    json: bool,
    to_json: impl Fn(&Entry) -> serde_json::Value,
    to_line: impl Fn(&Entry, crate::output::Style) -> String,
) -> anyhow::Result<()> {
    let style = crate::output::Style::detect();
    read(deployment, streams, window, keep, |entry| {
        if json {
            crate::output::line(&to_json(entry).to_string())
        } else {
            crate::output::line(&to_line(entry, style))
        }
    })
    .await
}

/// Reads `window` of `streams`, keeping the entries `keep` accepts, and
/// hands each to `emit` in time order; with `--follow`, then every new
/// one until interrupted (or `emit` fails: a closed pipe).
pub async fn read(
    deployment: &mut Deployment,
    streams: &[String],
    window: &Window,
    keep: impl Fn(&Entry) -> bool,
    mut emit: impl FnMut(&Entry) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let since = window
        .since
        .as_deref()
        .map(|text| since_id(text, crate::output::now_ms()))
        .transpose()
        .map_err(usage)?;
    let mut tips = HashMap::new();
    for stream in streams {
        tips.insert(stream.clone(), tip(deployment, stream).await?);
    }
    let mut backlog = Vec::new();
    for stream in streams {
        let Some(tip) = &tips[stream] else { continue };
        backlog.extend(match &since {
            Some(start) => forward(deployment, stream, start, tip, window.limit, &keep).await?,
            None => newest(deployment, stream, tip, window.limit.unwrap_or(DEFAULT_LIMIT), &keep).await?,
        });
    }
    backlog.sort_by_key(Entry::order);
    match (&since, window.limit) {
        (Some(_), Some(limit)) => backlog.truncate(limit),
        (None, limit) => {
            let limit = limit.unwrap_or(DEFAULT_LIMIT);
            backlog.drain(..backlog.len().saturating_sub(limit));
        }
        (Some(_), None) => {}
    }
    for entry in &backlog {
        emit(entry)?;
    }
    if !window.follow {
        return Ok(());
    }
    let mut after: HashMap<String, String> = tips
        .into_iter()
        .map(|(stream, tip)| (stream, tip.unwrap_or_else(|| "0-0".to_owned())))
        .collect();
    loop {
        let mut fresh = if streams.len() == 1 || !deployment.redis.is_cluster() {
            read_blocking(deployment, streams, &after).await?
        } else {
            read_each(deployment, streams, &after).await?
        };
        if fresh.is_empty() && streams.len() > 1 && deployment.redis.is_cluster() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        fresh.sort_by_key(Entry::order);
        for entry in &fresh {
            after.insert(entry.stream.clone(), entry.entry.id.clone());
            if keep(entry) {
                emit(entry)?;
            }
        }
    }
}

/// The stream's last id, `None` while it is empty.
async fn tip(deployment: &mut Deployment, stream: &str) -> anyhow::Result<Option<String>> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut deployment.redis)
        .await
        .with_context(|| format!("XREVRANGE {stream}"))?;
    Ok(reply.ids.into_iter().next().map(|entry| entry.id))
}

/// One page of `XRANGE` or `XREVRANGE` (`command`) over `stream` from
/// `from` to `to`, and, when the page was full, where the next one starts
/// (`(` and its last id: just past it).
async fn page(
    deployment: &mut Deployment,
    command: &str,
    stream: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<(Vec<Entry>, Option<String>)> {
    let reply: StreamRangeReply = redis::cmd(command)
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(PAGE)
        .query_async(&mut deployment.redis)
        .await
        .with_context(|| format!("{command} {stream}"))?;
    let next = match reply.ids.last() {
        Some(last) if reply.ids.len() == PAGE => Some(format!("({}", last.id)),
        _ => None,
    };
    let entries = reply
        .ids
        .into_iter()
        .map(|entry| Entry {
            stream: stream.to_owned(),
            entry,
        })
        .collect();
    Ok((entries, next))
}

/// Entries from `start` up to `tip`, oldest first, at most `limit` kept.
async fn forward(
    deployment: &mut Deployment,
    stream: &str,
    start: &str,
    tip: &str,
    limit: Option<usize>,
    keep: &impl Fn(&Entry) -> bool,
) -> anyhow::Result<Vec<Entry>> {
    let mut kept = Vec::new();
    let mut from = start.to_owned();
    loop {
        let (entries, last) = page(deployment, "XRANGE", stream, &from, tip).await?;
        for entry in entries {
            if keep(&entry) {
                kept.push(entry);
                if limit.is_some_and(|limit| kept.len() >= limit) {
                    return Ok(kept);
                }
            }
        }
        match last {
            Some(last) => from = last,
            None => return Ok(kept),
        }
    }
}

/// The newest `limit` kept entries up to `tip`, newest first.
async fn newest(
    deployment: &mut Deployment,
    stream: &str,
    tip: &str,
    limit: usize,
    keep: &impl Fn(&Entry) -> bool,
) -> anyhow::Result<Vec<Entry>> {
    let mut kept = Vec::new();
    let mut until = tip.to_owned();
    while kept.len() < limit {
        let (entries, last) = page(deployment, "XREVRANGE", stream, &until, "-").await?;
        for entry in entries {
            if keep(&entry) && kept.len() < limit {
                kept.push(entry);
            }
        }
        match last {
            Some(last) => until = last,
            None => break,
        }
    }
    Ok(kept)
}

/// One `XREAD BLOCK` over all `streams` (one Redis, or one stream of a
/// cluster): whatever came after `after`, or nothing after a while.
async fn read_blocking(
    deployment: &mut Deployment,
    streams: &[String],
    after: &HashMap<String, String>,
) -> anyhow::Result<Vec<Entry>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(PAGE)
        .arg("BLOCK")
        .arg(u64::try_from(FOLLOW_BLOCK.as_millis()).unwrap_or(5000))
        .arg("STREAMS")
        .arg(streams)
        .arg(streams.iter().map(|stream| after[stream].as_str()).collect::<Vec<_>>())
        .query_async(&mut deployment.redis)
        .await
        .context("XREAD")?;
    Ok(entries_of(reply))
}

/// A cluster keeps each partition's stream in its own slot, and one
/// `XREAD` names keys of one slot only; a blocking read per stream would
/// queue behind the others on the shared connection. So: one
/// non-blocking `XREAD` per stream, all at once.
async fn read_each(
    deployment: &mut Deployment,
    streams: &[String],
    after: &HashMap<String, String>,
) -> anyhow::Result<Vec<Entry>> {
    let reads = streams.iter().map(|stream| {
        let mut redis = deployment.redis.clone();
        let after = after[stream].clone();
        async move {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(PAGE)
                .arg("STREAMS")
                .arg(stream)
                .arg(after)
                .query_async(&mut redis)
                .await
                .with_context(|| format!("XREAD {stream}"))?;
            anyhow::Ok(entries_of(reply))
        }
    });
    let batches: Vec<Vec<Entry>> = futures::stream::iter(reads).buffer_unordered(16).try_collect().await?;
    Ok(batches.into_iter().flatten().collect())
}

fn entries_of(reply: Option<StreamReadReply>) -> Vec<Entry> {
    reply
        .into_iter()
        .flat_map(|reply| reply.keys)
        .flat_map(|key| {
            let stream = key.key;
            key.ids.into_iter().map(move |entry| Entry {
                stream: stream.clone(),
                entry,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn since_is_a_duration_ago_a_unix_time_a_stream_id_or_a_date() {
        let now = 1_714_557_600_000;
        assert_eq!(since_id("10m", now).unwrap(), "1714557000000-0");
        assert_eq!(since_id("1h 30m", now).unwrap(), "1714552200000-0");
        assert_eq!(since_id("1714557600123", now).unwrap(), "1714557600123-0");
        assert_eq!(since_id("1714557600123-7", now).unwrap(), "1714557600123-7");
        assert_eq!(since_id("2024-05-01T10:00:00Z", now).unwrap(), "1714557600000-0");
        assert_eq!(since_id("100y", now).unwrap(), "0-0", "before the epoch is the start");
        for bad in ["", "yesterday", "12-x", "-5m"] {
            assert!(since_id(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_of_several_streams_are_ordered_by_id() {
        assert!(id_order("1714557600000-2") < id_order("1714557600001-0"));
        assert!(id_order("9-10") > id_order("9-9"));
    }
}
