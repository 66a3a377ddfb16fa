//! What `drover` prints: tables and lines for people (colour only on a
//! terminal), JSON for scripts, and a progress line on stderr while it
//! waits. Text that came from devices (firmware, bodies, outputs) is
//! printed with its control characters escaped: a device must not be able
//! to move an operator's cursor or retitle their terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether stdout gets colour: only on a terminal, and never with
/// `NO_COLOR` set (no-color.org).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
}

/// A colour (or weight) for a piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Good news: online, OK.
    Green,
    /// Bad news: FAILED, REJECTED.
    Red,
    /// Worth a look: offline, BUSY.
    Yellow,
    /// Secondary: ids, times.
    Dim,
    /// Headers.
    Bold,
}

impl Paint {
    fn sgr(self) -> &'static str {
        match self {
            Self::Green => "32",
            Self::Red => "31",
            Self::Yellow => "33",
            Self::Dim => "2",
            Self::Bold => "1",
        }
    }
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }

    /// No colour at all.
    pub fn plain() -> Self {
        Self { colour: false }
    }

    /// `text` in `paint`, if colour is on.
    pub fn paint(&self, paint: Option<Paint>, text: &str) -> String {
        match paint {
            Some(paint) if self.colour => format!("\x1b[{}m{text}\x1b[0m", paint.sgr()),
            _ => text.to_owned(),
        }
    }
}

/// One cell: its text and how to paint it.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    paint: Option<Paint>,
}

impl Cell {
    /// Plain text (control characters escaped).
    pub fn new(text: impl AsRef<str>) -> Self {
        Self {
            text: printable(text.as_ref()),
            paint: None,
        }
    }

    /// Painted text.
    pub fn painted(text: impl AsRef<str>, paint: Paint) -> Self {
        Self {
            text: printable(text.as_ref()),
            paint: Some(paint),
        }
    }
}

/// A table with a header row, columns as wide as their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, with a trailing newline.
    pub fn render(&self, style: Style) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
        let mut text = String::new();
        let line = |text: &mut String, cells: &mut dyn Iterator<Item = (String, usize, Option<Paint>)>| {
            let mut parts = Vec::new();
            for (cell, width, paint) in cells {
                let pad = width.saturating_sub(cell.chars().count());
                parts.push(format!("{}{}", style.paint(paint, &cell), " ".repeat(pad)));
            }
            text.push_str(parts.join("  ").trim_end());
            text.push('\n');
        };
        line(
            &mut text,
            &mut self
                .headers
                .iter()
                .zip(&widths)
                .map(|(h, w)| (h.to_uppercase(), *w, Some(Paint::Bold))),
        );
        for row in &self.rows {
            line(
                &mut text,
                &mut row.iter().zip(&widths).map(|(c, w)| (c.text.clone(), *w, c.paint)),
            );
        }
        text
    }
}

/// `text` with control characters (and the escape character) written as
/// Rust escapes, so that it prints on one line and cannot drive a terminal.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Bytes from a device as text where they are UTF-8, hex otherwise: the
/// JSON field name (`text_field` or `{text_field}_hex`) and the value.
pub fn text_or_hex(bytes: &[u8], text_field: &str) -> (String, String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text_field.to_owned(), text.to_owned()),
        Err(_) => (format!("{text_field}_hex"), hex::encode(bytes)),
    }
}

/// Bytes from a device for a person: printable text where they are UTF-8,
/// `0x…` hex otherwise.
pub fn human_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => printable(text),
        Err(_) => format!("0x{}", hex::encode(bytes)),
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC, ms).
pub fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The time now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long ago `ms` (Unix ms) was, roughly: `12s ago`, `5m ago`, `3h ago`,
/// `2d ago`.
pub fn ago(ms: u64, now_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// Writes `text` to stdout as is. A closed pipe (`drover events | head`)
/// comes back as an error that `main` treats as a normal end.
pub fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Writes one line to stdout.
pub fn line(text: &str) -> std::io::Result<()> {
    out(&format!("{text}\n"))
}

/// A line on stderr that says what `drover` is waiting for, rewritten in
/// place; only on a terminal, and erased when dropped.
#[derive(Debug)]
pub struct Progress {
    shown: bool,
}

impl Progress {
    /// A progress line, shown only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            shown: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `text` in place of the previous text.
    pub fn update(&self, text: &str) {
        if self.shown {
            // Nothing to do if the terminal is gone.
            let _ = write!(std::io::stderr(), "\r\x1b[2K{text}");
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("fw-1.2"), "fw-1.2");
        assert_eq!(printable("a\x1b]0;owned\x07b\nc"), "a\\u{1b}]0;owned\\u{7}b\\nc");
    }

    #[test]
    fn bytes_are_text_where_utf8_and_hex_otherwise() {
        assert_eq!(text_or_hex(b"done", "data"), ("data".to_owned(), "done".to_owned()));
        assert_eq!(
            text_or_hex(&[0xff, 0], "data"),
            ("data_hex".to_owned(), "ff00".to_owned())
        );
        assert_eq!(human_bytes(&[0xff, 0]), "0xff00");
    }

    #[test]
    fn a_table_aligns_its_columns_and_paints_only_with_colour() {
        let mut table = Table::new(&["serial", "online"]);
        table.row(vec![Cell::new("CTRL-0042"), Cell::painted("yes", Paint::Green)]);
        table.row(vec![Cell::new("S-1"), Cell::new("no")]);
        assert_eq!(
            table.render(Style::plain()),
            "SERIAL     ONLINE\nCTRL-0042  yes\nS-1        no\n"
        );
        let coloured = table.render(Style { colour: true });
        assert!(coloured.contains("\x1b[32myes\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn ages_are_rough() {
        assert_eq!(ago(1_000, 13_000), "12s ago");
        assert_eq!(ago(0, 3_600_000 * 5), "5h ago");
        assert_eq!(ago(10_000, 5_000), "0s ago", "a clock ahead is not the future");
        assert_eq!(time_ms(1_714_557_600_123), "2024-05-01T10:00:00.123Z");
    }
}
