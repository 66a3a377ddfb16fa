//! The file store and rollouts (README, "Rollouts"): `drover files add`
//! copies a file into `FILES_DIR`; `drover rollout start` runs the
//! schema's start and targets scripts ([`drover_schema::rollout`]) exactly
//! as the main application would, then indexes each target in its
//! partition and wakes it; `status` reads the rollout's record; `pause`,
//! `resume` and `cancel` run the control script and wake whom it names.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use cwp::Serial;
use drover_files::{Digest, FileStore};
use drover_schema::command_fields;
use drover_schema::rollout::{self, RolloutId, RolloutKeys, action, answer, rollout_fields, target_state};
use serde_json::{Map, Value as Json};

use crate::args::{FilesAddArgs, RolloutCommand, RolloutIdArgs, RolloutStartArgs, RolloutStatusArgs};
use crate::deployment::Deployment;
use crate::exit::{Exit, usage};
use crate::output::{self, Progress};

static START: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(rollout::START_SCRIPT));
static TARGETS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(rollout::TARGETS_SCRIPT));
static CONTROL: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(rollout::CONTROL_SCRIPT));

/// How often `status --follow` reads the rollout.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// `drover files add PATH`: prints the file's SHA-256.
pub fn add_file(args: &FilesAddArgs, json: bool) -> anyhow::Result<Exit> {
    let store = FileStore::new(crate::config::files_dir()?);
    let record = store
        .add(&args.path)
        .with_context(|| format!("adding {} to FILES_DIR {}", args.path.display(), store.root().display()))?;
    if json {
        output::line(&serde_json::to_string(&record)?)?;
    } else {
        output::line(&record.sha256)?;
        eprintln!(
            "{} ({} bytes) is in {}",
            record.name,
            record.size,
            store.root().display()
        );
    }
    Ok(Exit::Success)
}

/// `drover rollout …`.
pub async fn run(deployment: Deployment, command: &RolloutCommand, json: bool) -> anyhow::Result<Exit> {
    match command {
        RolloutCommand::Start(args) => start(deployment, args, json).await,
        RolloutCommand::Status(args) => status(deployment, args, json).await,
        RolloutCommand::Pause(args) => control(deployment, args, action::PAUSE, json).await,
        RolloutCommand::Resume(args) => control(deployment, args, action::RESUME, json).await,
        RolloutCommand::Cancel(args) => control(deployment, args, action::CANCEL, json).await,
    }
}

fn parse_id(text: &str) -> anyhow::Result<RolloutId> {
    text.parse()
        .map_err(|err: rollout::InvalidRolloutId| usage(err.to_string()))
}

/// The target serials, deduplicated, in the order given.
fn targets(args: &RolloutStartArgs) -> anyhow::Result<Vec<Serial>> {
    let texts: Vec<String> = match &args.serials_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| usage(format!("--serials-file {}: {err}", path.display())))?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => args.serials.iter().map(|text| text.trim().to_owned()).collect(),
    };
    let mut seen = HashSet::new();
    let mut serials = Vec::new();
    for text in texts.iter().filter(|text| !text.is_empty()) {
        let serial = crate::parse_serial(text)?;
        if seen.insert(serial) {
            serials.push(serial);
        }
    }
    if serials.is_empty() {
        return Err(usage("no target serials"));
    }
    Ok(serials)
}

/// `drover rollout start`.
async fn start(mut deployment: Deployment, args: &RolloutStartArgs, json: bool) -> anyhow::Result<Exit> {
    let digest: Digest = args
        .file
        .parse()
        .map_err(|err: drover_files::FileError| usage(err.to_string()))?;
    let serials = targets(args)?;
    let store = FileStore::new(crate::config::files_dir()?);
    let record = store.record(&digest).with_context(|| {
        format!(
            "the file {digest} in FILES_DIR {} (drover files add PATH first)",
            store.root().display()
        )
    })?;
    let now = output::now_ms();
    let expires_ms = now.saturating_add(u64::try_from(args.expires.as_millis()).unwrap_or(u64::MAX));
    let id = RolloutId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let keys = RolloutKeys::of(&id);
    let created: String = START
        .key(&keys.rollout)
        .arg(digest.to_hex())
        .arg(record.size)
        .arg(&record.name)
        .arg(args.max_active)
        .arg(args.retries)
        .arg(expires_ms)
        .arg(now)
        .arg(args.max_bytes_per_s)
        .invoke_async(&mut deployment.redis)
        .await
        .with_context(|| format!("creating {}", keys.rollout))?;
    anyhow::ensure!(created == answer::CREATED, "the start script answered {created:?}");
    let wake = serde_json::json!({ command_fields::FILES: true }).to_string();
    let mut online = 0u64;
    for batch in serials.chunks(rollout::TARGETS_PER_CALL) {
        let mut call = TARGETS.key(&keys.rollout);
        call.key(&keys.targets).arg(now);
        for serial in batch {
            call.arg(serial.as_str());
        }
        let added: Vec<String> = call
            .invoke_async(&mut deployment.redis)
            .await
            .with_context(|| format!("adding targets to {}", keys.targets))?;
        for serial in added {
            let serial = crate::parse_serial(&serial)?;
            redis::cmd("ZADD")
                .arg(deployment.layout.file_offers(&serial))
                .arg(now)
                .arg(id.as_str())
                .query_async::<()>(&mut deployment.redis)
                .await
                .with_context(|| format!("indexing {serial}"))?;
            if deployment
                .publish(&drover_schema::COMMANDS.name(&serial), &wake)
                .await?
                > 0
            {
                online += 1;
            }
        }
    }
    if json {
        output::line(
            &serde_json::json!({"id": id.as_str(), "file": digest.to_hex(), "targets": serials.len(), "online": online})
                .to_string(),
        )?;
    } else {
        output::line(id.as_str())?;
        eprintln!(
            "rollout {id}: {} ({} bytes) to {} devices, {online} online now",
            record.name,
            record.size,
            serials.len()
        );
    }
    Ok(Exit::Success)
}

/// A rollout's record as read.
struct Status {
    fields: Map<String, Json>,
}

impl Status {
    fn number(&self, field: &str) -> u64 {
        self.fields
            .get(field)
            .and_then(Json::as_str)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0)
    }

    fn text(&self, field: &str) -> &str {
        self.fields.get(field).and_then(Json::as_str).unwrap_or("")
    }

    /// Whether nothing will change any more by itself.
    fn settled(&self) -> bool {
        self.number(target_state::PENDING) + self.number(target_state::ACTIVE) == 0
            || self.text(rollout_fields::STATE) == rollout::state::CANCELLED
    }

    fn line(&self, id: &RolloutId) -> String {
        let mut state = self.text(rollout_fields::STATE).to_owned();
        if self.number(rollout_fields::EXPIRES_MS) <= output::now_ms() && state != rollout::state::CANCELLED {
            state.push_str(", expired");
        }
        format!(
            "rollout {id} ({state}): {} of {} done, {} active, {} pending, {} declined, {} failed, {} cancelled; {} bytes acknowledged",
            self.number(target_state::DONE),
            self.number(rollout_fields::TARGETS),
            self.number(target_state::ACTIVE),
            self.number(target_state::PENDING),
            self.number(target_state::DECLINED),
            self.number(target_state::FAILED),
            self.number(target_state::CANCELLED),
            self.number(rollout_fields::BYTES_ACKED),
        )
    }
}

async fn read_status(deployment: &mut Deployment, keys: &RolloutKeys) -> anyhow::Result<Option<Status>> {
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&keys.rollout)
        .query_async(&mut deployment.redis)
        .await
        .with_context(|| format!("reading {}", keys.rollout))?;
    if pairs.is_empty() {
        return Ok(None);
    }
    let fields = pairs.into_iter().map(|(k, v)| (k, Json::String(v))).collect();
    Ok(Some(Status { fields }))
}

/// `drover rollout status`.
async fn status(mut deployment: Deployment, args: &RolloutStatusArgs, json: bool) -> anyhow::Result<Exit> {
    let id = parse_id(&args.id)?;
    let keys = RolloutKeys::of(&id);
    let progress = Progress::new();
    let mut last = String::new();
    loop {
        let Some(status) = read_status(&mut deployment, &keys).await? else {
            eprintln!("drover: no rollout {id}");
            return Ok(Exit::NotFound);
        };
        let settled = status.settled();
        if !args.follow || settled {
            drop(progress);
            if json {
                let mut object = status.fields;
                object.insert("id".to_owned(), Json::String(id.to_string()));
                output::line(&Json::Object(object).to_string())?;
            } else {
                output::line(&status.line(&id))?;
            }
            return Ok(Exit::Success);
        }
        let line = status.line(&id);
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            progress.update(&line);
        } else if line != last {
            eprintln!("{line}");
        }
        last = line;
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// `drover rollout pause|resume|cancel`.
async fn control(mut deployment: Deployment, args: &RolloutIdArgs, what: &str, json: bool) -> anyhow::Result<Exit> {
    let id = parse_id(&args.id)?;
    let keys = RolloutKeys::of(&id);
    let (answered, woken, notices): (String, Vec<String>, Vec<String>) = CONTROL
        .key(&keys.rollout)
        .key(&keys.targets)
        .key(&keys.active)
        .key(&keys.waiting)
        .key(&keys.results)
        .arg(what)
        .arg(output::now_ms())
        .arg(id.as_str())
        .invoke_async(&mut deployment.redis)
        .await
        .with_context(|| format!("{what} {}", keys.rollout))?;
    let wake = serde_json::json!({ command_fields::FILES: true }).to_string();
    for serial in &woken {
        let serial = crate::parse_serial(serial)?;
        deployment
            .publish(&drover_schema::COMMANDS.name(&serial), &wake)
            .await?;
    }
    for notice in &notices {
        let serial = serde_json::from_str::<Json>(notice).ok().and_then(|n| {
            n.get(rollout::file_result_fields::SERIAL)?
                .as_str()?
                .parse::<Serial>()
                .ok()
        });
        if let Some(serial) = serial {
            deployment
                .publish(&drover_schema::FILE_RESULTS.name(&serial), notice)
                .await?;
        }
    }
    let exit = match answered.as_str() {
        answer::OK => Exit::Success,
        answer::UNKNOWN => {
            eprintln!("drover: no rollout {id}");
            Exit::NotFound
        }
        answer::CANCELLED => {
            eprintln!("drover: rollout {id} is cancelled: nothing changes it");
            Exit::Refused
        }
        other => anyhow::bail!("the control script answered {other:?}"),
    };
    if exit == Exit::Success {
        if json {
            output::line(&serde_json::json!({"id": id.as_str(), "action": what, "woken": woken.len()}).to_string())?;
        } else {
            eprintln!("rollout {id}: {what} done ({} devices told)", woken.len());
        }
    }
    Ok(exit)
}
