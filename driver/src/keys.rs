//! Where device keys come from (CWP/1 §2): a keys file of per-device keys,
//! consulted first, and the fleet's master key, from which any serial's key
//! derives. A serial found in neither is `UNAUTHORIZED`.
//!
//! The keys file holds one `SERIAL HEXKEY` pair per line (`SERIAL=HEXKEY`
//! works too); blank lines and `#` comments are ignored. It is re-read on
//! SIGHUP; a file that fails to parse leaves the previous keys in place.

use std::collections::HashMap;
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
    /// A line is not `SERIAL HEXKEY`.
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

/// The device keys this driver accepts.
#[derive(Debug)]
pub struct KeyStore {
    master: Option<MasterKey>,
    file: Option<PathBuf>,
    per_device: RwLock<HashMap<Serial, DeviceKey>>,
}

impl KeyStore {
    /// Builds the store, loading the keys file if there is one.
    pub fn new(master: Option<MasterKey>, file: Option<PathBuf>) -> Result<Self, KeysFileError> {
        let per_device = match &file {
            Some(path) => parse_keys_file(path)?,
            None => HashMap::new(),
        };
        Ok(Self {
            master,
            file,
            per_device: RwLock::new(per_device),
        })
    }

    /// The key of `serial`, if this driver knows one.
    pub fn device_key(&self, serial: &Serial) -> Option<DeviceKey> {
        let listed = self
            .per_device
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(serial)
            .cloned();
        listed.or_else(|| self.master.as_ref().map(|master| DeviceKey::derive(master, serial)))
    }

    /// Re-reads the keys file; returns how many keys it holds now. On error
    /// the previous keys stay in force.
    pub fn reload(&self) -> Result<usize, KeysFileError> {
        let Some(path) = &self.file else { return Ok(0) };
        let keys = parse_keys_file(path)?;
        let count = keys.len();
        *self
            .per_device
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(count)
    }

    /// How many per-device keys are loaded.
    pub fn listed(&self) -> usize {
        self.per_device
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

fn parse_keys_file(path: &Path) -> Result<HashMap<Serial, DeviceKey>, KeysFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = HashMap::new();
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
            .ok_or_else(|| problem("expected `SERIAL HEXKEY`"))?;
        let serial: Serial = serial.trim().parse().map_err(|_| problem("invalid serial"))?;
        let key = DeviceKey::from_hex(key.trim()).map_err(|_| problem("key is not 64 hex digits"))?;
        keys.insert(serial, key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "c550eed0f0cc5f4f2e050f8b5e78acf9082e0aafb94194c0402d2aab5def18d6";

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
        let one: Serial = "CTRL-1".parse().unwrap();
        let three: Serial = "CTRL-3".parse().unwrap();
        assert_eq!(store.device_key(&one), Some(DeviceKey::from_hex(KEY_A).unwrap()));
        assert_eq!(store.device_key(&three), Some(DeviceKey::derive(&master, &three)));
        assert_eq!(store.listed(), 2);

        std::fs::write(&path, "CTRL-1 not-a-key\n").unwrap();
        assert!(matches!(store.reload(), Err(KeysFileError::Parse { line: 1, .. })));
        assert_eq!(store.listed(), 2, "a bad file leaves the old keys in force");

        std::fs::write(&path, "").unwrap();
        assert_eq!(store.reload().unwrap(), 0);
        assert_eq!(store.device_key(&one), Some(DeviceKey::derive(&master, &one)));
    }

    #[test]
    fn without_a_master_key_unlisted_serials_are_unknown() {
        let store = KeyStore::new(None, None).unwrap();
        assert_eq!(store.device_key(&"CTRL-9".parse().unwrap()), None);
    }
}
