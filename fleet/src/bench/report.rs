//! `docs/BENCHMARKS.md` is written by several tools (criterion for the
//! codec, the upload runner, `fleet bench`); each owns the sections between
//! its markers `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` and leaves the
//! rest of the file alone.

use std::path::Path;

use anyhow::Context as _;

/// Replaces (or appends) the section `name` of the file at `path`.
pub fn write_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Drover benchmarks\n".to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(from), Some(to)) if to > from => format!("{}{section}{}", &text[..from], &text[to + end.len()..]),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// A Markdown table.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The Markdown text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "| {} |\n|{}\n",
            self.header.join(" | "),
            "---|".repeat(self.header.len())
        );
        for row in &self.rows {
            text.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        text
    }
}

/// `123456.7` → `123,457`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

/// Microseconds as `0.8 ms` / `12 ms` / `1.2 s`.
pub fn duration_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 10_000.0 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{:.1} ms", us / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_appended_when_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        std::fs::write(&path, "# B\n\n## Codec\nkept\n").unwrap();
        write_section(&path, "events", "first").unwrap();
        write_section(&path, "idle", "idle").unwrap();
        write_section(&path, "events", "second").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("## Codec\nkept"));
        assert!(text.contains("<!-- bench:events -->\nsecond\n<!-- /bench:events -->"));
        assert!(!text.contains("first"));
        assert!(text.find("bench:events").unwrap() < text.find("bench:idle").unwrap());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_us(850.0), "0.8 ms");
        assert_eq!(duration_us(12_300.0), "12 ms");
        assert_eq!(duration_us(1_500_000.0), "1.50 s");
    }
}
