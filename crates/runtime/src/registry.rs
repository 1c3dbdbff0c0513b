//! The sources registry: the `[[sources]]` of the configuration file plus the live
//! ones in the JetStream KV bucket `ferry-sources`, which `ferry sources
//! add|remove|pause|resume` edits. Every process keeps an in-memory copy that a KV
//! watch keeps current, so a change applies everywhere within moments, with no
//! restart. The registry holds no secrets: a source names the variable or file of
//! its password, like in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use ferry_proto::subjects;
use futures::StreamExt;
use tokio::sync::watch;

use crate::config::{ConfigProblem, SourceConfig};

const SOURCE_PREFIX: &str = "source.";
const PAUSED_PREFIX: &str = "paused.";

/// Where a source is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file (changed by editing the file and restarting).
    File,
    /// The live registry (changed with `ferry sources`).
    Registry,
}

/// A source with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredSource {
    /// The source.
    pub config: SourceConfig,
    /// Where it is defined.
    pub origin: Origin,
    /// Paused sources get no scheduled jobs (manual jobs still run).
    pub paused: bool,
}

#[derive(Default)]
struct State {
    file: BTreeMap<String, SourceConfig>,
    registered: BTreeMap<String, SourceConfig>,
    paused: BTreeSet<String>,
}

/// Refusals of registry edits.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The source is not valid; every problem is listed.
    #[error("invalid source: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigProblem>),
    /// The name belongs to a source of the configuration file.
    #[error("source {0} is defined in the configuration file; edit the file to change it")]
    InFile(String),
    /// No such source.
    #[error("no source named {0}")]
    Unknown(String),
    /// The registry was opened read-only (by a command that only reads).
    #[error(
        "the sources registry was opened read-only; edit it with `ferry sources add|remove|pause|resume`"
    )]
    ReadOnly,
    /// NATS failed.
    #[error("registry: {0}")]
    Nats(String),
}

/// The live set of sources.
#[derive(Clone)]
pub struct Registry {
    state: Arc<RwLock<State>>,
    changes: watch::Receiver<u64>,
    /// `None` when read-only: edits are refused before they reach NATS.
    kv: Option<kv::Store>,
}

impl Registry {
    /// Loads the registry and keeps it current from the KV bucket's watch.
    pub async fn open(
        js: &jetstream::Context,
        file_sources: &[SourceConfig],
    ) -> Result<Registry, RegistryError> {
        let kv = js
            .get_key_value(subjects::SOURCES_BUCKET)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        let (state, changes) = load(Some(&kv), file_sources, true).await?;
        Ok(Registry {
            state,
            changes,
            kv: Some(kv),
        })
    }

    /// Loads the registry once, for a command that only reads: the bucket is read if
    /// it exists (a fleet never started has only the file's sources), nothing is
    /// watched or created, and every edit is refused.
    pub async fn open_read_only(
        js: &jetstream::Context,
        file_sources: &[SourceConfig],
    ) -> Result<Registry, RegistryError> {
        let kv = crate::nats::existing_bucket(js, subjects::SOURCES_BUCKET)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        let (state, changes) = load(kv.as_ref(), file_sources, false).await?;
        Ok(Registry {
            state,
            changes,
            kv: None,
        })
    }

    fn writable(&self) -> Result<&kv::Store, RegistryError> {
        self.kv.as_ref().ok_or(RegistryError::ReadOnly)
    }

    /// The source named `name`.
    pub fn get(&self, name: &str) -> Option<SourceConfig> {
        let state = self.state.read().expect("registry lock");
        state
            .file
            .get(name)
            .or_else(|| state.registered.get(name))
            .cloned()
    }

    /// Every source, by name.
    pub fn all(&self) -> Vec<RegisteredSource> {
        let state = self.state.read().expect("registry lock");
        let file = state.file.values().map(|c| (c, Origin::File));
        let registered = state
            .registered
            .values()
            .filter(|c| !state.file.contains_key(&c.name))
            .map(|c| (c, Origin::Registry));
        let mut all: Vec<RegisteredSource> = file
            .chain(registered)
            .map(|(c, origin)| RegisteredSource {
                config: c.clone(),
                origin,
                paused: state.paused.contains(&c.name),
            })
            .collect();
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        all
    }

    /// Whether scheduled jobs of `name` are paused.
    pub fn is_paused(&self, name: &str) -> bool {
        self.state
            .read()
            .expect("registry lock")
            .paused
            .contains(name)
    }

    /// Ticks whenever the registry changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Adds or replaces a live source, after the same validation as the file's.
    pub async fn add(&self, source: &SourceConfig) -> Result<(), RegistryError> {
        let problems = source.problems(&format!("sources.{}", source.name));
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        if self
            .state
            .read()
            .expect("registry lock")
            .file
            .contains_key(&source.name)
        {
            return Err(RegistryError::InFile(source.name.clone()));
        }
        let key = format!("{SOURCE_PREFIX}{}", source.name);
        let value: bytes::Bytes = serde_json::to_vec(source)
            .expect("a source serialises")
            .into();
        self.writable()?
            .put(&key, value.clone())
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        apply(&self.state, &key, Some(&value));
        Ok(())
    }

    /// Removes a live source (its backups stay in the store).
    pub async fn remove(&self, name: &str) -> Result<(), RegistryError> {
        if self
            .state
            .read()
            .expect("registry lock")
            .file
            .contains_key(name)
        {
            return Err(RegistryError::InFile(name.to_string()));
        }
        if self.get(name).is_none() {
            return Err(RegistryError::Unknown(name.to_string()));
        }
        for key in [
            format!("{SOURCE_PREFIX}{name}"),
            format!("{PAUSED_PREFIX}{name}"),
        ] {
            self.writable()?
                .purge(&key)
                .await
                .map_err(|e| RegistryError::Nats(e.to_string()))?;
            apply(&self.state, &key, None);
        }
        Ok(())
    }

    /// Pauses or resumes the scheduled jobs of a source (file or live).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), RegistryError> {
        if self.get(name).is_none() {
            return Err(RegistryError::Unknown(name.to_string()));
        }
        let key = format!("{PAUSED_PREFIX}{name}");
        let kv = self.writable()?;
        let result = if paused {
            kv.put(&key, "paused".into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            kv.purge(&key).await.map_err(|e| e.to_string())
        };
        result.map_err(RegistryError::Nats)?;
        apply(
            &self.state,
            &key,
            paused
                .then(|| bytes::Bytes::from_static(b"paused"))
                .as_ref(),
        );
        Ok(())
    }
}

/// Reads the file's sources and the bucket's entries; with `follow`, keeps them current.
async fn load(
    kv: Option<&kv::Store>,
    file_sources: &[SourceConfig],
    follow: bool,
) -> Result<(Arc<RwLock<State>>, watch::Receiver<u64>), RegistryError> {
    let nats = |e: &dyn std::fmt::Display| RegistryError::Nats(e.to_string());
    let state = State {
        file: file_sources
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        ..Default::default()
    };
    let state = Arc::new(RwLock::new(state));
    let (tx, changes) = watch::channel(0u64);
    let Some(kv) = kv else {
        return Ok((state, changes));
    };
    // Watch first, then load: a change between the two is applied twice, which
    // is harmless, instead of being missed.
    let updates = if follow {
        Some(kv.watch_all().await.map_err(|e| nats(&e))?)
    } else {
        None
    };
    let mut keys = kv.keys().await.map_err(|e| nats(&e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| nats(&e))?;
        if let Some(value) = kv.get(&key).await.map_err(|e| nats(&e))? {
            apply(&state, &key, Some(&value));
        }
    }
    if let Some(mut updates) = updates {
        let watched = state.clone();
        tokio::spawn(async move {
            while let Some(entry) = updates.next().await {
                let Ok(entry) = entry else { continue };
                let value = (entry.operation == kv::Operation::Put).then_some(entry.value);
                if apply(&watched, &entry.key, value.as_ref()) {
                    tx.send_modify(|v| *v += 1);
                }
            }
        });
    }
    Ok((state, changes))
}

/// Applies one KV entry; `None` is a deletion. Returns whether anything changed.
fn apply(state: &RwLock<State>, key: &str, value: Option<&bytes::Bytes>) -> bool {
    let mut state = state.write().expect("registry lock");
    if let Some(name) = key.strip_prefix(SOURCE_PREFIX) {
        match value.map(|v| serde_json::from_slice::<SourceConfig>(v)) {
            Some(Ok(source)) if source.name == name && source.problems("registry").is_empty() => {
                let changed = state.registered.get(name) != Some(&source);
                state.registered.insert(name.to_string(), source);
                changed
            }
            Some(Ok(_)) | Some(Err(_)) => {
                // Written by something other than `ferry sources add`: never act on it.
                tracing::warn!(key, "ignoring an invalid entry in the sources registry");
                false
            }
            None => state.registered.remove(name).is_some(),
        }
    } else if let Some(name) = key.strip_prefix(PAUSED_PREFIX) {
        match value {
            Some(_) => state.paused.insert(name.to_string()),
            None => state.paused.remove(name),
        }
    } else {
        false
    }
}
