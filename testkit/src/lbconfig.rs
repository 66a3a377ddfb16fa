//! The HAProxy configuration for a fleet of any size: the template
//! `lb-config/haproxy.cfg.tmpl` with the fleet's drivers filled in. One
//! command (`fleet lb-config`) writes it; the result passes `haproxy -c`.

use std::fmt::Write as _;

/// The template, compiled in so the generator works from any directory.
pub const TEMPLATE: &str = include_str!("../../lb-config/haproxy.cfg.tmpl");

/// One driver behind HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The server's name in HAProxy (and its stats).
    pub name: String,
    /// Host name or address of the driver.
    pub host: String,
    /// The driver's CWP/1 port (`DRIVER_LISTEN`).
    pub port: u16,
    /// The driver's admin port (`DRIVER_ADMIN_LISTEN`), for `/healthz`.
    pub admin_port: u16,
}

impl Backend {
    /// The same server named `{kind}-{n}` instead of `driver-{n}`.
    pub fn renamed(self, kind: &str) -> Self {
        let number = self.name.rsplit('-').next().unwrap_or_default().to_owned();
        Self {
            name: format!("{kind}-{number}"),
            ..self
        }
    }
}

/// Everything the template needs.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// Address HAProxy binds the fleet port on.
    pub bind: String,
    /// The one port devices connect to (`FLEET_PORT`).
    pub fleet_port: u16,
    /// Connections per HAProxy process.
    pub maxconn: u32,
    /// HAProxy threads.
    pub threads: u16,
    /// The drivers' heartbeat, to size idle timeouts.
    pub heartbeat_s: u16,
    /// Address and port of the stats page and Prometheus endpoint.
    pub stats_bind: String,
    /// Port of the stats page and Prometheus endpoint.
    pub stats_port: u16,
    /// The drivers.
    pub backends: Vec<Backend>,
    /// A DNS server to re-resolve driver names with (docker's is
    /// `127.0.0.11:53`), so that a restarted container's new address is
    /// picked up; `None` resolves once at start.
    pub resolver: Option<String>,
    /// The HTTP gateways' frontend, when the fleet has gateways.
    pub http: Option<HttpFrontend>,
    /// The command that generated it, recorded in the file.
    pub command: String,
}

/// HAProxy's HTTP frontend for the `http-gateway`s (docs/HTTP.md): the same
/// host name as the drivers, its own port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFrontend {
    /// The port HTTP clients connect to (`HTTP_PORT`).
    pub port: u16,
    /// The gateways: `port` is `HTTP_LISTEN`'s, `admin_port`
    /// `HTTP_ADMIN_LISTEN`'s (its `/healthz`).
    pub gateways: Vec<Backend>,
}

impl HttpFrontend {
    /// Gateways running on this host (`http-gateway-1` first), on `port`.
    pub fn local(port: u16, gateways: &[crate::components::GatewayProcess]) -> Self {
        Self {
            port,
            gateways: gateways
                .iter()
                .enumerate()
                .map(|(i, gateway)| Backend {
                    name: format!("http-gateway-{}", i + 1),
                    host: gateway.addr().ip().to_string(),
                    port: gateway.addr().port(),
                    admin_port: gateway.admin_addr().port(),
                })
                .collect(),
        }
    }

    /// The section of the configuration: `mode http`, keep-alive to the
    /// clients, `leastconn` over the gateways, health from their admin
    /// `/healthz`, the client's address in a PROXY v2 header (the gateways
    /// run with `HTTP_PROXY_PROTOCOL=true` and trust nothing else, not even
    /// an `X-Forwarded-For` a client made up).
    fn render(&self, bind: &str, maxconn: u32, server_resolvers: &str) -> String {
        let mut servers = String::new();
        for gateway in &self.gateways {
            let _ = writeln!(
                servers,
                "    server {} {}:{} port {}",
                gateway.name, gateway.host, gateway.port, gateway.admin_port
            );
        }
        format!(
            "
frontend http
    mode http
    option httplog
    bind {bind}:{port}
    maxconn {maxconn}
    # Slow headers are cut here; the gateway bounds slow bodies itself.
    timeout http-request 30s
    timeout client 120s
    option http-keep-alive
    default_backend gateways

backend gateways
    mode http
    # A request of a 16 MiB batch is answered once durable: allow for it.
    timeout server 120s
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server send-proxy-v2 check inter 1s fall 2 rise 2 init-addr last,libc,none{server_resolvers}
{servers}
",
            port = self.port,
            servers = servers.trim_end(),
        )
    }
}

impl LbConfig {
    /// Drivers `1..=n` on one host, ports counting up from the given bases
    /// (the local fleet).
    pub fn local_backends(n: usize, host: &str, first_port: u16, first_admin_port: u16) -> Vec<Backend> {
        (0..n)
            .map(|i| {
                let offset = u16::try_from(i).unwrap_or(u16::MAX);
                Backend {
                    name: format!("driver-{}", i + 1),
                    host: host.to_owned(),
                    port: first_port.saturating_add(offset),
                    admin_port: first_admin_port.saturating_add(offset),
                }
            })
            .collect()
    }

    /// Drivers `1..=n` each on its own host named by `pattern` (`{i}` is
    /// replaced by the number), all on the same ports (docker-compose).
    pub fn named_backends(n: usize, pattern: &str, port: u16, admin_port: u16) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                name: format!("driver-{i}"),
                host: pattern.replace("{i}", &i.to_string()),
                port,
                admin_port,
            })
            .collect()
    }

    /// The configuration text.
    pub fn render(&self) -> String {
        let drivers = self.backends.len().max(1) as u32;
        // Each driver gets an even share plus headroom for failover: when
        // one driver dies, the others absorb its devices.
        let server_maxconn = (self.maxconn / drivers).saturating_mul(2).min(self.maxconn).max(1);
        let mut servers = String::new();
        for backend in &self.backends {
            let _ = writeln!(
                servers,
                "    server {} {}:{} port {}",
                backend.name, backend.host, backend.port, backend.admin_port
            );
        }
        let idle_timeout_s = u32::from(self.heartbeat_s) * 3 + 30;
        let (resolvers, server_resolvers) = match &self.resolver {
            Some(nameserver) => (
                format!(
                    "\nresolvers dns\n    nameserver dns1 {nameserver}\n    hold valid 5s\n    resolve_retries 3\n    timeout retry 1s\n"
                ),
                " resolvers dns".to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        TEMPLATE
            .replace("{{command}}", &self.command)
            .replace("{{maxconn}}", &self.maxconn.to_string())
            .replace("{{threads}}", &self.threads.to_string())
            .replace("{{heartbeat_s}}", &self.heartbeat_s.to_string())
            .replace("{{idle_timeout_s}}", &idle_timeout_s.to_string())
            .replace("{{bind}}", &self.bind)
            .replace("{{fleet_port}}", &self.fleet_port.to_string())
            .replace("{{server_maxconn}}", &server_maxconn.to_string())
            .replace("{{servers}}", servers.trim_end())
            .replace(
                "{{http}}",
                &self
                    .http
                    .as_ref()
                    .map(|http| http.render(&self.bind, self.maxconn, &server_resolvers))
                    .unwrap_or_default(),
            )
            .replace("{{resolvers}}", &resolvers)
            .replace("{{server_resolvers}}", &server_resolvers)
            .replace("{{stats_bind}}", &self.stats_bind)
            .replace("{{stats_port}}", &self.stats_port.to_string())
    }
}

/// The most connections one HAProxy process can hold with `open_files`
/// file descriptors: two per connection, minus a reserve for listeners,
/// health checks and logs.
pub fn maxconn_for_open_files(open_files: u64) -> u32 {
    u32::try_from(open_files.saturating_sub(200) / 2).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize) -> LbConfig {
        LbConfig {
            bind: "0.0.0.0".into(),
            fleet_port: 7000,
            maxconn: 9_000,
            threads: 2,
            heartbeat_s: 30,
            stats_bind: "127.0.0.1".into(),
            stats_port: 8404,
            backends: LbConfig::local_backends(n, "127.0.0.1", 5001, 9101),
            resolver: None,
            http: None,
            command: "fleet lb-config --drivers 3".into(),
        }
    }

    #[test]
    fn gateways_get_an_http_frontend_with_proxy_v2_and_health_checks() {
        assert!(!config(1).render().contains("frontend http\n"), "none without gateways");
        let mut with_http = config(1);
        with_http.http = Some(HttpFrontend {
            port: 8080,
            gateways: LbConfig::local_backends(2, "127.0.0.1", 8081, 9181)
                .into_iter()
                .map(|backend| backend.renamed("http-gateway"))
                .collect(),
        });
        let text = with_http.render();
        assert!(!text.contains("{{"), "unfilled placeholder in:\n{text}");
        assert!(text.contains("frontend http\n    mode http"));
        assert!(text.contains("bind 0.0.0.0:8080"));
        assert!(text.contains("server http-gateway-2 127.0.0.1:8082 port 9182"));
        let backend = &text[text.find("backend gateways").expect("the gateways' backend")..];
        assert!(backend.contains("default-server send-proxy-v2 check"));
    }

    #[test]
    fn every_placeholder_is_filled_and_every_driver_listed() {
        let text = config(3).render();
        assert!(!text.contains("{{"), "unfilled placeholder in:\n{text}");
        assert!(text.contains("server driver-1 127.0.0.1:5001 port 9101"));
        assert!(text.contains("server driver-3 127.0.0.1:5003 port 9103"));
        assert!(text.contains("balance leastconn"));
        assert!(text.contains("send-proxy-v2"));
        assert!(text.contains("timeout client 120s"), "3 x 30 s heartbeat + margin");
    }

    #[test]
    fn compose_backends_share_ports_on_named_hosts() {
        let backends = LbConfig::named_backends(2, "driver-{i}", 5001, 9101);
        assert_eq!(backends[1].host, "driver-2");
        assert_eq!(backends[1].port, 5001);
    }

    #[test]
    fn maxconn_leaves_two_descriptors_per_connection() {
        assert_eq!(maxconn_for_open_files(20_000), 9_900);
    }
}
