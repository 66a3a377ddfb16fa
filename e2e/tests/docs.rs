//! The README documents every variable the servers read, with its default,
//! exactly as `--help` prints it: the tables are compared with the binaries'
//! own variable tables, so the documentation cannot drift.

#![allow(clippy::unwrap_used)]

use drover_service::env::Variable;

fn table(variables: &[Variable]) -> String {
    let mut text = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for v in variables {
        let default = v.default.map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
        text.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            v.name,
            v.help.replace('|', "\\|")
        ));
    }
    text
}

fn section<'a>(readme: &'a str, marker: &str) -> &'a str {
    let start = format!("<!-- {marker} -->\n");
    let end = format!("<!-- /{marker} -->");
    let from = readme.find(&start).unwrap_or_else(|| panic!("README lacks {start}")) + start.len();
    let to = readme[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("README lacks {end}"))
        + from;
    &readme[from..to]
}

/// Compares README's table with the binary's; `DROVER_BLESS_DOCS=1`
/// rewrites the README's table instead.
fn check(marker: &str, variables: &[Variable]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let expected = table(variables);
    if std::env::var_os("DROVER_BLESS_DOCS").is_some() {
        let current = section(&readme, marker).to_owned();
        let marked = format!("<!-- {marker} -->\n{current}");
        std::fs::write(
            path,
            readme.replacen(&marked, &format!("<!-- {marker} -->\n{expected}"), 1),
        )
        .unwrap();
        return;
    }
    assert_eq!(
        section(&readme, marker),
        expected,
        "README's {marker} table is out of date (DROVER_BLESS_DOCS=1 rewrites it); it should read:\n\n{expected}"
    );
}

#[test]
fn readme_documents_every_driver_variable() {
    check("driver-variables", driver::config::VARIABLES);
}

#[test]
fn readme_documents_every_bridge_variable() {
    check("bridge-variables", vendor_bridge::config::VARIABLES);
}

#[test]
fn readme_documents_every_gateway_variable() {
    check("gateway-variables", http_gateway::config::VARIABLES);
}

#[test]
fn readme_documents_every_cli_variable() {
    check("cli-variables", drover_cli::config::VARIABLES);
}
