//! What the run prints: the live progress line and the final summary, as
//! text or as one JSON object.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use controller_sim::device::{LatencyReport as Latency, Stats, StatsSnapshot, UploadSummary};
use controller_sim::verify::Verdict;
use serde::Serialize;

/// Signs that the server misbehaves; all zero in a healthy run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Anomalies {
    unexpected_frames: u64,
    acks_beyond_sent: u64,
    last_event_id_regressions: u64,
    upload_offset_regressions: u64,
}

impl Anomalies {
    fn any(&self) -> bool {
        self.unexpected_frames + self.acks_beyond_sent + self.last_event_id_regressions + self.upload_offset_regressions
            > 0
    }
}

/// What the uploads did; absent from a run without uploads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Uploads {
    completed: u64,
    /// Payload of the completed uploads.
    bytes: u64,
    /// From the first `UPLOAD_BEGIN` to the last `UPLOAD_DONE OK`, s.
    span_s: f64,
    /// Payload MB/s (decimal) over that span.
    mb_per_s: f64,
    bytes_sent: u64,
    bytes_resent: u64,
    bytes_durable: u64,
    resumes: u64,
    refusals: u64,
    mismatches: u64,
}

impl Uploads {
    fn of(upload: &UploadSummary) -> Option<Self> {
        if upload.bytes_sent + upload.bytes_resent + upload.completed == 0 {
            return None;
        }
        let seconds = upload.span().as_secs_f64();
        let mb_per_s = if seconds > 0.0 {
            (upload.bytes_completed as f64 / 1e6 / seconds * 10.0).round() / 10.0
        } else {
            0.0
        };
        Some(Self {
            completed: upload.completed,
            bytes: upload.bytes_completed,
            span_s: (seconds * 1000.0).round() / 1000.0,
            mb_per_s,
            bytes_sent: upload.bytes_sent,
            bytes_resent: upload.bytes_resent,
            bytes_durable: upload.bytes_durable,
            resumes: upload.resumes,
            refusals: upload.refusals,
            mismatches: upload.mismatches,
        })
    }
}

/// What the file transfers did; absent from a run without offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Files {
    offers: u64,
    verified: u64,
    declined: u64,
    mismatches: u64,
    resumes: u64,
    drops: u64,
    bytes: u64,
    /// Chunks beyond a device's window (CWP/1 §3 broken): 0 in a healthy run.
    window_violations: u64,
    stray_chunks: u64,
    /// Per verified file, first offer to last byte, MB/s.
    min_mb_s: f64,
    median_mb_s: f64,
    max_mb_s: f64,
    /// All chunk bytes over the run, MB/s.
    total_mb_s: f64,
}

impl Files {
    fn of(files: &controller_sim::device::FileSummary, run: Duration) -> Option<Self> {
        if files.offers == 0 {
            return None;
        }
        let round = |value: f64| (value * 10.0).round() / 10.0;
        let (min, median, max) = files.rate_spread().unwrap_or_default();
        let seconds = run.as_secs_f64();
        Some(Self {
            offers: files.offers,
            verified: files.verified,
            declined: files.declined,
            mismatches: files.mismatches,
            resumes: files.resumes,
            drops: files.drops,
            bytes: files.bytes,
            window_violations: files.window_violations,
            stray_chunks: files.stray_chunks,
            min_mb_s: round(min),
            median_mb_s: round(median),
            max_mb_s: round(max),
            total_mb_s: if seconds > 0.0 {
                round(files.bytes as f64 / 1e6 / seconds)
            } else {
                0.0
            },
        })
    }
}

/// The exactly-once check, or why it could not run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub(crate) enum Verification {
    /// The stream was read.
    Checked {
        passed: bool,
        acked: u64,
        stored_once: u64,
        missing: u64,
        duplicated: u64,
        unexpected: u64,
        unacked_stored: u64,
        scanned: u64,
        problems: Vec<String>,
        #[serde(skip)]
        text: String,
    },
    /// Redis could not be read.
    Failed { passed: bool, error: String },
}

impl Verification {
    pub(crate) fn checked(verdict: &Verdict) -> Self {
        Self::Checked {
            passed: verdict.passed(),
            acked: verdict.acked,
            stored_once: verdict.stored_once,
            missing: verdict.missing,
            duplicated: verdict.duplicated,
            unexpected: verdict.unexpected,
            unacked_stored: verdict.unacked_stored,
            scanned: verdict.scanned,
            problems: verdict.examples.clone(),
            text: verdict.to_string(),
        }
    }

    pub(crate) fn failed(error: impl fmt::Display) -> Self {
        Self::Failed {
            passed: false,
            error: error.to_string(),
        }
    }

    pub(crate) fn passed(&self) -> bool {
        match self {
            Self::Checked { passed, .. } | Self::Failed { passed, .. } => *passed,
        }
    }
}

/// Everything the run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) scenario: &'static str,
    /// `cwp` or `mqtt`.
    pub(crate) protocol: &'static str,
    pub(crate) target: String,
    pub(crate) devices: u64,
    /// Processes the devices ran in.
    pub(crate) procs: usize,
    /// How long devices made events, s.
    pub(crate) run_s: f64,
    pub(crate) devices_connected: u64,
    /// Sessions established when the run ended (before finishing).
    pub(crate) connected_at_end: u64,
    pub(crate) handshakes: u64,
    /// First handshakes per second, from the start to the last device's
    /// first `WELCOME`.
    pub(crate) handshake_rate: f64,
    pub(crate) handshake_latency_us: Latency,
    pub(crate) connect_failures: u64,
    pub(crate) handshake_failures: u64,
    pub(crate) disconnects: u64,
    pub(crate) reconnects: u64,
    pub(crate) events_sent: u64,
    pub(crate) events_resent: u64,
    pub(crate) events_acked: u64,
    pub(crate) events_skipped: u64,
    /// Events still unacknowledged when the devices stopped.
    pub(crate) events_unacked: u64,
    /// Events acknowledged during the run, per second of the run.
    pub(crate) acked_per_s: f64,
    pub(crate) ack_latency_us: Latency,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) byes: BTreeMap<String, u64>,
    pub(crate) commands_received: u64,
    pub(crate) commands_answered: u64,
    /// `COMMAND` received → `ACK` of its result (includes --command-delay).
    pub(crate) command_latency_us: Latency,
    /// Heartbeats (`PING`, or MQTT `PINGREQ`) sent.
    pub(crate) pings_sent: u64,
    /// Sessions dropped on purpose (scenario churn), and the rate.
    pub(crate) churn_drops: u64,
    pub(crate) churn_per_s: f64,
    pub(crate) busy_retries: u64,
    pub(crate) rewinds: u64,
    pub(crate) id_jumps: u64,
    pub(crate) anomalies: Anomalies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uploads: Option<Uploads>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) files: Option<Files>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verification: Option<Verification>,
}

/// What the run knows besides the devices' statistics.
#[derive(Debug, Clone)]
pub(crate) struct RunFacts {
    pub(crate) scenario: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) target: String,
    pub(crate) devices: u64,
    pub(crate) procs: usize,
    pub(crate) run: Duration,
    /// Sessions established when the run ended.
    pub(crate) connected_at_end: u64,
    /// Events acknowledged by then.
    pub(crate) acked_in_run: u64,
    pub(crate) events_unacked: u64,
}

fn per_second(count: u64, span: Duration) -> f64 {
    let seconds = span.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        (count as f64 / seconds * 10.0).round() / 10.0
    }
}

impl Summary {
    pub(crate) fn new(facts: RunFacts, stats: StatsSnapshot) -> Self {
        let errors = stats
            .errors
            .iter()
            .map(|(code, count)| {
                let name = code.name().map_or_else(|| "UNDEFINED".to_owned(), str::to_owned);
                (name, *count)
            })
            .collect();
        let byes = stats
            .byes
            .iter()
            .map(|(reason, count)| {
                let name = reason.name().map_or_else(|| "UNDEFINED".to_owned(), str::to_owned);
                (name, *count)
            })
            .collect();
        Self {
            scenario: facts.scenario,
            protocol: facts.protocol,
            target: facts.target,
            devices: facts.devices,
            procs: facts.procs,
            run_s: (facts.run.as_secs_f64() * 1000.0).round() / 1000.0,
            devices_connected: stats.devices_connected,
            connected_at_end: facts.connected_at_end,
            handshakes: stats.handshakes,
            handshake_rate: per_second(stats.devices_connected, stats.connect_span),
            handshake_latency_us: stats.handshake_latency.into(),
            connect_failures: stats.connect_failures,
            handshake_failures: stats.handshake_failures,
            disconnects: stats.disconnects,
            reconnects: stats.reconnects,
            events_sent: stats.events_sent,
            events_resent: stats.events_resent,
            events_acked: stats.events_acked,
            events_skipped: stats.events_skipped,
            events_unacked: facts.events_unacked,
            acked_per_s: per_second(facts.acked_in_run, facts.run),
            ack_latency_us: stats.ack_latency.into(),
            errors,
            byes,
            commands_received: stats.commands_received,
            commands_answered: stats.commands_answered,
            command_latency_us: stats.command_latency.into(),
            pings_sent: stats.pings_sent,
            churn_drops: stats.churn_drops,
            churn_per_s: per_second(stats.churn_drops, facts.run),
            busy_retries: stats.busy_retries,
            rewinds: stats.rewinds,
            id_jumps: stats.id_jumps,
            anomalies: Anomalies {
                unexpected_frames: stats.unexpected_frames,
                acks_beyond_sent: stats.acks_beyond_sent,
                last_event_id_regressions: stats.last_event_id_regressions,
                upload_offset_regressions: stats.upload.offset_regressions,
            },
            uploads: Uploads::of(&stats.upload),
            files: Files::of(&stats.files, facts.run),
            verification: None,
        }
    }

    /// The summary as one line of JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }
}

/// A latency in µs for people: `850µs`, `12.3ms`, `1.50s`.
pub(crate) fn human_latency(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..10_000 => format!("{:.2}ms", micros as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1}ms", micros as f64 / 1e3),
        _ => format!("{:.2}s", micros as f64 / 1e6),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentiles(latency: &Latency) -> String {
    if latency.samples == 0 {
        return "no samples".to_owned();
    }
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        human_latency(latency.p50),
        human_latency(latency.p99),
        human_latency(latency.p999),
        human_latency(latency.max),
        latency.samples
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "controller-sim: scenario {} against {}, {} devices, {:.1} s{}{}",
            self.scenario,
            self.target,
            self.devices,
            self.run_s,
            if self.protocol == "cwp" { "" } else { ", MQTT 3.1.1" },
            if self.procs > 1 {
                format!(", {} processes", self.procs)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  connected    {}/{} devices ({} at the end), {:.1} handshakes/s, {} handshakes in all",
            self.devices_connected, self.devices, self.connected_at_end, self.handshake_rate, self.handshakes
        )?;
        writeln!(f, "  handshake    {}", percentiles(&self.handshake_latency_us))?;
        writeln!(
            f,
            "  failures     {} connect, {} handshake, {} disconnects; {} reconnects",
            self.connect_failures, self.handshake_failures, self.disconnects, self.reconnects
        )?;
        writeln!(
            f,
            "  events       {} sent, {} resent, {} acked, {} skipped (backlog full), {} unacked at the end",
            self.events_sent, self.events_resent, self.events_acked, self.events_skipped, self.events_unacked
        )?;
        writeln!(f, "  throughput   {:.1} events/s acknowledged", self.acked_per_s)?;
        writeln!(f, "  ack latency  {}", percentiles(&self.ack_latency_us))?;
        writeln!(f, "  errors       {}", counts(&self.errors))?;
        writeln!(f, "  server BYE   {}", counts(&self.byes))?;
        write!(
            f,
            "  commands     {} received, {} answered; received -> result acked: {}",
            self.commands_received,
            self.commands_answered,
            percentiles(&self.command_latency_us)
        )?;
        write!(f, "\n  heartbeats   {} sent", self.pings_sent)?;
        if self.churn_drops > 0 {
            write!(
                f,
                "\n  churn        {} connections dropped and re-established, {:.1}/s",
                self.churn_drops, self.churn_per_s
            )?;
        }
        if self.busy_retries + self.rewinds > 0 {
            write!(
                f,
                "\n  refused      {} resends after BUSY, {} sessions closed to resend elsewhere",
                self.busy_retries, self.rewinds
            )?;
        }
        if let Some(u) = &self.uploads {
            write!(
                f,
                "\n  uploads      {} completed, {} bytes in {:.3} s: {:.1} MB/s of payload",
                u.completed, u.bytes, u.span_s, u.mb_per_s
            )?;
            write!(
                f,
                "\n               {} bytes sent, {} resent, {} reported durable; {} resumed, {} refused (BUSY/CONFLICT), {} mismatched",
                u.bytes_sent, u.bytes_resent, u.bytes_durable, u.resumes, u.refusals, u.mismatches
            )?;
        }
        if let Some(x) = &self.files {
            write!(
                f,
                "\n  files        {} offers: {} verified, {} declined, {} digest mismatches, {} resumed, {} dropped on purpose",
                x.offers, x.verified, x.declined, x.mismatches, x.resumes, x.drops
            )?;
            write!(
                f,
                "\n               {} bytes, {:.1} MB/s in all; per file {:.1} / {:.1} / {:.1} MB/s min / median / max; {} beyond the window, {} stray chunks",
                x.bytes, x.total_mb_s, x.min_mb_s, x.median_mb_s, x.max_mb_s, x.window_violations, x.stray_chunks
            )?;
        }
        if self.id_jumps > 0 {
            write!(
                f,
                "\n  note         {} devices numbered events above ids stored by an earlier run",
                self.id_jumps
            )?;
        }
        if self.anomalies.any() {
            let a = &self.anomalies;
            write!(
                f,
                "\n  ANOMALIES    {} unexpected frames, {} acks for ids never sent, {} last_event_id regressions, {} upload offset regressions",
                a.unexpected_frames, a.acks_beyond_sent, a.last_event_id_regressions, a.upload_offset_regressions
            )?;
        }
        match &self.verification {
            Some(Verification::Checked { text, .. }) => write!(f, "\n{text}")?,
            Some(Verification::Failed { error, .. }) => write!(f, "\nexactly-once: could not check: {error}")?,
            None => {}
        }
        Ok(())
    }
}

/// Counters sampled for the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct Sample {
    pub(crate) connected: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
}

impl Sample {
    /// The counters now.
    pub(crate) fn of(stats: &Stats) -> Self {
        Self {
            connected: stats.connected(),
            sent: stats.sent(),
            acked: stats.acked(),
            errors: stats.errors(),
        }
    }

    /// Two processes' counters together.
    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            connected: self.connected + other.connected,
            sent: self.sent + other.sent,
            acked: self.acked + other.acked,
            errors: self.errors + other.errors,
        }
    }
}

/// The live line: rates over the last `interval`.
pub(crate) fn progress_line(
    elapsed: Duration,
    devices: u64,
    now: Sample,
    before: Sample,
    interval: Duration,
) -> String {
    format!(
        "[{:>5}s] connected {}/{}  sent {:.0}/s  acked {:.0}/s ({} total)  errors {}",
        elapsed.as_secs(),
        now.connected,
        devices,
        per_second(now.sent.saturating_sub(before.sent), interval),
        per_second(now.acked.saturating_sub(before.acked), interval),
        now.acked,
        now.errors
    )
}

#[cfg(test)]
mod tests {
    use controller_sim::device::LatencySummary;
    use cwp::{ByeReason, ErrorCode};

    use super::*;

    fn summary() -> Summary {
        let stats = StatsSnapshot {
            devices_connected: 1000,
            connect_span: Duration::from_millis(500),
            handshakes: 1003,
            reconnects: 3,
            events_sent: 3_000_000,
            events_acked: 2_999_990,
            errors: vec![(ErrorCode::BUSY, 7), (ErrorCode(0), 1)],
            byes: vec![(ByeReason::DRAINING, 3)],
            ack_latency: LatencySummary {
                count: 2_999_990,
                mean_us: 1_234.56,
                p50_us: 850,
                p99_us: 4_321,
                p999_us: 12_345,
                max_us: 2_500_000,
            },
            ..StatsSnapshot::default()
        };
        let facts = RunFacts {
            scenario: "events",
            protocol: "cwp",
            target: "127.0.0.1:7000".to_owned(),
            devices: 1000,
            procs: 1,
            run: Duration::from_secs(30),
            connected_at_end: 1000,
            acked_in_run: 2_999_000,
            events_unacked: 10,
        };
        Summary::new(facts, stats)
    }

    #[test]
    fn latencies_read_well() {
        assert_eq!(human_latency(850), "850µs");
        assert_eq!(human_latency(4_321), "4.32ms");
        assert_eq!(human_latency(12_345), "12.3ms");
        assert_eq!(human_latency(2_500_000), "2.50s");
    }

    #[test]
    fn the_text_summary_has_every_figure() {
        let text = summary().to_string();
        for expected in [
            "scenario events against 127.0.0.1:7000, 1000 devices, 30.0 s",
            "connected    1000/1000 devices (1000 at the end), 2000.0 handshakes/s, 1003 handshakes in all",
            "3 reconnects",
            "3000000 sent, 0 resent, 2999990 acked, 0 skipped (backlog full), 10 unacked at the end",
            "throughput   99966.7 events/s acknowledged",
            "ack latency  p50 850µs  p99 4.32ms  p99.9 12.3ms  max 2.50s  (2999990 samples)",
            "errors       BUSY 7, UNDEFINED 1",
            "server BYE   DRAINING 3",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("ANOMALIES"));
    }

    #[test]
    fn uploads_show_their_payload_rate_only_when_there_were_uploads() {
        assert!(!summary().to_string().contains("uploads"));
        assert!(summary().to_json().find("\"uploads\"").is_none());
        let stats = StatsSnapshot {
            upload: UploadSummary {
                bytes_sent: 401_600_000,
                bytes_resent: 1_004,
                bytes_durable: 401_600_000,
                completed: 100,
                bytes_completed: 401_600_000,
                first_begin: Some(Duration::from_secs(1)),
                last_done: Some(Duration::from_secs(5)),
                ..UploadSummary::default()
            },
            ..StatsSnapshot::default()
        };
        let facts = RunFacts {
            scenario: "upload",
            protocol: "cwp",
            target: "127.0.0.1:7000".to_owned(),
            devices: 100,
            procs: 1,
            run: Duration::from_secs(5),
            connected_at_end: 100,
            acked_in_run: 0,
            events_unacked: 0,
        };
        let summary = Summary::new(facts, stats);
        let text = summary.to_string();
        assert!(
            text.contains("uploads      100 completed, 401600000 bytes in 4.000 s: 100.4 MB/s of payload"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        assert_eq!(json["uploads"]["mb_per_s"], 100.4);
        assert_eq!(json["uploads"]["bytes_resent"], 1_004);
    }

    #[test]
    fn the_json_summary_is_one_object() {
        let json: serde_json::Value = serde_json::from_str(&summary().to_json()).unwrap();
        assert_eq!(json["events_acked"], 2_999_990);
        assert_eq!(json["acked_per_s"], 99_966.7);
        assert_eq!(json["ack_latency_us"]["p999"], 12_345);
        assert_eq!(json["errors"]["BUSY"], 7);
        assert!(json.get("verification").is_none());
    }

    #[test]
    fn a_failed_verification_shows() {
        let mut summary = summary();
        summary.verification = Some(Verification::failed("connection refused"));
        assert!(
            summary
                .to_string()
                .ends_with("exactly-once: could not check: connection refused")
        );
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        assert_eq!(json["verification"]["passed"], false);
    }

    #[test]
    fn the_progress_line_shows_rates() {
        let before = Sample {
            connected: 10,
            sent: 1_000,
            acked: 900,
            errors: 0,
        };
        let now = Sample {
            connected: 20,
            sent: 3_000,
            acked: 2_900,
            errors: 1,
        };
        let line = progress_line(Duration::from_secs(12), 20, now, before, Duration::from_secs(2));
        assert_eq!(
            line,
            "[   12s] connected 20/20  sent 1000/s  acked 1000/s (2900 total)  errors 1"
        );
    }
}
