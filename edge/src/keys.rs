//! Where device keys come from (CWP/1 §2): a keys file of per-device keys
//! and revocations, consulted first, and the fleet's master key, from which
//! any serial's key derives. A serial found in neither is `UNAUTHORIZED`.
//!
//! The keys file holds one `SERIAL HEXKEY` pair per line (`SERIAL=HEXKEY`
//! works too); `SERIAL -` revokes the serial: it wins over the master key,
//! and its `HELLO` (or signed request) gets `UNAUTHORIZED`. Blank lines and
//! `#` comments are ignored. The owner re-reads the file with
//! [`KeyStore::reload`] (the driver on SIGHUP); a file that fails to parse
//! leaves the previous keys in place. A reload says which serials' keys it
//! changed (revoked, removed, replaced), so that their live sessions,
//! authenticated with a key no longer accepted, can be closed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use cwp::{DeviceKey, MasterKey, Serial};

/// A keys file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `SERIAL HEXKEY` or `SERIAL -`.
    #[error("{path}:{line}: {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// What the keys file says.
#[derive(Debug, Default)]
struct Listed {
    /// Per-device keys.
    keys: HashMap<Serial, DeviceKey>,
    /// Revoked serials (`SERIAL -`).
    revoked: HashSet<Serial>,
}

/// What a reload found.
#[derive(Debug)]
pub struct Reloaded {
    /// Per-device keys now listed.
    pub keys: usize,
    /// Serials now revoked.
    pub revoked: usize,
    /// Serials whose accepted key changed: revoked, removed from the file
    /// (then the master key's, if any, applies), or replaced.
    pub changed: HashSet<Serial>,
}

/// The device keys this process accepts.
#[derive(Debug)]
pub struct KeyStore {
    master: Option<MasterKey>,
    file: Option<PathBuf>,
    listed: RwLock<Listed>,
}

impl KeyStore {
    /// Builds the store, loading the keys file if there is one.
    pub fn new(master: Option<MasterKey>, file: Option<PathBuf>) -> Result<Self, KeysFileError> {
        let listed = match &file {
            Some(path) => parse_keys_file(path)?,
            None => Listed::default(),
        };
        Ok(Self {
            master,
            file,
            listed: RwLock::new(listed),
        })
    }

    fn listed(&self) -> std::sync::RwLockReadGuard<'_, Listed> {
        self.listed.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of `serial`, if this process accepts one.
    pub fn device_key(&self, serial: &Serial) -> Option<DeviceKey> {
        accepted_key(&self.listed(), self.master.as_ref(), serial)
    }

    /// Whether the keys file revokes `serial`.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.listed().revoked.contains(serial)
    }

    /// Re-reads the keys file. On error the previous keys stay in force.
    pub fn reload(&self) -> Result<Reloaded, KeysFileError> {
        let Some(path) = &self.file else {
            return Ok(Reloaded {
                keys: 0,
                revoked: 0,
                changed: HashSet::new(),
            });
        };
        let new = parse_keys_file(path)?;
        let mut listed = self.listed.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mentioned: HashSet<Serial> = listed
            .keys
            .keys()
            .chain(listed.revoked.iter())
            .chain(new.keys.keys())
            .chain(new.revoked.iter())
            .copied()
            .collect();
        let master = self.master.as_ref();
        let changed = mentioned
            .into_iter()
            .filter(|serial| accepted_key(&listed, master, serial) != accepted_key(&new, master, serial))
            .collect();
        let reloaded = Reloaded {
            keys: new.keys.len(),
            revoked: new.revoked.len(),
            changed,
        };
        *listed = new;
        Ok(reloaded)
    }

    /// How many per-device keys are loaded.
    pub fn listed_keys(&self) -> usize {
        self.listed().keys.len()
    }
}

/// The key accepted for `serial`: none if revoked, else the listed one,
/// else the master key's.
fn accepted_key(listed: &Listed, master: Option<&MasterKey>, serial: &Serial) -> Option<DeviceKey> {
    if listed.revoked.contains(serial) {
        return None;
    }
    listed
        .keys
        .get(serial)
        .cloned()
        .or_else(|| master.map(|master| DeviceKey::derive(master, serial)))
}

fn parse_keys_file(path: &Path) -> Result<Listed, KeysFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut listed = Listed::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let problem = |problem: &str| KeysFileError::Parse {
            path: path.to_owned(),
            line: index + 1,
            problem: problem.to_owned(),
        };
        let (serial, key) = line
            .split_once(|c: char| c == '=' || c.is_whitespace())
            .ok_or_else(|| problem("expected `SERIAL HEXKEY` or `SERIAL -`"))?;
        let serial: Serial = serial.trim().parse().map_err(|_| problem("invalid serial"))?;
        if listed.keys.contains_key(&serial) || listed.revoked.contains(&serial) {
            return Err(problem("the serial is listed twice"));
        }
        match key.trim() {
            "-" => {
                listed.revoked.insert(serial);
            }
            key => {
                let key = DeviceKey::from_hex(key).map_err(|_| problem("key is not 64 hex digits (or - to revoke)"))?;
                listed.keys.insert(serial, key);
            }
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "c550eed0f0cc5f4f2e050f8b5e78acf9082e0aafb94194c0402d2aab5def18d6";
    const KEY_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn serial(text: &str) -> Serial {
        text.parse().unwrap()
    }

    #[test]
    fn listed_keys_win_over_the_master_key_and_reload_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("# fleet keys\nCTRL-1 {KEY_A}\n\nCTRL-2={KEY_A}  # trailing comment\n"),
        )
        .unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let store = KeyStore::new(Some(master.clone()), Some(path.clone())).unwrap();
        let one = serial("CTRL-1");
        let three = serial("CTRL-3");
        assert_eq!(store.device_key(&one), Some(DeviceKey::from_hex(KEY_A).unwrap()));
        assert_eq!(store.device_key(&three), Some(DeviceKey::derive(&master, &three)));
        assert_eq!(store.listed_keys(), 2);

        std::fs::write(&path, "CTRL-1 not-a-key\n").unwrap();
        assert!(matches!(store.reload(), Err(KeysFileError::Parse { line: 1, .. })));
        assert_eq!(store.listed_keys(), 2, "a bad file leaves the old keys in force");

        std::fs::write(&path, "").unwrap();
        assert_eq!(store.reload().unwrap().keys, 0);
        assert_eq!(store.device_key(&one), Some(DeviceKey::derive(&master, &one)));
    }

    #[test]
    fn a_revoked_serial_has_no_key_even_with_a_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "CTRL-1 -\n").unwrap();
        let store = KeyStore::new(Some(MasterKey::from_bytes([7; 32])), Some(path)).unwrap();
        assert!(store.is_revoked(&serial("CTRL-1")));
        assert_eq!(store.device_key(&serial("CTRL-1")), None);
        assert!(store.device_key(&serial("CTRL-2")).is_some());
    }

    #[test]
    fn a_reload_names_every_serial_whose_accepted_key_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("KEPT {KEY_A}\nREPLACED {KEY_A}\nREMOVED {KEY_A}\nUNREVOKED -\n"),
        )
        .unwrap();
        let store = KeyStore::new(Some(MasterKey::from_bytes([7; 32])), Some(path.clone())).unwrap();
        std::fs::write(
            &path,
            format!("KEPT {KEY_A}\nREPLACED {KEY_B}\nREVOKED -\nNEWLY {KEY_B}\n"),
        )
        .unwrap();
        let reloaded = store.reload().unwrap();
        let mut changed: Vec<&str> = reloaded.changed.iter().map(Serial::as_str).collect();
        changed.sort_unstable();
        assert_eq!(changed, ["NEWLY", "REMOVED", "REPLACED", "REVOKED", "UNREVOKED"]);
        assert_eq!((reloaded.keys, reloaded.revoked), (3, 1));
    }

    #[test]
    fn a_serial_listed_twice_is_a_mistake_worth_stopping_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("CTRL-1 {KEY_A}\nCTRL-1 -\n")).unwrap();
        assert!(matches!(
            KeyStore::new(None, Some(path)),
            Err(KeysFileError::Parse { line: 2, .. })
        ));
    }

    #[test]
    fn without_a_master_key_unlisted_serials_are_unknown() {
        let store = KeyStore::new(None, None).unwrap();
        assert_eq!(store.device_key(&serial("CTRL-9")), None);
    }
}
