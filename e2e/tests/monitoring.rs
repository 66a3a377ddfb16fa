//! Monitoring, for real: Debian's `prometheus` scrapes a live fleet under
//! load (drivers, the vendor-bridge, HAProxy, and Redis through Debian's
//! `prometheus-redis-exporter`) with the alert rules of
//! `deploy/monitoring/alerts.yml`; every query of every panel of the
//! Grafana dashboard (`deploy/monitoring/grafana/drover.json`) returns
//! data, every rule evaluates without error, no alert is active while
//! everything works, and the availability alerts fire when their fault is
//! made real (Redis stopped, the bridge killed, the drivers killed).
//!
//! The test's Prometheus configuration is generated from
//! `deploy/monitoring/prometheus.yml`: the same jobs, the test's loopback
//! ports. The rules are the deployed file with each `for:` shortened to
//! 1s (the only difference, checked), so that an alert fires within
//! seconds of its condition; the evaluation interval is 1s.
//!
//! Without `prometheus`, `promtool` or `prometheus-redis-exporter` the
//! test says so and skips (CI installs them). The checks of the files
//! against each other need none of them.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use controller_sim::client::Connection;
use drover_testkit::device::{device_key, serial};
use drover_testkit::fleet::runtime;
use drover_testkit::haproxy_fleet::{drivers_total, env, fleet_spec};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::net::{free_port, loopback};
use drover_testkit::process::{ChildGuard, find_on_path};
use drover_testkit::sim::controller_sim;
use drover_testkit::wait::{wait_for_port, wait_until};
use serde_json::Value;

/// What a Grafana dashboard may leave to Grafana in a query, and what the
/// test puts there instead: `$__rate_interval` is at least four scrape
/// intervals (1s here), and a window this long keeps counters that moved
/// once (an upload, a command) visible while the test looks.
const RATE_INTERVAL: (&str, &str) = ("$__rate_interval", "30s");
/// How long Prometheus may take to see something the fleet did: a scrape
/// and a rule evaluation, each every second, on a loaded machine.
const SEEN_WITHIN: Duration = Duration::from_secs(60);

fn deployed(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// --- The files ------------------------------------------------------------

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {value}"))
}

/// The dashboard's panels, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in list(&dashboard["panels"], "panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every query of every panel, as `(panel title, query)`, with Grafana's
/// variables replaced as Prometheus needs them; a variable the test does
/// not know fails it (else its query would silently not be checked).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = text(&panel["title"], "a panel's title");
        let Some(targets) = panel["targets"].as_array() else {
            assert_eq!(panel["type"], "row", "panel {title:?} has no queries");
            continue;
        };
        assert!(!targets.is_empty(), "panel {title:?} has no queries");
        for target in targets {
            let expr = text(&target["expr"], "a target's expr").replace(RATE_INTERVAL.0, RATE_INTERVAL.1);
            assert!(
                !expr.contains('$'),
                "panel {title:?}: a Grafana variable the test does not replace: {expr}"
            );
            queries.push((title.to_owned(), expr));
        }
    }
    queries
}

/// Every rule of an alert-rules document, by alert name.
fn alert_rules(rules: &Value) -> BTreeMap<String, &Value> {
    let mut out = BTreeMap::new();
    for group in list(&rules["groups"], "groups") {
        for rule in list(&group["rules"], "a group's rules") {
            let name = text(&rule["alert"], "a rule's alert").to_owned();
            assert!(out.insert(name.clone(), rule).is_none(), "alert {name} defined twice");
        }
    }
    out
}

/// The deployed rules with every `for:` set to 1s: the same alerts, made
/// to fire within seconds of their condition.
fn with_short_for(rules: &str) -> String {
    let mut out = String::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("for: ") {
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str("for: 1s");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `deploy/monitoring/prometheus.yml` with the test's targets: the same
/// jobs (every one of them, no other), `rules` instead of its rule file,
/// every second instead of every 15.
fn test_config(targets: &BTreeMap<&str, Vec<SocketAddr>>, rules: &Path) -> String {
    let deployed = drover_e2e::yaml::document(&read(&deployed("prometheus.yml")));
    assert_eq!(
        deployed["rule_files"],
        serde_json::json!(["alerts.yml"]),
        "prometheus.yml loads alerts.yml"
    );
    let jobs: BTreeSet<&str> = list(&deployed["scrape_configs"], "scrape_configs")
        .iter()
        .map(|job| text(&job["job_name"], "job_name"))
        .collect();
    assert_eq!(
        jobs,
        targets.keys().copied().collect(),
        "the test scrapes exactly the jobs of prometheus.yml"
    );
    let mut config = format!(
        "# Generated by e2e/tests/monitoring.rs from deploy/monitoring/prometheus.yml.\n\
         global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n",
        rules.display()
    );
    for job in list(&deployed["scrape_configs"], "scrape_configs") {
        let name = text(&job["job_name"], "job_name");
        let addresses: Vec<String> = targets[name].iter().map(|addr| format!("\"{addr}\"")).collect();
        config.push_str(&format!("  - job_name: {name}\n"));
        if let Some(path) = job["metrics_path"].as_str() {
            config.push_str(&format!("    metrics_path: {path}\n"));
        }
        config.push_str(&format!(
            "    static_configs:\n      - targets: [{}]\n",
            addresses.join(", ")
        ));
    }
    config
}

// --- Prometheus and promtool ----------------------------------------------

/// The programs the live test needs, or why it skips.
fn installed() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let found = (
        find_on_path("prometheus"),
        find_on_path("promtool"),
        find_on_path("prometheus-redis-exporter"),
    );
    match found {
        (Some(prometheus), Some(promtool), Some(exporter)) => Some((prometheus, promtool, exporter)),
        _ => {
            eprintln!(
                "prometheus, promtool or prometheus-redis-exporter is not installed: skipped \
                 (`apt-get install prometheus prometheus-redis-exporter`; CI installs them)"
            );
            None
        }
    }
}

fn promtool(promtool: &Path, args: &[&str], file: &Path) {
    let output = Command::new(promtool).args(args).arg(file).output().unwrap();
    assert!(
        output.status.success(),
        "promtool {} {} failed:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private Prometheus on a free loopback port; killed when dropped.
struct Prometheus {
    _process: ChildGuard,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, config: &Path, dir: &Path) -> Self {
        let addr = loopback(free_port().unwrap());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let process = ChildGuard::spawn(format!("prometheus {addr}"), &mut command).unwrap();
        wait_until("Prometheus to be ready", SEEN_WITHIN, || {
            drover_testkit::http::get(addr, "/-/ready").is_ok_and(|(status, _)| status == 200)
        })
        .unwrap();
        Self {
            _process: process,
            addr,
        }
    }

    /// `GET /api/v1/{path}`'s `data`; fails the test unless it succeeded.
    fn api(&self, path: &str) -> Value {
        let (status, body) = drover_testkit::http::get(self.addr, &format!("/api/v1/{path}")).unwrap();
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|err| panic!("{path}: not JSON ({err}): {body}"));
        assert_eq!(
            (status, &answer["status"]),
            (200, &Value::from("success")),
            "{path}: {body}"
        );
        answer["data"].clone()
    }

    /// The series an instant query returns now.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", percent_encode(promql)));
        list(&data["result"], "a query's result").clone()
    }

    /// The one value of a query that must return one series.
    fn value(&self, promql: &str) -> f64 {
        let result = self.query(promql);
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        text(&result[0]["value"][1], "a sample").parse().unwrap()
    }

    /// `(alert name, state)` of every active (pending or firing) alert.
    fn active_alerts(&self) -> BTreeSet<(String, String)> {
        list(&self.api("alerts")["alerts"], "alerts")
            .iter()
            .map(|alert| {
                (
                    text(&alert["labels"]["alertname"], "alertname").to_owned(),
                    text(&alert["state"], "state").to_owned(),
                )
            })
            .collect()
    }

    fn is_firing(&self, alert: &str) -> bool {
        self.active_alerts().contains(&(alert.to_owned(), "firing".to_owned()))
    }

    fn wait_firing(&self, alert: &str) {
        wait_until(&format!("alert {alert} to fire"), SEEN_WITHIN, || self.is_firing(alert))
            .unwrap_or_else(|err| panic!("{err}; active alerts: {:?}", self.active_alerts()));
    }

    /// Every rule: `(name, health, last error)`.
    fn rules(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for group in list(&self.api("rules")["groups"], "groups") {
            for rule in list(&group["rules"], "rules") {
                out.push((
                    text(&rule["name"], "name").to_owned(),
                    text(&rule["health"], "health").to_owned(),
                    rule["lastError"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        out
    }

    /// When each rule group last began an evaluation.
    fn last_evaluations(&self) -> Vec<String> {
        list(&self.api("rules")["groups"], "groups")
            .iter()
            .map(|group| text(&group["lastEvaluation"], "lastEvaluation").to_owned())
            .collect()
    }
}

/// A query string's value, percent-encoded (everything but RFC 3986's
/// unreserved characters).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn redis_exporter(binary: &Path, redis_url: &str, dir: &Path) -> (ChildGuard, SocketAddr) {
    let addr = loopback(free_port().unwrap());
    let log = std::fs::File::create(dir.join("redis-exporter.log")).unwrap();
    let mut command = Command::new(binary);
    command
        .args(["-redis.addr", redis_url, "-web.listen-address", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let process = ChildGuard::spawn(format!("redis exporter {addr}"), &mut command).unwrap();
    wait_for_port(addr, SEEN_WITHIN).unwrap();
    (process, addr)
}

// --- Making every panel show something ------------------------------------

/// A fleet whose drivers refuse a second failed authentication from one
/// address, so that the rate-limit panel has something to show.
fn spec(state: &Path) -> FleetSpec {
    FleetSpec {
        driver_env: env(&[("DRIVER_AUTH_FAILURES_PER_ADDRESS", "1")]),
        ..fleet_spec(2, state)
    }
}

/// Devices that fail authentication, from one address: the first on each
/// driver is a wrong MAC (`UNAUTHORIZED`), the next ones are refused by the
/// per-address limit (`BUSY`). Six attempts over two drivers: at least
/// one driver sees three.
fn fail_authentications(fleet: &LocalFleet) {
    let rt = runtime();
    rt.block_on(async {
        let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 50));
        for attempt in 0..6 {
            let device = serial(&format!("THIEF-{attempt}"));
            let wrong_key = device_key(&serial("SOMEONE-ELSE"));
            let mut connection = Connection::connect_from(fleet.haproxy.addr(), stranger).await.unwrap();
            let refused = connection.handshake(device, &wrong_key, "fw").await;
            assert!(refused.is_err(), "a wrong key was accepted");
        }
    });
}

/// Publishes commands to simulated devices until one was delivered.
fn send_commands(fleet: &LocalFleet) {
    let rt = runtime();
    rt.block_on(async {
        let mut redis = redis::Client::open(fleet.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for number in 1..=20 {
            let device = serial(&format!("SIM-{number:06}"));
            let _: i64 = redis::cmd("PUBLISH")
                .arg(drover_schema::COMMANDS.name(&device))
                .arg(r#"{"name":"status"}"#)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    });
}

// --- The tests ------------------------------------------------------------

#[test]
fn prometheus_sees_every_panel_and_fires_the_alerts_of_a_live_fleet() {
    let Some((prometheus_bin, promtool_bin, exporter_bin)) = installed() else {
        return;
    };
    // The deployed files as they are.
    promtool(&promtool_bin, &["check", "rules"], &deployed("alerts.yml"));
    promtool(&promtool_bin, &["check", "config"], &deployed("prometheus.yml"));

    let state = tempfile::tempdir().unwrap();
    let spec = spec(state.path());
    let stats_port = spec.stats_port;
    let mut fleet = LocalFleet::start(spec).unwrap();
    let (_exporter, exporter_addr) = redis_exporter(&exporter_bin, &fleet.redis_url, state.path());

    let rules_text = read(&deployed("alerts.yml"));
    let test_rules = state.path().join("alerts.yml");
    std::fs::write(&test_rules, with_short_for(&rules_text)).unwrap();
    let targets = BTreeMap::from([
        ("driver", fleet.drivers.iter().map(|d| d.admin_addr()).collect()),
        ("vendor-bridge", vec![fleet.bridge.metrics_addr()]),
        ("haproxy", vec![loopback(stats_port)]),
        ("redis", vec![exporter_addr]),
    ]);
    let config = state.path().join("prometheus.yml");
    std::fs::write(&config, test_config(&targets, &test_rules)).unwrap();
    promtool(&promtool_bin, &["check", "rules"], &test_rules);
    promtool(&promtool_bin, &["check", "config"], &config);
    let prometheus = Prometheus::start(&prometheus_bin, &config, state.path());

    // Load: 200 devices, of every 100 90 idle, 9 sending events, 1
    // uploading; commands to some of them; failed authentications.
    let mut sim = controller_sim(&fleet.haproxy.addr().to_string())
        .args(["--scenario", "mixed", "--devices", "200", "--rate", "300"])
        .args(["--upload-bytes", "200000", "--duration", "120s"])
        .args(["--source-ips", "127.0.0.10-127.0.0.20"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the simulated devices to connect", SEEN_WITHIN, || {
        drivers_total(&fleet, "drover_driver_sessions") >= 200.0
    })
    .unwrap();
    send_commands(&fleet);
    fail_authentications(&fleet);

    // Every query of every panel returns data.
    let dashboard: Value = serde_json::from_str(&read(&deployed("grafana/drover.json"))).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 30, "{} queries: is the dashboard read?", queries.len());
    let mut without_data = queries.clone();
    let waited = wait_until("every panel query to return data", SEEN_WITHIN, || {
        without_data.retain(|(_, query)| prometheus.query(query).is_empty());
        without_data.is_empty()
    });
    assert!(
        waited.is_ok(),
        "{} of {} panel queries return no data: {without_data:#?}",
        without_data.len(),
        queries.len()
    );
    // The control: a query for a metric nobody exports returns nothing,
    // so the check above can fail.
    assert!(
        prometheus
            .query("sum(rate(drover_driver_events_recieved_total[30s]))")
            .is_empty()
    );

    // Every rule evaluates, without error.
    let rules = drover_e2e::yaml::document(&rules_text);
    let alerts = alert_rules(&rules);
    wait_until("every rule to be evaluated", SEEN_WITHIN, || {
        let rules = prometheus.rules();
        assert!(
            rules.iter().all(|(_, health, _)| health != "err"),
            "rules fail to evaluate: {rules:?}"
        );
        rules.len() == alerts.len() && rules.iter().all(|(_, health, _)| health == "ok")
    })
    .unwrap_or_else(|err| panic!("{err}: {:?}", prometheus.rules()));

    // The control: with everything up and working, and a whole evaluation
    // later, no alert at all is even pending (the failed authentications
    // above are far below AuthFailuresSpike's 1/s).
    for (query, expected) in [
        ("min(up)", 1.0),
        ("count(up)", 5.0),
        ("max(drover_bridge_health_serving)", 1.0),
        ("max(redis_up)", 1.0),
        // The caps the near-cap alerts divide by: the drivers' defaults.
        ("min(drover_driver_events_pending_limit)", 100_000.0),
        ("min(drover_driver_events_pending_bytes_limit)", 67_108_864.0),
        ("min(drover_bridge_queued_bytes_limit)", 268_435_456.0),
    ] {
        assert_eq!(prometheus.value(query), expected, "{query}");
    }
    let before = prometheus.last_evaluations();
    wait_until("every rule group to evaluate again", SEEN_WITHIN, || {
        prometheus
            .last_evaluations()
            .iter()
            .zip(&before)
            .all(|(now, then)| now != then)
    })
    .unwrap();
    assert_eq!(prometheus.active_alerts(), BTreeSet::new());
    let _ = sim.kill();
    let _ = sim.wait();

    // Redis stops: Redis is down, and the bridge, still up, stops serving.
    fleet.redis.as_mut().unwrap().stop();
    prometheus.wait_firing("RedisDown");
    prometheus.wait_firing("BridgeNotServing");
    assert_eq!(
        prometheus.value(r#"up{job="vendor-bridge"}"#),
        1.0,
        "NOT_SERVING is the bridge's own health gauge: the bridge is up"
    );
    assert_eq!(prometheus.value("max(drover_bridge_health_serving)"), 0.0);
    assert!(!prometheus.is_firing("BridgeDown"), "{:?}", prometheus.active_alerts());

    // The bridge dies.
    fleet.bridge.process().kill();
    prometheus.wait_firing("BridgeDown");
    assert!(prometheus.is_firing("BridgeNotServing"));

    // One driver dies; HAProxy still has the other.
    fleet.drivers[0].process().kill();
    prometheus.wait_firing("DriverDown");
    assert!(
        !prometheus.is_firing("NoDriverAvailable"),
        "{:?}",
        prometheus.active_alerts()
    );
    // And the last one: no device can connect.
    fleet.drivers[1].process().kill();
    prometheus.wait_firing("NoDriverAvailable");
}

#[test]
fn the_test_rules_differ_from_the_deployed_ones_only_in_for() {
    let deployed_text = read(&deployed("alerts.yml"));
    let deployed_rules = drover_e2e::yaml::document(&deployed_text);
    let short_rules = drover_e2e::yaml::document(&with_short_for(&deployed_text));
    let (deployed_rules, short_rules) = (alert_rules(&deployed_rules), alert_rules(&short_rules));
    assert_eq!(
        deployed_rules.keys().collect::<Vec<_>>(),
        short_rules.keys().collect::<Vec<_>>()
    );
    for (name, rule) in &deployed_rules {
        let (mut deployed_rule, mut short_rule) = ((*rule).clone(), short_rules[name].clone());
        assert!(
            rule.get("for").is_some(),
            "{name} has a for: (a single bad sample must not page)"
        );
        assert_eq!(short_rule["for"], "1s", "{name}");
        deployed_rule.as_object_mut().unwrap().remove("for");
        short_rule.as_object_mut().unwrap().remove("for");
        assert_eq!(deployed_rule, short_rule, "{name} differs beyond its for:");
    }
}

#[test]
fn the_readme_lists_every_alert() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"));
    let rules = drover_e2e::yaml::document(&read(&deployed("alerts.yml")));
    let missing: Vec<String> = alert_rules(&rules)
        .into_keys()
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "alerts missing from README's Monitoring table"
    );
}

#[test]
fn the_monitoring_files_agree_with_each_other_and_with_the_compose_stack() {
    let compose = drover_e2e::yaml::document(&read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml"),
    ));
    let overlay = drover_e2e::yaml::document(&read(&deployed("docker-compose.monitoring.yml")));
    let prometheus = drover_e2e::yaml::document(&read(&deployed("prometheus.yml")));
    let datasource = drover_e2e::yaml::document(&read(&deployed("grafana/provisioning/datasources/prometheus.yml")));
    let provider = drover_e2e::yaml::document(&read(&deployed("grafana/provisioning/dashboards/drover.yml")));
    let dashboard: Value = serde_json::from_str(&read(&deployed("grafana/drover.json"))).unwrap();

    let base_services: BTreeSet<&String> = compose["services"].as_object().unwrap().keys().collect();
    let overlay_services = overlay["services"].as_object().unwrap();
    // The overlay's own services start only with the profile; the ones it
    // extends keep theirs.
    for (name, service) in overlay_services {
        if !base_services.contains(name) {
            assert_eq!(service["profiles"], serde_json::json!(["monitoring"]), "{name}");
        }
    }
    // Every file it mounts exists (paths are relative to the project
    // directory, docker-compose.yml's).
    for service in overlay_services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = text(volume, "a volume").split(':').next().unwrap();
            if let Some(relative) = source.strip_prefix("./") {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
                assert!(path.exists(), "{} is mounted but does not exist", path.display());
            }
        }
    }

    // Prometheus scrapes compose services, every driver among them, and
    // the bridge where the overlay has it listen.
    let mut scraped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for job in list(&prometheus["scrape_configs"], "scrape_configs") {
        let name = text(&job["job_name"], "job_name");
        for config in list(&job["static_configs"], "static_configs") {
            for target in list(&config["targets"], "targets") {
                scraped.entry(name).or_default().push(text(target, "a target"));
            }
        }
    }
    for target in scraped.values().flatten() {
        let host = target.split(':').next().unwrap();
        assert!(
            base_services.contains(&host.to_owned()) || overlay_services.contains_key(host),
            "prometheus.yml scrapes {target}, not a compose service"
        );
    }
    let drivers: BTreeSet<String> = base_services
        .iter()
        .filter(|name| name.starts_with("driver-"))
        .map(|name| format!("{name}:9101"))
        .collect();
    assert!(!drivers.is_empty());
    assert_eq!(
        scraped["driver"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect::<BTreeSet<_>>(),
        drivers,
        "the driver job scrapes every driver service, on DRIVER_ADMIN_LISTEN's port"
    );
    let bridge_listen = text(
        &overlay_services["vendor-bridge"]["environment"]["BRIDGE_METRICS_LISTEN"],
        "BRIDGE_METRICS_LISTEN",
    );
    assert_eq!(
        scraped["vendor-bridge"],
        [format!("vendor-bridge:{}", bridge_listen.rsplit(':').next().unwrap())],
    );
    let exporter_listen = text(
        &overlay_services["redis-exporter"]["environment"]["REDIS_EXPORTER_WEB_LISTEN_ADDRESS"],
        "REDIS_EXPORTER_WEB_LISTEN_ADDRESS",
    );
    assert_eq!(
        scraped["redis"],
        [format!(
            "redis-exporter:{}",
            exporter_listen.rsplit(':').next().unwrap()
        )],
    );
    let haproxy_config = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-config/haproxy.cfg"));
    let stats_port = haproxy_config
        .split("frontend stats")
        .nth(1)
        .and_then(|stats| stats.lines().find_map(|line| line.trim().strip_prefix("bind ")))
        .and_then(|bind| bind.rsplit(':').next())
        .expect("lb-config/haproxy.cfg has a stats frontend");
    assert_eq!(scraped["haproxy"], [format!("haproxy:{stats_port}")]);

    // Grafana: every panel uses the provisioned data source, and the
    // provider reads the directory the dashboard is mounted in.
    let uid = text(&datasource["datasources"][0]["uid"], "the data source's uid");
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], uid, "panel {}", panel["title"]);
        for target in list(&panel["targets"], "targets") {
            assert_eq!(target["datasource"]["uid"], uid, "panel {}", panel["title"]);
        }
    }
    let dashboards_dir = text(&provider["providers"][0]["options"]["path"], "the provider's path");
    let mounted = overlay_services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|volume| volume.as_str())
        .any(|volume| {
            volume.starts_with("./deploy/monitoring/grafana/drover.json:")
                && volume.contains(&format!(":{dashboards_dir}/"))
        });
    assert!(mounted, "grafana/drover.json is mounted into {dashboards_dir}");
}
