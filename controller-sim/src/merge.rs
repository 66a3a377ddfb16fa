//! `--procs`: what a worker tells its parent, one JSON object per line on
//! its stdout, and how the parent merges the workers' reports into the
//! figures of one run.
//!
//! Counts add; rates follow from the added counts; times since the start
//! (the last first handshake, the uploads' first and last) are shifted by
//! each worker's own start to one clock; latency percentiles come from the
//! workers' HDR histograms added bucket by bucket (sent whole, in the V2
//! serialization, base64), never from averaged percentiles.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use controller_sim::device::{LatencyHistograms, LatencySummary, StatsSnapshot};
use controller_sim::verify::Verdict;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::report::Sample;

/// One line of a worker's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkerMessage {
    /// Devices prepared; waiting for `go` on stdin.
    Ready,
    /// The counters of the progress line, every second.
    Progress(Sample),
    /// Everything measured, once, at the end.
    Report(Box<WorkerReport>),
}

/// What one worker measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    /// When its clock started (Unix time, µs): its `Stats`' start.
    pub(crate) started_unix_us: u64,
    /// Its devices.
    pub(crate) devices: u64,
    /// How long its devices ran before finishing.
    pub(crate) run: Duration,
    /// Sessions established when the run ended.
    pub(crate) connected_at_end: u64,
    /// Events acknowledged by then.
    pub(crate) acked_in_run: u64,
    /// Events still unacknowledged when its devices stopped.
    pub(crate) events_unacked: u64,
    /// Its counters.
    pub(crate) stats: StatsSnapshot,
    /// Its latency histograms, serialized.
    pub(crate) histograms: WireHistograms,
    /// Its exactly-once check (of its own devices), if asked for: the
    /// verdict, or why the stream could not be read.
    pub(crate) verification: Option<Result<Verdict, String>>,
}

/// [`LatencyHistograms`] as text: HDR V2 serialization, base64.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WireHistograms {
    ack: String,
    handshake: String,
    command: String,
}

impl WireHistograms {
    /// Serializes the histograms.
    pub(crate) fn encode(histograms: &LatencyHistograms) -> anyhow::Result<Self> {
        Ok(Self {
            ack: encode_histogram(&histograms.ack)?,
            handshake: encode_histogram(&histograms.handshake)?,
            command: encode_histogram(&histograms.command)?,
        })
    }

    /// The histograms back.
    pub(crate) fn decode(&self) -> anyhow::Result<LatencyHistograms> {
        Ok(LatencyHistograms {
            ack: decode_histogram(&self.ack).context("ack latency histogram")?,
            handshake: decode_histogram(&self.handshake).context("handshake latency histogram")?,
            command: decode_histogram(&self.command).context("command latency histogram")?,
        })
    }
}

fn encode_histogram(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|err| anyhow::anyhow!("serializing a histogram: {err:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|err| anyhow::anyhow!("not an HDR V2 histogram: {err:?}"))
}

/// The workers' reports as one run.
#[derive(Debug, Clone)]
pub(crate) struct MergedRun {
    /// The longest worker run.
    pub(crate) run: Duration,
    pub(crate) connected_at_end: u64,
    pub(crate) acked_in_run: u64,
    pub(crate) events_unacked: u64,
    /// Counters added, times on one clock, percentiles of the merged
    /// histograms.
    pub(crate) stats: StatsSnapshot,
    /// The merged verdict; an error if any worker could not check.
    pub(crate) verification: Option<Result<Verdict, String>>,
}

/// Merges the reports of every worker.
pub(crate) fn merge(reports: &[WorkerReport]) -> anyhow::Result<MergedRun> {
    let start = reports.iter().map(|r| r.started_unix_us).min().unwrap_or(0);
    let shift = |report: &WorkerReport| Duration::from_micros(report.started_unix_us - start);
    let mut stats = StatsSnapshot::default();
    let mut histograms = LatencyHistograms::default();
    let mut merged = MergedRun {
        run: Duration::ZERO,
        connected_at_end: 0,
        acked_in_run: 0,
        events_unacked: 0,
        stats: StatsSnapshot::default(),
        verification: None,
    };
    let mut verdicts = Vec::new();
    let mut unchecked = None;
    for (index, report) in reports.iter().enumerate() {
        let offset = shift(report);
        stats.absorb(&report.stats);
        histograms.absorb(
            &report
                .histograms
                .decode()
                .with_context(|| format!("worker {}", index + 1))?,
        );
        if report.stats.devices_connected > 0 {
            stats.connect_span = stats.connect_span.max(offset + report.stats.connect_span);
        }
        let upload = &report.stats.upload;
        if let Some(first) = upload.first_begin {
            let first = offset + first;
            stats.upload.first_begin = Some(stats.upload.first_begin.map_or(first, |f| f.min(first)));
        }
        if let Some(last) = upload.last_done {
            let last = offset + last;
            stats.upload.last_done = Some(stats.upload.last_done.map_or(last, |l| l.max(last)));
        }
        merged.run = merged.run.max(report.run);
        merged.connected_at_end += report.connected_at_end;
        merged.acked_in_run += report.acked_in_run;
        merged.events_unacked += report.events_unacked;
        match &report.verification {
            Some(Ok(verdict)) => verdicts.push(verdict.clone()),
            Some(Err(error)) => unchecked = Some(format!("worker {}: {error}", index + 1)),
            None => {}
        }
    }
    stats.ack_latency = LatencySummary::of(&histograms.ack);
    stats.handshake_latency = LatencySummary::of(&histograms.handshake);
    stats.command_latency = LatencySummary::of(&histograms.command);
    merged.stats = stats;
    merged.verification = match unchecked {
        Some(error) => Some(Err(error)),
        None if verdicts.is_empty() => None,
        None => Some(Ok(Verdict::merge(&verdicts))),
    };
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use controller_sim::device::UploadSummary;
    use cwp::ErrorCode;

    use super::*;

    /// A worker that started `start_ms` after the first, whose devices
    /// saw the given ack latencies (µs).
    fn worker(start_ms: u64, devices: u64, acks: &[u64], span_ms: u64) -> WorkerReport {
        let mut histograms = LatencyHistograms::default();
        for &us in acks {
            histograms.ack.record(us).unwrap();
        }
        histograms.handshake.record(1_000).unwrap();
        WorkerReport {
            started_unix_us: 1_700_000_000_000_000 + start_ms * 1000,
            devices,
            run: Duration::from_secs(30),
            connected_at_end: devices,
            acked_in_run: acks.len() as u64,
            events_unacked: 1,
            stats: StatsSnapshot {
                devices_connected: devices,
                connect_span: Duration::from_millis(span_ms),
                handshakes: devices,
                events_acked: acks.len() as u64,
                errors: vec![(ErrorCode::BUSY, 2)],
                upload: UploadSummary {
                    completed: 1,
                    bytes_completed: 1_000_000,
                    first_begin: Some(Duration::from_millis(100)),
                    last_done: Some(Duration::from_millis(1_100)),
                    ..UploadSummary::default()
                },
                ..StatsSnapshot::default()
            },
            histograms: WireHistograms::encode(&histograms).unwrap(),
            verification: None,
        }
    }

    #[test]
    fn histograms_survive_the_wire() {
        let mut histograms = LatencyHistograms::default();
        for us in [5, 50, 500, 5_000, 50_000] {
            histograms.command.record(us).unwrap();
        }
        let back = WireHistograms::encode(&histograms).unwrap().decode().unwrap();
        assert_eq!(back.command, histograms.command);
        assert_eq!(back.ack.len(), 0);
        assert!(WireHistograms::default().decode().is_err());
    }

    #[test]
    fn counts_add_and_percentiles_come_from_the_merged_histograms() {
        // One worker saw 99 fast acks, the other one slow one: the merged
        // p99 is fast and the max slow; averaging the workers' own p99s
        // (1 ms and 900 ms) would claim about 450 ms.
        let fast: Vec<u64> = vec![1_000; 99];
        let reports = [worker(0, 10, &fast, 500), worker(0, 10, &[900_000], 500)];
        let merged = merge(&reports).unwrap();
        assert_eq!(merged.stats.devices_connected, 20);
        assert_eq!(merged.stats.events_acked, 100);
        assert_eq!(merged.acked_in_run, 100);
        assert_eq!(merged.events_unacked, 2);
        assert_eq!(merged.stats.errors, [(ErrorCode::BUSY, 4)]);
        assert_eq!(merged.stats.ack_latency.count, 100);
        assert!(merged.stats.ack_latency.p99_us.abs_diff(1_000) <= 1);
        assert!(merged.stats.ack_latency.max_us.abs_diff(900_000) <= 1_000);
        assert_eq!(merged.stats.handshake_latency.count, 2);
    }

    #[test]
    fn times_are_put_on_one_clock() {
        // The second worker started 200 ms later and took 500 ms to
        // connect its devices: the fleet took 700 ms.
        let reports = [worker(0, 10, &[], 400), worker(200, 10, &[], 500)];
        let merged = merge(&reports).unwrap();
        assert_eq!(merged.stats.connect_span, Duration::from_millis(700));
        // Uploads: first begin 100 ms after the first start, last done
        // 1,100 ms after the second's: 1.2 s.
        assert_eq!(merged.stats.upload.span(), Duration::from_millis(1_200));
        assert_eq!(merged.stats.upload.bytes_completed, 2_000_000);
    }

    #[test]
    fn verdicts_merge_and_a_failed_check_fails_the_run() {
        let checked = |acked| {
            Some(Ok(Verdict {
                acked,
                stored_once: acked,
                scanned: 30,
                foreign: 30 - acked,
                ..Verdict::default()
            }))
        };
        let mut reports = [worker(0, 1, &[], 1), worker(0, 1, &[], 1)];
        reports[0].verification = checked(10);
        reports[1].verification = checked(20);
        let verdict = merge(&reports).unwrap().verification.unwrap().unwrap();
        assert_eq!((verdict.acked, verdict.scanned, verdict.foreign), (30, 30, 0));
        assert!(verdict.passed());
        reports[1].verification = Some(Err("connection refused".to_owned()));
        let error = merge(&reports).unwrap().verification.unwrap().unwrap_err();
        assert_eq!(error, "worker 2: connection refused");
    }

    #[test]
    fn messages_are_one_json_line_each() {
        let line = serde_json::to_string(&WorkerMessage::Ready).unwrap();
        assert_eq!(line, "\"ready\"");
        let progress = WorkerMessage::Progress(Sample {
            connected: 3,
            sent: 2,
            acked: 1,
            errors: 0,
        });
        let line = serde_json::to_string(&progress).unwrap();
        assert!(!line.contains('\n'));
        assert!(matches!(
            serde_json::from_str::<WorkerMessage>(&line).unwrap(),
            WorkerMessage::Progress(Sample { connected: 3, .. })
        ));
        let report = worker(0, 1, &[7], 1);
        let line = serde_json::to_string(&WorkerMessage::Report(Box::new(report.clone()))).unwrap();
        let WorkerMessage::Report(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not a report: {line}");
        };
        assert_eq!(back.stats, report.stats);
        assert_eq!(back.histograms.decode().unwrap().ack.len(), 1);
    }
}
