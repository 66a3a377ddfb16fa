//! docker-compose.yml, checked without Docker against everything it must
//! agree with: the HAProxy configuration it mounts (lb-config/haproxy.cfg,
//! which must be exactly what `fleet lb-config` generates for this layout),
//! the variables the binaries read, `.env.example`, and the Dockerfile.
//! A compose tool's own validation (`docker-compose config -q`, in CI)
//! checks the syntax; these tests check the meaning.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drover_service::duration::parse_duration;
use drover_service::env::Variable;
use drover_testkit::lbconfig::{HttpFrontend, LbConfig, maxconn_for_open_files};
use serde_json::Value;

/// Docker's embedded DNS server, inside every compose network.
const DOCKER_DNS: &str = "127.0.0.11:53";
/// Where the official HAProxy image reads its configuration.
const HAPROXY_CONFIG: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// A master key for interpolation (`.env.example` ships none).
const TEST_MASTER_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// A bridge token for interpolation (`.env.example` ships none either).
const TEST_BRIDGE_TOKEN: &str = "compose-test-bridge-token";

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// --- YAML and interpolation ----------------------------------------------

/// One `${...}` in the compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    name: String,
    /// `${NAME:-default}`.
    default: Option<String>,
    /// `${NAME:?message}`: compose refuses to start without it.
    required: bool,
}

/// Compose's interpolation of one string with `env` (as a `.env` would
/// give it): `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
/// `${NAME:?message}`, `${NAME?message}`, `$$`. Records every reference.
fn interpolate(text: &str, env: &BTreeMap<String, String>, references: &mut Vec<Reference>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let expression = rest
            .strip_prefix('{')
            .and_then(|body| body.split_once('}'))
            .unwrap_or_else(|| panic!("write ${{NAME}}, not $NAME: {text:?}"));
        let (body, after) = expression;
        rest = after;
        let name_end = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (name, operator) = body.split_at(name_end);
        let set = env.get(name);
        let non_empty = set.filter(|value| !value.is_empty());
        let (value, default, required) = if let Some(default) = operator.strip_prefix(":-") {
            (
                non_empty.cloned().unwrap_or_else(|| default.to_owned()),
                Some(default),
                false,
            )
        } else if let Some(default) = operator.strip_prefix('-') {
            (set.cloned().unwrap_or_else(|| default.to_owned()), Some(default), false)
        } else if let Some(message) = operator.strip_prefix(":?") {
            (
                non_empty.cloned().unwrap_or_else(|| panic!("{name}: {message}")),
                None,
                true,
            )
        } else if let Some(message) = operator.strip_prefix('?') {
            (set.cloned().unwrap_or_else(|| panic!("{name}: {message}")), None, true)
        } else {
            assert!(operator.is_empty(), "unknown interpolation ${{{body}}}");
            (set.cloned().unwrap_or_default(), None, false)
        };
        references.push(Reference {
            name: name.to_owned(),
            default: default.map(str::to_owned),
            required,
        });
        out.push_str(&value);
    }
    out.push_str(rest);
    out
}

fn interpolate_all(value: &mut Value, env: &BTreeMap<String, String>, references: &mut Vec<Reference>) {
    match value {
        Value::String(text) => *text = interpolate(text, env, references),
        Value::Array(items) => items.iter_mut().for_each(|item| interpolate_all(item, env, references)),
        Value::Object(object) => object
            .values_mut()
            .for_each(|item| interpolate_all(item, env, references)),
        _ => {}
    }
}

/// `.env.example`'s variables, in order, with their values.
fn env_example() -> Vec<(String, String)> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap_or_else(|| panic!("not NAME=value: {line}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// docker-compose.yml as compose sees it after `cp .env.example .env` and
/// setting `CWP_MASTER_KEY` and `BRIDGE_TOKEN`.
struct Compose {
    /// Interpolated.
    file: Value,
    /// Every `${...}` in it.
    references: Vec<Reference>,
}

impl Compose {
    fn load() -> Self {
        let text = read("docker-compose.yml");
        let mut file = drover_e2e::yaml::document(&text);
        let mut env: BTreeMap<String, String> = env_example().into_iter().collect();
        env.insert("CWP_MASTER_KEY".to_owned(), TEST_MASTER_KEY.to_owned());
        env.insert("BRIDGE_TOKEN".to_owned(), TEST_BRIDGE_TOKEN.to_owned());
        let mut references = Vec::new();
        interpolate_all(&mut file, &env, &mut references);
        Self { file, references }
    }

    fn service(&self, name: &str) -> &Value {
        let service = &self.file["services"][name];
        assert!(service.is_object(), "no service {name}");
        service
    }

    /// `(name, service)` of each service whose command runs `binary`.
    fn running(&self, binary: &str) -> Vec<(&str, &Value)> {
        self.file["services"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, service)| service["command"][0] == binary)
            .map(|(name, service)| (name.as_str(), service))
            .collect()
    }

    /// The one service running `binary`.
    fn only(&self, binary: &str) -> (&str, &Value) {
        let services = self.running(binary);
        assert_eq!(services.len(), 1, "one service runs {binary}");
        services[0]
    }
}

/// A service's environment; compose allows a list too, we write mappings.
fn environment(service: &Value) -> BTreeMap<&str, &str> {
    service["environment"]
        .as_object()
        .expect("environment is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_else(|| panic!("{k} is not a string"))))
        .collect()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// `(host, port)` of a URL such as `redis://redis:6379`.
fn host_port(url: &str) -> (&str, u16) {
    let authority = url.split_once("://").unwrap().1.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').unwrap();
    (host, port.parse().unwrap())
}

/// The container port that the host port `.env.example` gives `variable`
/// is published to (`[HOST_IP:]HOST_PORT:CONTAINER_PORT`).
fn container_port(service: &Value, variable: &str) -> u16 {
    let env: BTreeMap<String, String> = env_example().into_iter().collect();
    let host_port: u16 = env[variable].parse().unwrap();
    strings(&service["ports"])
        .iter()
        .find_map(|mapping| {
            let mut parts = mapping.rsplit(':');
            let container = parts.next()?.parse().ok()?;
            (parts.next()?.parse::<u16>().ok()? == host_port).then_some(container)
        })
        .unwrap_or_else(|| panic!("{variable}={host_port} is not published: {}", service["ports"]))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

fn assert_depends_on_healthy(name: &str, service: &Value, dependencies: &[&str]) {
    for dependency in dependencies {
        assert_eq!(
            service["depends_on"][dependency]["condition"], "service_healthy",
            "{name} waits for {dependency} to be healthy"
        );
    }
}

// --- lb-config/haproxy.cfg -----------------------------------------------

/// The lines of one HAProxy section (`frontend cwp`).
fn section<'a>(config: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = config.lines().skip_while(|line| *line != header);
    assert!(lines.next().is_some(), "haproxy.cfg has no `{header}`");
    lines
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .map(str::trim)
        .collect()
}

/// The port a frontend binds.
fn bind_port(config: &str, frontend: &str) -> u16 {
    let lines = section(config, &format!("frontend {frontend}"));
    let bind = lines.iter().find_map(|line| line.strip_prefix("bind ")).unwrap();
    port_of(bind)
}

/// `server NAME HOST:PORT port CHECK_PORT` lines of the drivers backend.
fn servers(config: &str) -> Vec<(String, String, u16, u16)> {
    section(config, "backend drivers")
        .iter()
        .filter_map(|line| line.strip_prefix("server "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (host, port) = words[1].rsplit_once(':').unwrap();
            assert_eq!(words[2], "port", "{line}");
            (
                words[0].to_owned(),
                host.to_owned(),
                port.parse().unwrap(),
                words[3].parse().unwrap(),
            )
        })
        .collect()
}

fn global_maxconn(config: &str) -> u32 {
    section(config, "global")
        .iter()
        .find_map(|line| line.strip_prefix("maxconn "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The command recorded in the generated file's header, as arguments.
fn recorded_command(config: &str) -> Vec<String> {
    let line = config
        .lines()
        .skip_while(|line| !line.contains("GENERATED from"))
        .nth(1)
        .and_then(|line| line.strip_prefix("#   fleet "))
        .expect("the header records the generating command");
    line.split_whitespace().map(str::to_owned).collect()
}

// --- The tests ------------------------------------------------------------

#[test]
fn env_example_documents_every_setting_with_the_files_default() {
    let compose = Compose::load();
    let example = env_example();
    let documented: BTreeMap<&str, &str> = example.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for reference in &compose.references {
        let value = documented
            .get(reference.name.as_str())
            .unwrap_or_else(|| panic!("${{{}}} is not in .env.example", reference.name));
        if let Some(default) = &reference.default {
            assert_eq!(
                value, default,
                "{}: .env.example and the compose default differ",
                reference.name
            );
        }
        if reference.required {
            assert_eq!(*value, "", "{}: .env.example must not ship a value", reference.name);
        }
    }
    let required: Vec<&str> = compose
        .references
        .iter()
        .filter(|r| r.required)
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        required.contains(&"CWP_MASTER_KEY"),
        "compose must refuse to start without CWP_MASTER_KEY"
    );
    let used: BTreeSet<&str> = compose.references.iter().map(|r| r.name.as_str()).collect();
    for (name, _) in &example {
        assert!(
            used.contains(name.as_str()),
            ".env.example documents {name}, which compose does not use"
        );
    }
    // Each variable sits under a comment that explains it (or its group).
    let mut explained = false;
    for line in read(".env.example").lines() {
        match line.trim() {
            "" => explained = false,
            comment if comment.starts_with('#') => explained = true,
            variable => assert!(explained, ".env.example: no comment above {variable}"),
        }
    }
}

#[test]
fn the_drivers_are_the_servers_of_lb_config() {
    let compose = Compose::load();
    let config = read("lb-config/haproxy.cfg");
    let drivers = compose.running("driver");
    let servers = servers(&config);
    let names: BTreeSet<&str> = drivers.iter().map(|(name, _)| *name).collect();
    let server_names: BTreeSet<&str> = servers.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, server_names, "driver services and lb-config servers");
    assert!(drivers.len() >= 2, "several drivers");
    assert!(
        section(&config, "backend drivers")
            .iter()
            .any(|line| line.starts_with("default-server send-proxy-v2")),
        "HAProxy sends PROXY v2 headers"
    );

    let mut upload_volumes = BTreeSet::new();
    for (name, host, port, check_port) in &servers {
        let service = compose.service(name);
        let env = environment(service);
        assert_eq!(host, name, "lb-config reaches {name} by its service name");
        assert_eq!(port_of(env["DRIVER_LISTEN"]), *port, "{name}: DRIVER_LISTEN");
        assert_eq!(
            port_of(env["DRIVER_ADMIN_LISTEN"]),
            *check_port,
            "{name}: DRIVER_ADMIN_LISTEN"
        );
        assert_eq!(env["DRIVER_ID"], name, "{name}: DRIVER_ID");
        assert_eq!(env["DRIVER_PROXY_PROTOCOL"], "true", "{name} is behind HAProxy");
        // `driver --health` asks /healthz on DRIVER_ADMIN_LISTEN, checked
        // above to be HAProxy's check port.
        assert_eq!(
            strings(&service["healthcheck"]["test"]),
            ["CMD", "driver", "--health"],
            "{name}'s healthcheck asks /healthz like HAProxy"
        );
        let upload_dir = env["UPLOAD_DIR"];
        let volume = strings(&service["volumes"])
            .into_iter()
            .find_map(|mount| mount.strip_suffix(&format!(":{upload_dir}")))
            .unwrap_or_else(|| panic!("{name}: no volume at UPLOAD_DIR {upload_dir}"));
        upload_volumes.insert(volume.to_owned());

        let drain = parse_duration(env["DRIVER_DRAIN_PERIOD"]).unwrap();
        let grace = parse_duration(service["stop_grace_period"].as_str().unwrap()).unwrap();
        // driver::run: the drain gets DRIVER_DRAIN_PERIOD (at least 5 s) + 15 s,
        // the event pipeline 10 s more.
        assert!(
            grace >= drain.max(Duration::from_secs(5)) + Duration::from_secs(25),
            "{name}: stop_grace_period {grace:?} too short for DRIVER_DRAIN_PERIOD {drain:?}"
        );
        assert_depends_on_healthy(name, service, &["redis", "vendor-bridge"]);
    }
    assert_eq!(
        upload_volumes.len(),
        1,
        "one UPLOAD_DIR volume for every driver: {upload_volumes:?}"
    );
    let volume = upload_volumes.pop_first().unwrap();
    assert!(
        compose.file["volumes"].as_object().unwrap().contains_key(&volume),
        "{volume} is a named volume"
    );
}

#[test]
fn the_http_gateways_are_the_servers_of_lb_config_s_http_frontend() {
    let compose = Compose::load();
    let config = read("lb-config/haproxy.cfg");
    let gateways = compose.running("http-gateway");
    assert!(!gateways.is_empty(), "an http-gateway service");
    let servers: Vec<(String, String, u16, u16)> = section(&config, "backend gateways")
        .iter()
        .filter_map(|line| line.strip_prefix("server "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (host, port) = words[1].rsplit_once(':').unwrap();
            (
                words[0].to_owned(),
                host.to_owned(),
                port.parse().unwrap(),
                words[3].parse().unwrap(),
            )
        })
        .collect();
    let names: BTreeSet<&str> = gateways.iter().map(|(name, _)| *name).collect();
    let server_names: BTreeSet<&str> = servers.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, server_names, "http-gateway services and lb-config's gateways");
    assert!(
        section(&config, "backend gateways")
            .iter()
            .any(|line| line.starts_with("default-server send-proxy-v2")),
        "HAProxy sends PROXY v2 headers to the gateways"
    );
    for (name, host, port, check_port) in &servers {
        let service = compose.service(name);
        let env = environment(service);
        assert_eq!(host, name, "lb-config reaches {name} by its service name");
        assert_eq!(port_of(env["HTTP_LISTEN"]), *port, "{name}: HTTP_LISTEN");
        assert_eq!(
            port_of(env["HTTP_ADMIN_LISTEN"]),
            *check_port,
            "{name}: HTTP_ADMIN_LISTEN"
        );
        assert_eq!(env["HTTP_GATEWAY_ID"], name, "{name}: HTTP_GATEWAY_ID");
        assert_eq!(
            env["HTTP_PROXY_PROTOCOL"], "true",
            "{name} trusts HAProxy's header only"
        );
        assert_eq!(
            strings(&service["healthcheck"]["test"]),
            ["CMD", "http-gateway", "--health"],
            "{name}'s healthcheck asks /healthz like HAProxy"
        );
        assert_depends_on_healthy(name, service, &["redis", "vendor-bridge"]);
    }
}

#[test]
fn haproxy_mounts_lb_config_and_publishes_its_ports() {
    let compose = Compose::load();
    let config = read("lb-config/haproxy.cfg");
    let haproxy = compose.service("haproxy");
    assert!(
        strings(&haproxy["volumes"]).contains(&format!("./lb-config/haproxy.cfg:{HAPROXY_CONFIG}:ro").as_str()),
        "lb-config mounted read-only"
    );
    for (frontend, variable) in [
        ("cwp", "FLEET_PORT"),
        ("http", "HTTP_PORT"),
        ("stats", "HAPROXY_STATS_PORT"),
    ] {
        assert_eq!(
            container_port(haproxy, variable),
            bind_port(&config, frontend),
            "{variable} publishes frontend {frontend}"
        );
    }
    // Two descriptors per connection: the limit must carry maxconn.
    let nofile = haproxy["ulimits"]["nofile"]["hard"].as_u64().unwrap();
    assert!(
        maxconn_for_open_files(nofile) >= global_maxconn(&config),
        "nofile {nofile} too low for maxconn {}",
        global_maxconn(&config)
    );
    let behind: Vec<&str> = compose
        .running("driver")
        .iter()
        .chain(compose.running("http-gateway").iter())
        .map(|(name, _)| *name)
        .collect();
    assert_depends_on_healthy("haproxy", haproxy, &behind);
    // Every device HAProxy admits may land on one driver (the others
    // restarting): its limit must hold them, one descriptor each, plus a
    // hundred for its listeners, Redis, the bridge and upload files.
    for (name, driver) in compose.running("driver") {
        let nofile = &driver["ulimits"]["nofile"];
        for limit in ["soft", "hard"] {
            let value: u32 = nofile[limit]
                .as_str()
                .map(|text| text.parse().unwrap())
                .or_else(|| nofile[limit].as_u64().map(|n| u32::try_from(n).unwrap()))
                .unwrap_or_else(|| panic!("{name}: no nofile {limit} limit"));
            assert!(
                value >= global_maxconn(&config) + 100,
                "{name}: nofile {limit} {value} cannot hold HAProxy's maxconn {}",
                global_maxconn(&config)
            );
        }
    }
}

#[test]
fn the_drivers_find_the_bridge_and_redis_which_fsyncs_every_write() {
    let compose = Compose::load();
    let (bridge_name, bridge) = compose.only("vendor-bridge");
    let bridge_env = environment(bridge);
    let bridge_port = port_of(bridge_env["BRIDGE_LISTEN"]);
    // grpc.health.v1 on BRIDGE_LISTEN, which follows Redis (an open port
    // alone said healthy while Redis refused every connection).
    assert_eq!(
        strings(&bridge["healthcheck"]["test"]),
        ["CMD", "vendor-bridge", "--health"],
        "{bridge_name}'s healthcheck asks its grpc.health.v1 status"
    );
    let grace = parse_duration(bridge["stop_grace_period"].as_str().unwrap()).unwrap();
    assert!(grace > parse_duration(bridge_env["BRIDGE_SHUTDOWN_GRACE"]).unwrap());
    assert_depends_on_healthy(bridge_name, bridge, &["redis"]);

    let redis = compose.service("redis");
    let command = strings(&redis["command"]).join(" ");
    assert!(command.contains("--appendonly yes"), "{command}");
    assert!(command.contains("--appendfsync always"), "{command}");
    assert!(
        strings(&redis["volumes"]).iter().any(|mount| mount.ends_with(":/data")),
        "Redis keeps its AOF on a volume"
    );
    assert!(
        strings(&redis["healthcheck"]["test"])
            .join(" ")
            .contains("redis-cli ping")
    );

    for (name, driver) in compose.running("driver") {
        let env = environment(driver);
        assert_eq!(
            host_port(env["VENDOR_BRIDGE_URL"]),
            (bridge_name, bridge_port),
            "{name}"
        );
        assert_eq!(host_port(env["REDIS_URL"]), ("redis", 6379), "{name}");
        assert_eq!(
            env["VENDOR_BRIDGE_TOKEN"], bridge_env["BRIDGE_TOKEN"],
            "{name} presents the token the bridge asks for"
        );
    }
    assert_eq!(host_port(bridge_env["REDIS_URL"]), ("redis", 6379));
}

#[test]
fn every_service_restarts_and_reports_its_health() {
    let compose = Compose::load();
    for (name, service) in compose.file["services"].as_object().unwrap() {
        assert_eq!(service["restart"], "unless-stopped", "{name}");
        assert!(service["healthcheck"]["test"].is_array(), "{name} has a healthcheck");
    }
}

/// Runs `binary --sentry-test` with exactly `env`: it parses the whole
/// configuration first (exit 2 and every problem if it is invalid), then
/// stops for want of a `SENTRY_DSN` (exit 1), binding nothing.
fn assert_accepts_configuration(binary: &str, env: &BTreeMap<&str, &str>) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(drover_testkit::binaries::binary(binary).unwrap())
        .arg("--sentry-test")
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(1) && stderr.contains("SENTRY_DSN is not set"),
        "{binary} refuses the compose configuration: {stderr}"
    );
}

#[test]
fn every_variable_a_service_sets_is_one_its_binary_reads_and_accepts() {
    let compose = Compose::load();
    let names = |table: &[Variable]| -> BTreeSet<String> {
        table
            .iter()
            .map(|v| v.name.to_owned())
            .chain([drover_service::telemetry::LOG_FILTER_VARIABLE.to_owned()])
            .collect()
    };
    for (binary, table) in [
        ("driver", driver::config::VARIABLES),
        ("vendor-bridge", vendor_bridge::config::VARIABLES),
        ("http-gateway", http_gateway::config::VARIABLES),
    ] {
        let known = names(table);
        let services = compose.running(binary);
        assert!(!services.is_empty(), "no service runs {binary}");
        for (name, service) in services {
            let env = environment(service);
            for variable in env.keys() {
                assert!(
                    known.contains(*variable),
                    "{name} sets {variable}, which {binary} does not read"
                );
            }
            assert_accepts_configuration(binary, &env);
        }
    }
}

#[test]
fn the_image_holds_every_binary_the_services_run() {
    let compose = Compose::load();
    let dockerfile = read("Dockerfile");
    for (name, service) in compose.file["services"].as_object().unwrap() {
        if service["build"].is_null() {
            continue; // an official image
        }
        assert_eq!(
            service["build"]["context"], ".",
            "{name} runs the image of ./Dockerfile"
        );
        let binary = service["command"][0].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("-p {binary} ")) && dockerfile.contains(&format!("target/release/{binary} ")),
            "the Dockerfile does not build and install {binary}"
        );
        if binary == "driver" {
            // A new named volume takes the owner of the image's directory.
            let upload_dir = environment(service)["UPLOAD_DIR"];
            assert!(
                dockerfile.contains(&format!("mkdir -p {upload_dir}")),
                "{upload_dir} in the image"
            );
        }
    }
}

/// lb-config/haproxy.cfg for the compose layout, made with the library.
fn lb_config_for(compose: &Compose, command: String) -> LbConfig {
    let drivers = compose.running("driver");
    let env = environment(drivers[0].1);
    let heartbeat_s = env
        .get("DRIVER_HEARTBEAT_S")
        .copied()
        .or_else(|| {
            driver::config::VARIABLES
                .iter()
                .find(|v| v.name == "DRIVER_HEARTBEAT_S")
                .and_then(|v| v.default)
        })
        .unwrap()
        .parse()
        .unwrap();
    let haproxy = compose.service("haproxy");
    let gateways = compose.running("http-gateway");
    let gateway_env = environment(gateways[0].1);
    LbConfig {
        bind: "0.0.0.0".to_owned(),
        fleet_port: container_port(haproxy, "FLEET_PORT"),
        maxconn: maxconn_for_open_files(haproxy["ulimits"]["nofile"]["hard"].as_u64().unwrap()),
        threads: 2,
        heartbeat_s,
        stats_bind: "0.0.0.0".to_owned(),
        stats_port: container_port(haproxy, "HAPROXY_STATS_PORT"),
        backends: LbConfig::named_backends(
            drivers.len(),
            "driver-{i}",
            port_of(env["DRIVER_LISTEN"]),
            port_of(env["DRIVER_ADMIN_LISTEN"]),
        ),
        resolver: Some(DOCKER_DNS.to_owned()),
        http: Some(HttpFrontend {
            port: container_port(haproxy, "HTTP_PORT"),
            gateways: LbConfig::named_backends(
                gateways.len(),
                "http-gateway-{i}",
                port_of(gateway_env["HTTP_LISTEN"]),
                port_of(gateway_env["HTTP_ADMIN_LISTEN"]),
            )
            .into_iter()
            .map(|backend| backend.renamed("http-gateway"))
            .collect(),
        }),
        command,
    }
}

#[test]
fn lb_config_is_what_fleet_generates_for_the_compose_layout() {
    let compose = Compose::load();
    let committed = read("lb-config/haproxy.cfg");
    let command = recorded_command(&committed);

    // The library, fed with the compose layout, writes the committed file
    // (its header records the command, which is checked next).
    let generated = lb_config_for(&compose, format!("fleet {}", command.join(" "))).render();
    assert_eq!(
        generated, committed,
        "lb-config/haproxy.cfg is stale for docker-compose.yml; regenerate it with the command in its header"
    );

    // The recorded command, run again, reproduces the file byte for byte
    // (and `fleet lb-config -o` checks it with `haproxy -c`).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lb-config")).unwrap();
    let output = Command::new(drover_testkit::binaries::binary("fleet").unwrap())
        .args(&command)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output_path = command
        .iter()
        .skip_while(|arg| *arg != "-o" && *arg != "--output")
        .nth(1)
        .expect("the recorded command writes a file");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(output_path)).unwrap(),
        committed
    );

    // And HAProxy accepts it.
    drover_testkit::haproxy::check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-config/haproxy.cfg")).unwrap();
}
