//! The benchmarks' figures as charts: SVG files drawn with `plotters`
//! from the series a run records (kept as JSON beside them, so that the
//! charts can be drawn again without measuring again: `fleet bench-charts`).
//!
//! - ack latency (p50, p99, p99.9) against the rate offered, one panel per
//!   device count of the events benchmark;
//! - memory per idle connection against the number of connections, the
//!   driver beside Mosquitto and the kernel's own cost per socket;
//! - the connect storm over time: sessions the drivers hold, and
//!   handshakes per second.
//!
//! Text is written as SVG `<text>` for the viewer to render (plotters'
//! font features are off: no fontconfig or freetype at build time), so
//! label widths are estimates and the layout leaves room for them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::events::EventsResult;
use super::idle::IdleResult;
use super::report::thousands;
use super::storm::{StormResult, TimelineSample};

/// The results file in a charts directory.
pub const RESULTS_FILE: &str = "results.json";
/// The chart of [`ChartData::latency`].
pub const LATENCY_SVG: &str = "ack-latency.svg";
/// The chart of [`ChartData::idle`].
pub const IDLE_SVG: &str = "idle-memory.svg";
/// The chart of [`ChartData::storm`].
pub const STORM_SVG: &str = "connect-storm.svg";

const FONT: &str = "sans-serif";
const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;
/// Colour-blind-safe colours (Okabe–Ito), one per series.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// Every series the charts are drawn from; each benchmark's part is
/// replaced by its next run and the others are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChartData {
    /// The events benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Measured<Vec<LatencyCurve>>>,
    /// The idle benchmark, one point per device count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Measured<Vec<IdlePoint>>>,
    /// The connect storms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Measured<Vec<StormTimeline>>>,
}

/// A series and where it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured<T> {
    /// Where.
    #[serde(flatten)]
    pub provenance: Provenance,
    /// The figures.
    pub series: T,
}

/// Where a benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line of the run.
    pub command: String,
    /// The machine, the commit and the date (`Machine::describe`).
    pub machine: String,
    /// The 1-minute load average when the benchmark started (the machine
    /// may be shared).
    #[serde(default)]
    pub load_average: Option<f64>,
}

/// Ack latency at each rate of one events run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyCurve {
    /// Devices sending.
    pub devices: u64,
    /// One per phase.
    pub points: Vec<LatencyPoint>,
}

/// One phase of the events benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// Events per second offered.
    pub offered_per_s: f64,
    /// Events per second acknowledged.
    pub acked_per_s: f64,
    /// Offered far above capacity: drawn at the rate acknowledged.
    pub saturated: bool,
    /// Send → covering `ACK`, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
}

impl LatencyPoint {
    /// Where it goes on the rate axis: what was offered, or for the
    /// saturated phase (offered far beyond the axis) what was taken.
    pub fn rate(&self) -> f64 {
        if self.saturated {
            self.acked_per_s
        } else {
            self.offered_per_s
        }
    }
}

/// Memory per idle connection at one device count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdlePoint {
    /// Sessions the drivers held when measured.
    pub devices: u64,
    /// Driver RSS added per session, KiB.
    pub driver_kib: f64,
    /// HAProxy RSS added per session, KiB.
    pub haproxy_kib: f64,
    /// Kernel memory per TCP socket added on the Drover side, KiB.
    pub kernel_kib_per_socket: Option<f64>,
    /// MQTT clients Mosquitto held, if it was measured.
    pub mosquitto_clients: Option<u64>,
    /// Mosquitto RSS added per client, KiB.
    pub mosquitto_kib: Option<f64>,
}

/// One storm over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StormTimeline {
    /// Drivers behind HAProxy.
    pub drivers: usize,
    /// Devices connecting at once.
    pub devices: u64,
    /// Sessions held, from the simulator's start.
    pub samples: Vec<TimelineSample>,
}

impl ChartData {
    /// Reads `path`; nothing recorded yet if it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `path`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The events benchmark's runs (one per device count).
    pub fn set_events(&mut self, provenance: Provenance, runs: &[EventsResult]) {
        let curves = runs
            .iter()
            .map(|run| LatencyCurve {
                devices: run.devices,
                points: run
                    .phases
                    .iter()
                    .enumerate()
                    .map(|(index, phase)| LatencyPoint {
                        offered_per_s: phase.offered,
                        acked_per_s: phase.summary.acked_per_s,
                        // The runner saturates first, then offers fractions of capacity.
                        saturated: index == 0,
                        p50_us: phase.summary.ack_latency_us.p50,
                        p99_us: phase.summary.ack_latency_us.p99,
                        p999_us: phase.summary.ack_latency_us.p999,
                    })
                    .collect(),
            })
            .collect();
        self.latency = Some(measured(provenance, curves));
    }

    /// The idle benchmark's runs (one per device count).
    pub fn set_idle(&mut self, provenance: Provenance, runs: &[IdleResult]) {
        let points = runs
            .iter()
            .map(|run| {
                let drover = &run.drover;
                let peer = run.mosquitto.as_ref().ok();
                IdlePoint {
                    devices: drover.held,
                    driver_kib: drover.memory.kib_per(drover.held),
                    haproxy_kib: run.haproxy.kib_per(drover.held),
                    kernel_kib_per_socket: drover.kernel_after.per_socket_kib_since(&drover.kernel_before),
                    mosquitto_clients: peer.map(|p| p.held),
                    mosquitto_kib: peer.map(|p| p.memory.kib_per(p.held)),
                }
            })
            .collect();
        self.idle = Some(measured(provenance, points));
    }

    /// The storms.
    pub fn set_storm(&mut self, provenance: Provenance, result: &StormResult) {
        let timelines = result
            .runs
            .iter()
            .map(|run| StormTimeline {
                drivers: run.drivers,
                devices: result.devices,
                samples: run.timeline.clone(),
            })
            .collect();
        self.storm = Some(measured(provenance, timelines));
    }

    /// Draws every chart there are series for into `dir`; returns the
    /// files written, with their titles.
    pub fn render_all(&self, dir: &Path) -> anyhow::Result<Vec<Chart>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut charts = Vec::new();
        let mut write = |file: &str, title: &str, svg: String, provenance: &Provenance| -> anyhow::Result<()> {
            let path = dir.join(file);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            charts.push(Chart {
                path,
                title: title.to_owned(),
                provenance: provenance.clone(),
            });
            Ok(())
        };
        if let Some(latency) = self.latency.as_ref().filter(|m| !m.series.is_empty()) {
            write(
                LATENCY_SVG,
                LATENCY_TITLE,
                latency_svg(&latency.series)?,
                &latency.provenance,
            )?;
        }
        if let Some(idle) = self.idle.as_ref().filter(|m| !m.series.is_empty()) {
            write(IDLE_SVG, IDLE_TITLE, idle_svg(&idle.series)?, &idle.provenance)?;
        }
        if let Some(storm) = self.storm.as_ref().filter(|m| !m.series.is_empty()) {
            write(STORM_SVG, STORM_TITLE, storm_svg(&storm.series)?, &storm.provenance)?;
        }
        Ok(charts)
    }
}

fn measured<T>(provenance: Provenance, series: T) -> Measured<T> {
    Measured { provenance, series }
}

/// A chart written.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The SVG file.
    pub path: PathBuf,
    /// What it shows.
    pub title: String,
    /// Where its series were measured.
    pub provenance: Provenance,
}

/// The Markdown section showing `charts` in the document at `doc`.
pub fn markdown(doc: &Path, charts: &[Chart], results: &Path) -> String {
    let mut text = "## Charts\n\nDrawn by `fleet bench` from the series of its last run of each benchmark (which may be smaller than the runs of the tables below); `fleet bench-charts` draws them again from the series it kept".to_owned();
    let _ = writeln!(text, " (`{}`).", relative_link(doc, results));
    for chart in charts {
        let _ = writeln!(
            text,
            "\n### {}\n\n![{}]({})\n\nCommand: `{}`  \nMachine: {}  \nLoad average (1 min) when it started: {}",
            chart.title,
            chart.title,
            relative_link(doc, &chart.path),
            chart.provenance.command,
            chart.provenance.machine,
            chart
                .provenance
                .load_average
                .map_or_else(|| "unknown".to_owned(), |load| format!("{load:.2}"))
        );
    }
    text
}

/// `file` as a link from the document at `doc`: relative when it lies in
/// the document's directory or below, otherwise as given.
fn relative_link(doc: &Path, file: &Path) -> String {
    let doc_dir = doc
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let resolved = (
        std::fs::canonicalize(doc_dir),
        file.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| std::fs::canonicalize("."), std::fs::canonicalize),
    );
    if let (Ok(doc_dir), Ok(file_dir)) = resolved
        && let Ok(below) = file_dir.strip_prefix(&doc_dir)
    {
        let name = file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let below = below.to_string_lossy();
        return if below.is_empty() {
            name.into_owned()
        } else {
            format!("{below}/{name}")
        };
    }
    file.display().to_string()
}

const LATENCY_TITLE: &str = "Ack latency against offered rate";
const IDLE_TITLE: &str = "Memory per idle connection against connections held";
const STORM_TITLE: &str = "Connect storm over time";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws into an SVG string.
fn svg(draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>) -> anyhow::Result<String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(text)
}

/// One named series: a line through its points, and a dot at each.
fn line_with_points<CT>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, CT>,
    name: &str,
    points: &[(f64, f64)],
    colour: RGBColor,
) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(points.to_vec(), colour.stroke_width(2)))?
        .label(name)
        .legend(legend_line(colour));
    chart.draw_series(points.iter().map(|&point| Circle::new(point, 4, colour.filled())))?;
    Ok(())
}

/// The legend of the series drawn so far, boxed, at `position`.
fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

fn legend_line(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

/// Rates on an axis: `12,000`.
fn rate_label(value: &f64) -> String {
    thousands(*value)
}

/// Which latency a line shows.
type Percentile = fn(&LatencyPoint) -> u64;

const PERCENTILES: [(&str, Percentile); 3] = [("p50", |p| p.p50_us), ("p99", |p| p.p99_us), ("p99.9", |p| p.p999_us)];

/// p50, p99, p99.9 against the rate, one panel per device count.
fn latency_svg(curves: &[LatencyCurve]) -> anyhow::Result<String> {
    svg(|root| {
        let root = root.titled(LATENCY_TITLE, (FONT, 24))?;
        let panels = root.split_evenly((1, curves.len().max(1)));
        for (panel, curve) in panels.iter().zip(curves) {
            let mut points = curve.points.clone();
            points.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let ms = |us: u64| (us as f64 / 1000.0).max(0.001);
            let latencies = points.iter().flat_map(|p| [ms(p.p50_us), ms(p.p99_us), ms(p.p999_us)]);
            let (low, high) = latencies.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let (low, high) = if low <= high {
                (low / 1.5, high * 1.5)
            } else {
                (0.1, 10.0)
            };
            let right = points.iter().map(LatencyPoint::rate).fold(0.0, f64::max).max(1.0) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} devices", thousands(curve.devices as f64)), (FONT, 18))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..right, (low..high).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("offered events/s")
                .y_desc("send → ACK, ms (log)")
                .x_labels(5)
                // A log axis labels every light line by default: a wall of numbers.
                .y_labels(6)
                .max_light_lines(2)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .x_label_formatter(&rate_label)
                .y_label_formatter(&|v| format!("{v}"))
                .draw()?;
            for ((name, pick), colour) in PERCENTILES.into_iter().zip(COLOURS) {
                let series: Vec<(f64, f64)> = points.iter().map(|p| (p.rate(), ms(pick(p)))).collect();
                line_with_points(&mut chart, name, &series, colour)?;
            }
            if let Some(saturated) = points.iter().find(|p| p.saturated) {
                chart.draw_series(std::iter::once(Text::new(
                    "capacity",
                    (saturated.rate(), ms(saturated.p999_us)),
                    (FONT, 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Right, VPos::Bottom)),
                )))?;
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })
}

/// KiB per connection against connections: driver, Mosquitto, kernel.
fn idle_svg(points: &[IdlePoint]) -> anyhow::Result<String> {
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.devices);
    let series: [(&str, Vec<(f64, f64)>); 4] = [
        (
            "Drover driver (RSS added / sessions)",
            points.iter().map(|p| (p.devices as f64, p.driver_kib)).collect(),
        ),
        (
            "Mosquitto (RSS added / clients)",
            points
                .iter()
                .filter_map(|p| Some((p.mosquitto_clients? as f64, p.mosquitto_kib?)))
                .collect(),
        ),
        (
            "HAProxy in front of the drivers",
            points.iter().map(|p| (p.devices as f64, p.haproxy_kib)).collect(),
        ),
        (
            "kernel per TCP socket (the limit)",
            points
                .iter()
                .filter_map(|p| Some((p.devices as f64, p.kernel_kib_per_socket?)))
                .collect(),
        ),
    ];
    svg(|root| {
        let all = series.iter().flat_map(|(_, s)| s.iter());
        let right = all.clone().map(|&(x, _)| x).fold(0.0, f64::max).max(1.0) * 1.08;
        // Headroom for the legend above the highest line.
        let top = all.map(|&(_, y)| y).fold(0.0, f64::max).max(0.1) * 1.6;
        let mut chart = ChartBuilder::on(root)
            .caption(IDLE_TITLE, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..right, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("idle connections held")
            .y_desc("KiB per connection")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .x_label_formatter(&rate_label)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()?;
        for ((name, points), colour) in series.iter().zip(COLOURS) {
            if points.is_empty() {
                continue;
            }
            line_with_points(&mut chart, name, points, colour)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

/// Handshakes per second between consecutive samples (sessions gained;
/// the drop when the devices leave at the end counts as none).
pub fn handshake_rates(samples: &[TimelineSample]) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter(|pair| pair[1].seconds > pair[0].seconds)
        .map(|pair| {
            let gained = (pair[1].sessions - pair[0].sessions).max(0.0);
            (pair[1].seconds, gained / (pair[1].seconds - pair[0].seconds))
        })
        .collect()
}

/// Sessions held (left axis, solid) and handshakes/s (right axis, dashed)
/// against time, one colour per storm.
fn storm_svg(storms: &[StormTimeline]) -> anyhow::Result<String> {
    let rates: Vec<Vec<(f64, f64)>> = storms.iter().map(|s| handshake_rates(&s.samples)).collect();
    svg(|root| {
        let right = storms
            .iter()
            .flat_map(|s| s.samples.iter().map(|p| p.seconds))
            .fold(0.0, f64::max)
            .max(0.5)
            * 1.05;
        let top = storms
            .iter()
            .flat_map(|s| s.samples.iter().map(|p| p.sessions).chain([s.devices as f64]))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let top_rate = rates.iter().flatten().map(|&(_, r)| r).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(root)
            .caption(STORM_TITLE, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .right_y_label_area_size(72)
            .build_cartesian_2d(0.0..right, 0.0..top)?
            .set_secondary_coord(0.0..right, 0.0..top_rate);
        chart
            .configure_mesh()
            .x_desc("seconds since the simulator started")
            .y_desc("sessions held by the drivers (solid)")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .y_label_formatter(&rate_label)
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("handshakes/s (dashed)")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .y_label_formatter(&rate_label)
            .draw()?;
        for ((storm, rate), colour) in storms.iter().zip(&rates).zip(COLOURS) {
            let sessions: Vec<(f64, f64)> = storm.samples.iter().map(|p| (p.seconds, p.sessions)).collect();
            chart
                .draw_series(LineSeries::new(sessions, colour.stroke_width(2)))?
                .label(format!(
                    "{} devices, {} driver{}",
                    thousands(storm.devices as f64),
                    storm.drivers,
                    if storm.drivers == 1 { "" } else { "s" }
                ))
                .legend(legend_line(colour));
            chart.draw_secondary_series(DashedLineSeries::new(rate.clone(), 6, 4, colour.stroke_width(1)))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contents of the SVG's `<text>` elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let (_, rest) = element.split_once('>')?;
                let (text, _) = rest.split_once("</text>")?;
                Some(text.trim().to_owned())
            })
            .collect()
    }

    fn provenance(command: &str) -> Provenance {
        Provenance {
            command: command.to_owned(),
            machine: "test machine".to_owned(),
            load_average: Some(0.5),
        }
    }

    fn data() -> ChartData {
        let point = |offered: f64, saturated: bool, p50_us: u64| LatencyPoint {
            offered_per_s: offered,
            acked_per_s: if saturated { 20_000.0 } else { offered },
            saturated,
            p50_us,
            p99_us: p50_us * 4,
            p999_us: p50_us * 10,
        };
        let sample = |seconds: f64, sessions: f64| TimelineSample { seconds, sessions };
        ChartData {
            latency: Some(measured(
                provenance("fleet bench --only events"),
                vec![LatencyCurve {
                    devices: 1_000,
                    points: vec![
                        point(400_000.0, true, 40_000),
                        point(5_000.0, false, 900),
                        point(10_000.0, false, 1_200),
                        point(18_000.0, false, 3_000),
                    ],
                }],
            )),
            idle: Some(measured(
                provenance("fleet bench --only idle"),
                vec![
                    IdlePoint {
                        devices: 5_000,
                        driver_kib: 1.4,
                        haproxy_kib: 0.9,
                        kernel_kib_per_socket: Some(3.1),
                        mosquitto_clients: Some(5_000),
                        mosquitto_kib: Some(2.2),
                    },
                    IdlePoint {
                        devices: 20_000,
                        driver_kib: 1.1,
                        haproxy_kib: 0.8,
                        kernel_kib_per_socket: None,
                        mosquitto_clients: None,
                        mosquitto_kib: None,
                    },
                ],
            )),
            storm: Some(measured(
                provenance("fleet bench --only storm"),
                vec![StormTimeline {
                    drivers: 4,
                    devices: 3_000,
                    samples: vec![
                        sample(0.0, 0.0),
                        sample(0.5, 1_000.0),
                        sample(1.0, 3_000.0),
                        sample(1.5, 0.0),
                    ],
                }],
            )),
        }
    }

    #[test]
    fn each_chart_is_an_svg_with_its_series_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let charts = data().render_all(dir.path()).unwrap();
        let names: Vec<_> = charts
            .iter()
            .map(|c| c.path.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, [LATENCY_SVG, IDLE_SVG, STORM_SVG]);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let expected: [(&str, &[&str]); 3] = [
            (
                LATENCY_SVG,
                &[
                    LATENCY_TITLE,
                    "1,000 devices",
                    "p50",
                    "p99",
                    "p99.9",
                    "capacity",
                    "offered events/s",
                    "15,000",
                ],
            ),
            (
                IDLE_SVG,
                &[
                    IDLE_TITLE,
                    "Drover driver (RSS added / sessions)",
                    "Mosquitto (RSS added / clients)",
                    "kernel per TCP socket (the limit)",
                    "idle connections held",
                    "20,000",
                ],
            ),
            (
                STORM_SVG,
                &[
                    STORM_TITLE,
                    "3,000 devices, 4 drivers",
                    "handshakes/s (dashed)",
                    "sessions held by the drivers (solid)",
                ],
            ),
        ];
        for (name, labels) in expected {
            let svg = read(name);
            assert!(
                svg.starts_with("<svg"),
                "{name} is not an SVG: {}",
                &svg[..svg.len().min(80)]
            );
            assert!(svg.trim_end().ends_with("</svg>"), "{name} is not closed");
            let texts = texts(&svg);
            for label in labels {
                assert!(
                    texts.contains(&(*label).to_owned()),
                    "{name} lacks {label:?}: {texts:?}"
                );
            }
            assert!(svg.contains("<polyline"), "{name} has no line");
            assert!(svg.contains("<circle") || name == STORM_SVG, "{name} has no points");
        }
        // The control: labels are looked for in the chart they belong to.
        assert!(!texts(&read(STORM_SVG)).contains(&"p50".to_owned()));
        // A benchmark without series gets no chart.
        let only_storm = ChartData {
            storm: data().storm,
            ..ChartData::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let charts = only_storm.render_all(dir.path()).unwrap();
        assert_eq!(charts.len(), 1);
        assert!(!dir.path().join(LATENCY_SVG).exists());
    }

    #[test]
    fn series_survive_the_results_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        assert_eq!(ChartData::load(&path).unwrap(), ChartData::default());
        data().save(&path).unwrap();
        assert_eq!(ChartData::load(&path).unwrap(), data());
        std::fs::write(&path, "{ not json").unwrap();
        assert!(ChartData::load(&path).is_err());
    }

    #[test]
    fn handshake_rates_count_sessions_gained() {
        let sample = |seconds: f64, sessions: f64| TimelineSample { seconds, sessions };
        let rates = handshake_rates(&[
            sample(0.0, 0.0),
            sample(0.5, 1_000.0),
            sample(1.0, 1_000.0),
            sample(1.5, 0.0),
        ]);
        assert_eq!(rates, [(0.5, 2_000.0), (1.0, 0.0), (1.5, 0.0)]);
    }

    #[test]
    fn the_section_links_the_charts_beside_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("BENCHMARKS.md");
        let charts_dir = dir.path().join("charts");
        let charts = data().render_all(&charts_dir).unwrap();
        let text = markdown(&doc, &charts, &charts_dir.join(RESULTS_FILE));
        assert!(
            text.contains(&format!("![{LATENCY_TITLE}](charts/{LATENCY_SVG})")),
            "{text}"
        );
        assert!(text.contains("`charts/results.json`"), "{text}");
        assert!(text.contains("Command: `fleet bench --only storm`"), "{text}");
    }
}
