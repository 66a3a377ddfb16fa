//! A driver process from start to stop: [`run`] builds the parts, starts
//! their tasks, and, when told to stop, stops them in one order, written
//! once in `Running::stop`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_edge::KeyStore;
use drover_edge::auth_limits::{AuthLimits, FailureLimits};
use drover_edge::bridge::{self, BridgeClient};
use drover_service::drain;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::{AdmissionLimits, PendingGauges, admission};
use crate::commands::{self, CommandReports, CommandRouter, DurableCommands};
use crate::config::Config;
use crate::files::FileService;
use crate::handshake::slots::HandshakeSlots;
use crate::handshake::{self, Handshakes};
use crate::metrics::{Metrics, ResultLabel};
use crate::pipeline::pipeline;
use crate::registry::{CloseRequest, Registry};
use crate::runtime_thread::RuntimeThread;
use crate::session::{SessionSettings, Sessions, established, idle, park};
use crate::single_flight::SingleFlight;
use crate::storm::StormWatch;
use crate::title::TitleSource;
use crate::upload::{self, UploadLimits, UploadService, UploadStore};
use crate::{listener, title};

/// The sockets the driver serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// CWP/1 connections.
    pub devices: TcpListener,
    /// `/healthz` and `/metrics`.
    pub admin: TcpListener,
}

/// Connections the kernel may hold completed for the driver to accept.
/// `TcpListener::bind` left 128 here (`ss -tln`); a connect storm (every
/// device of a driver reconnecting after a restart) overflows that at
/// once, and the kernel then drops the handshakes' final `ACK`s: devices
/// wait out SYN retransmissions (1, 3, 7 … seconds), and a silent client
/// can even believe itself connected to a driver that never accepted it.
/// Linux caps the value at `net.core.somaxconn` (4096 by default).
const DEVICE_BACKLOG: u32 = 4096;

/// The device listener, with [`DEVICE_BACKLOG`].
fn bind_devices(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted driver rebinds its port
    // while the old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(DEVICE_BACKLOG)
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            devices: bind_devices(config.listen).with_context(|| format!("binding DRIVER_LISTEN {}", config.listen))?,
            admin: TcpListener::bind(config.admin_listen)
                .await
                .with_context(|| format!("binding DRIVER_ADMIN_LISTEN {}", config.admin_listen))?,
        })
    }
}

/// Runs the driver until `shutdown` resolves, then drains and returns.
/// `title`, when given, is kept showing the driver's state.
pub async fn run(
    config: Config,
    listeners: Listeners,
    title: Option<process_title::ProcessTitle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(config, listeners, title).await?;
    shutdown.await;
    running.stop().await;
    Ok(())
}

/// A started driver: what [`Running::stop`] stops, in order.
struct Running {
    /// Signalled first: `/healthz` turns 503, the listener closes, new
    /// sessions leave at once, the title says `(draining)`.
    draining: drain::Signal,
    /// The accept loop's own task (it holds a watch of `draining`).
    accept: tokio::task::JoinHandle<()>,
    /// The sessions, for asking them to leave.
    sessions: Arc<Sessions>,
    /// The thread that accepts and handshakes.
    handshake_thread: RuntimeThread,
    /// The thread sessions with a file transfer run on.
    transfer_thread: RuntimeThread,
    /// The park's drain: signalled once no session is left.
    park: drain::Signal,
    /// The pipeline's drain: it stores what is pending (within
    /// [`crate::pipeline::STOP_GRACE`]) and exits.
    pipeline: drain::Signal,
    /// Everything else: command subscriptions, the session batchers, the
    /// idle sweep, upload expiry, key reloads, the title, the admin server.
    background: drain::Signal,
    /// The tasks of all the drains above, and the short tasks sessions
    /// leave behind.
    tasks: TaskTracker,
}

/// Builds every part and starts its tasks.
async fn start(
    config: Config,
    listeners: Listeners,
    title: Option<process_title::ProcessTitle>,
) -> anyhow::Result<Running> {
    let keys = KeyStore::new(config.master_key.clone(), config.keys_file.clone()).context("loading CWP_KEYS_FILE")?;
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut prometheus));
    let tasks = TaskTracker::new();
    let (draining, draining_watch) = drain::channel();
    let (park_stop, park_watch) = drain::channel();
    let (pipeline_stop, pipeline_watch) = drain::channel();
    let (background, background_watch) = drain::channel();

    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let bridge = BridgeClient::new(
        bridge::channel(&config.bridge_url, config.bridge_tls.as_ref())?,
        config.bridge_token.as_ref(),
        config.driver_id.clone(),
        instance_id,
        &tasks,
        &background_watch,
    );
    let store = UploadStore::new(config.upload_dir.clone());
    store
        .prepare()
        .with_context(|| format!("preparing UPLOAD_DIR {}", config.upload_dir.display()))?;
    let registry = Arc::new(Registry::default());
    let limit = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    metrics.events_pending_limit.set(limit(config.max_pending_events));
    metrics.events_pending_bytes_limit.set(limit(config.max_pending_bytes));
    let (admission, admitted) = admission(
        AdmissionLimits {
            events: config.max_pending_events,
            bytes: config.max_pending_bytes,
        },
        PendingGauges {
            events: metrics.events_pending.clone(),
            bytes: metrics.events_pending_bytes.clone(),
        },
    );

    // One watch for the driver's handshakes: deliveries of every kind wait
    // for a connect storm to pass.
    let storm = Arc::new(StormWatch::default());
    let durable = DurableCommands {
        bridge: bridge.clone(),
        registry: registry.clone(),
        max_in_flight: config.max_commands_in_flight,
        max_payload: config.max_payload,
        fetching: SingleFlight::default(),
        handed: Arc::default(),
        storm: storm.clone(),
        tasks: tasks.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    tasks.spawn(
        pipeline(
            bridge.clone(),
            durable.clone(),
            metrics.clone(),
            admitted,
            pipeline_watch,
        )
        .run(),
    );

    commands::check_access(&config.redis, &config.driver_id).await?;
    let reports = CommandReports {
        bridge: bridge.clone(),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let files = FileService {
        store: drover_files::FileStore::new(config.files_dir.clone()),
        bridge: bridge.clone(),
        registry: registry.clone(),
        fetching: SingleFlight::default(),
        storm,
        mail: Arc::default(),
        throttles: Arc::default(),
        tasks: tasks.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let (subscriptions, subscription_task) = commands::subscriptions(
        CommandRouter {
            redis: config.redis.clone(),
            driver_id: config.driver_id.clone(),
            registry: registry.clone(),
            reports: reports.clone(),
            metrics: metrics.clone(),
            max_payload: config.max_payload,
            durable: durable.clone(),
            files: files.clone(),
        },
        background_watch.clone(),
    )
    .context("REDIS_URL")?;
    tasks.spawn(subscription_task);

    let transfer_thread = RuntimeThread::start("transfers", config.transfer_nice)?;
    let connections = TaskTracker::new();
    let (park, park_inbox) = park::park(connections.clone());
    let sessions = Arc::new(Sessions {
        settings: SessionSettings {
            driver_id: config.driver_id.clone(),
            heartbeat_s: config.heartbeat_s,
            max_payload: config.max_payload,
            event_window: config.event_window,
            idle_timeout: config.idle_timeout,
            park_after: config.park_after,
            drain_period: config.drain_period,
        },
        registry: registry.clone(),
        admission,
        subscriptions,
        bridge: bridge.clone(),
        reports,
        durable,
        uploads: UploadService::new(
            store.clone(),
            UploadLimits {
                max_open: config.upload_max_open,
                max_bytes: config.upload_max_bytes,
                max_bytes_per_serial: config.upload_max_bytes_per_serial,
                min_free_bytes: config.upload_min_free_bytes,
                buffer_bytes: config.upload_buffer_bytes,
            },
            metrics.clone(),
            bridge,
        ),
        files,
        metrics: metrics.clone(),
        park,
        runtime: tokio::runtime::Handle::current(),
        transfers: transfer_thread.handle().clone(),
        connections,
        tasks: tasks.clone(),
        draining: draining_watch.clone(),
    });
    let handshakes = Arc::new(Handshakes {
        keys,
        auth_limits: AuthLimits::new(
            FailureLimits {
                per_address: config.auth_failures_per_address,
                per_serial_address: config.auth_failures_per_serial_address,
                per_serial: config.auth_failures_per_serial,
            },
            config.auth_failure_window,
        ),
        slots: HandshakeSlots::new(config.max_handshakes, metrics.handshakes_in_progress.clone()),
        timeout: config.handshake_timeout,
        proxy_protocol: config.proxy_protocol,
        sessions: sessions.clone(),
    });
    info!(
        driver_id = %config.driver_id,
        listen = %listeners.devices.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        listed_keys = handshakes.keys.listed_keys(),
        master_key = config.master_key.is_some(),
        bridge_tls = config.bridge_tls.is_some(),
        bridge_token = config.bridge_token.is_some(),
        bridge_client_certificate = config.bridge_tls.as_ref().is_some_and(|tls| tls.client_identity.is_some()),
        "driver ready"
    );

    tasks.spawn(park_task(sessions.clone(), park_inbox, park_watch));
    tasks.spawn(admin_task(
        listeners.admin,
        prometheus,
        draining_watch.clone(),
        background_watch.clone(),
    ));
    tasks.spawn(reload_keys_on_hangup(handshakes.clone(), background_watch.clone()));
    tasks.spawn(upload::expire_periodically(
        store,
        config.upload_expire_after,
        background_watch.clone(),
    ));
    tasks.spawn(idle::sweep_quiet_sessions(
        registry.clone(),
        config.idle_timeout,
        config.park_after,
        background_watch.clone(),
    ));
    if let Some(title) = title {
        let source = TitleSource {
            port: config.listen.port(),
            serials_shown: config.title_serials,
            registry,
            metrics,
            draining: draining_watch.clone(),
        };
        tasks.spawn(title::refresh(source, title, background_watch));
    }

    let handshake_thread = handshake::thread::start()?;
    // Registered with the handshake thread's runtime, where it is accepted on.
    let device_listener = {
        let _runtime = handshake_thread.handle().enter();
        listeners
            .devices
            .into_std()
            .and_then(TcpListener::from_std)
            .context("moving the device listener to the handshake thread")?
    };
    let accept = handshake_thread.handle().spawn(listener::accept_loop(
        handshakes,
        device_listener,
        config.max_connections,
        draining_watch,
    ));
    Ok(Running {
        draining,
        accept,
        sessions,
        handshake_thread,
        transfer_thread,
        park: park_stop,
        pipeline: pipeline_stop,
        background,
        tasks,
    })
}

impl Running {
    /// The shutdown order, in one place.
    async fn stop(self) {
        let Self {
            draining,
            accept,
            sessions,
            handshake_thread,
            transfer_thread,
            park,
            pipeline,
            background,
            tasks,
        } = self;

        // 1. No new devices: /healthz answers 503 (HAProxy stops sending
        //    devices here), the listener closes.
        draining.signal();
        if let Err(err) = accept.await {
            warn!(error = %err, "the accept loop failed");
        }

        // 2. Every device is told to come back later (BYE DRAINING at a
        //    time spread over DRIVER_DRAIN_PERIOD), after its pending
        //    events are durable and acknowledged; handshakes still under
        //    way end the same way once they register.
        let grace = sessions.settings.drain_period.max(Duration::from_secs(5)) + Duration::from_secs(15);
        drain_sessions(&sessions, grace).await;

        // 3. The handshake thread stops; a handshake still running there is
        //    dropped (its device reconnects). So does the transfers' thread:
        //    its sessions left in step 2.
        handshake_thread.stop().await;
        transfer_thread.stop().await;

        // 4. The park: its sessions left in step 2; any left now close.
        park.drain().await;

        // 5. The pipeline stores what is pending and exits (within its
        //    grace; what it abandons was never acknowledged).
        pipeline.drain().await;

        // 6. The rest, and every short task sessions left behind.
        drop(sessions);
        background.drain().await;
        tasks.close();
        tasks.wait().await;
        drop(draining);
        info!("driver stopped");
    }
}

/// Asks every session to leave and waits until every connection is gone or
/// `grace` has passed. The drain must already be signalled: a session that
/// registers after this asks leaves by itself ([`crate::session::established::start`]
/// does not park it, and its loop reads the drain first thing).
async fn drain_sessions(sessions: &Sessions, grace: Duration) {
    sessions.connections.close();
    let live = sessions.registry.all();
    info!(
        sessions = live.len(),
        drain_period = ?sessions.settings.drain_period,
        "draining: devices are told to reconnect elsewhere"
    );
    for session in live {
        session.request_close(sessions.drain_request());
    }
    if tokio::time::timeout(grace, sessions.connections.wait()).await.is_err() {
        warn!(
            remaining = sessions.connections.len(),
            "drain grace period over: stopping with connections still open"
        );
    }
}

async fn park_task(sessions: Arc<Sessions>, inbox: park::ParkInbox, stop: drain::Watch) {
    let parked = sessions.metrics.sessions_parked.clone();
    let resume = move |session| established::resume(&sessions, session);
    if let Err(err) = park::run(inbox, resume, parked, stop).await {
        tracing::error!(error = %err, "the park failed: parked devices are not heard until the idle timeout closes them");
    }
}

async fn admin_task(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    draining: drain::Watch,
    stop: drain::Watch,
) {
    if let Err(err) = drover_service::admin::serve_until_drained(listener, registry, draining, stop).await {
        tracing::error!(error = %err, "the admin server failed: /healthz and /metrics are down");
    }
}

async fn reload_keys_on_hangup(handshakes: Arc<Handshakes>, stop: drain::Watch) {
    let Ok(mut hangups) = drover_service::shutdown::hangups() else {
        warn!("cannot listen for SIGHUP; CWP_KEYS_FILE will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            hangup = hangups.recv() => if hangup.is_none() {
                return;
            },
        }
        let metrics = &handshakes.sessions.metrics;
        match handshakes.keys.reload() {
            Ok(reloaded) => {
                metrics.keys_reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                // Sessions authenticated with a key no longer accepted end
                // now (ERROR UNAUTHORIZED); their devices' next HELLO meets
                // the new keys.
                let mut closed = 0;
                for serial in &reloaded.changed {
                    if let Some(session) = handshakes.sessions.registry.get(serial) {
                        session.request_close(CloseRequest::KeyRevoked);
                        closed += 1;
                    }
                }
                info!(
                    keys = reloaded.keys,
                    revoked = reloaded.revoked,
                    changed = reloaded.changed.len(),
                    sessions_closed = closed,
                    "reloaded CWP_KEYS_FILE"
                );
            }
            // An operator's mistake that leaves devices with stale keys: alert.
            Err(err) => {
                metrics
                    .keys_reloads
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                tracing::error!(error = %err, "CWP_KEYS_FILE not reloaded; the previous keys stay in force");
            }
        }
    }
}
