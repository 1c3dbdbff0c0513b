//! What the deploy checks compare against: the code's binaries, configuration keys
//! and metric names, and readers for the files users deploy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry_runtime::Config;
use serde::Deserialize;
use serde_yaml::Value;

/// The PostgreSQL majors the image carries a `pg_dump` for.
pub const SUPPORTED_PG_MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A YAML file, merge keys (`<<: *anchor`) applied as Docker Compose does.
pub fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} parses: {e}", path.display()));
    value.apply_merge().expect("merge keys");
    value
}

/// docker-compose.yml.
pub fn compose() -> Value {
    yaml(&repo().join("docker-compose.yml"))
}

/// A YAML sequence of strings (empty when absent).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every binary the workspace builds: `ferry` and one `ferry-<worker>` per service.
pub fn binaries() -> BTreeSet<String> {
    let mut all = worker_binaries();
    all.insert("ferry".into());
    all
}

/// The worker binaries: `ferry-<dir>` for each `services/<dir>` with a `main.rs`.
pub fn worker_binaries() -> BTreeSet<String> {
    let mut workers = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("services")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if dir.join("src/main.rs").is_file() && name != "ferry" {
            workers.insert(format!("ferry-{name}"));
        }
    }
    assert_eq!(workers.len(), 6, "{workers:?}");
    workers
}

/// Checks a configuration file against the code: every key and value type is one
/// the configuration structs accept (unknown keys are refused), and validation finds
/// no problem except one that only the deployment can settle: a secret's
/// environment variable that is not set here (the compose file or the Kubernetes
/// Secret provides it: checked with [`secret_env_vars`]).
pub fn checked_config(text: &str, what: &str) -> Config {
    let config: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Every service's section too, as `ferry up` checks them.
    let sections = ferry_runtime::process::sections_of(ferry::SERVICES);
    if let Err(e) = Config::from_toml_with(text, &sections) {
        let real: Vec<String> = e
            .problems
            .iter()
            .filter(|p| {
                let deployment_secret = p.key.ends_with("_env") && p.to_string().contains("is set");
                !deployment_secret
            })
            .map(|p| p.to_string())
            .collect();
        assert!(real.is_empty(), "{what} is not valid: {real:#?}");
    }
    config
}

/// The port of `http.listen`.
pub fn listen_port(config: &Config) -> u16 {
    config
        .http
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .expect("http.listen port")
}

/// The environment variables the configuration reads secrets from.
pub fn secret_env_vars(config: &Config) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    vars.extend(config.nats.token_env.clone());
    vars.extend(config.storage.access_key_id_env.clone());
    vars.extend(config.storage.secret_access_key_env.clone());
    for source in &config.sources {
        vars.extend(source.password_env.clone());
    }
    let channels = config
        .section_unvalidated::<ferry_notifier::config::NotifyChannels>()
        .expect("checked by checked_config");
    for channel in &channels.0 {
        vars.extend(channel.url_env.clone());
        vars.extend(channel.secret_env.clone());
        vars.extend(channel.password_env.clone());
    }
    vars
}

/// Panics when `var` looks like a configuration override (`FERRY_<SECTION>__<KEY>`)
/// that names a key the configuration does not have.
pub fn check_env_override(var: &str) {
    let Some(rest) = var.strip_prefix("FERRY_") else {
        return;
    };
    let Some((section, key)) = rest.split_once("__") else {
        return;
    };
    let doc = format!(
        "[{}]\n{} = \"x\"\n",
        section.to_lowercase(),
        key.to_lowercase()
    );
    let sections = ferry_runtime::process::sections_of(ferry::SERVICES);
    if let Err(e) = Config::from_toml_with(&doc, &sections) {
        assert!(
            !e.to_string().contains("unknown field"),
            "{var} names no configuration key: {e}"
        );
    }
}

/// Every metric family the workers export: what a fresh registry encodes, plus the
/// families a worker registers itself (found in its source).
pub fn exported_metrics() -> BTreeSet<String> {
    // A family is exposed once it has a sample: give every one of them one.
    let metrics = ferry_runtime::Metrics::new();
    let stage = ferry_proto::v1::Stage::Dumper;
    metrics.record(stage, "succeeded", std::time::Duration::ZERO);
    metrics.record_job_end(stage, "s", true);
    metrics.record_job_end(stage, "s", false);
    metrics.record_redelivery(stage);
    metrics.record_consumer("c", 0, 0);
    metrics.record_request("manual", "published");
    let _in_flight = metrics.in_flight(stage);
    let text = metrics.encode();
    let mut names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for file in rust_files(&repo().join("services")) {
        let source = std::fs::read_to_string(&file).unwrap();
        for (at, _) in source.match_indices(".register(") {
            let rest = source[at + ".register(".len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                let name = literal.split('"').next().unwrap();
                names.insert(format!("ferry_{name}"));
            }
        }
    }
    names
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The `ferry_*` metric names in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (at, _) in expr.match_indices("ferry_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let end = expr[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| at + n);
        names.insert(expr[at..end].to_string());
    }
    names
}

/// Panics when `expr` uses a metric no worker exports.
pub fn check_metrics(expr: &str, exported: &BTreeSet<String>, what: &str) {
    let used = metric_names(expr);
    // Prometheus's own `up` of the ferry scrape job is the one other series allowed.
    assert!(
        !used.is_empty() || expr.contains(r#"up{job="ferry"}"#),
        "{what}: no Ferry metric in {expr}"
    );
    for name in used {
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exported.contains(family) || exported.contains(&name),
            "{what}: {name} is not a metric Ferry exports ({exported:?})"
        );
    }
}

/// Every document of every file in deploy/kubernetes.
pub struct Manifests {
    docs: Vec<Value>,
    files: BTreeSet<String>,
}

impl Manifests {
    /// Parses every YAML file of deploy/kubernetes.
    pub fn load() -> Manifests {
        let dir = repo().join("deploy/kubernetes");
        let mut docs = Vec::new();
        let mut files = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".yaml") || name == "kustomization.yaml" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(value["apiVersion"].as_str().is_some(), "{name}: apiVersion");
                assert!(value["kind"].as_str().is_some(), "{name}: kind");
                assert_eq!(
                    value["metadata"]["namespace"].as_str().unwrap_or("ferry"),
                    "ferry"
                );
                docs.push(value);
            }
            files.insert(name);
        }
        Manifests { docs, files }
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    /// The object of `kind` named `name`.
    pub fn one(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
    }

    /// kustomization.yaml lists every manifest file.
    pub fn check_kustomization(&self) {
        let k = yaml(&repo().join("deploy/kubernetes/kustomization.yaml"));
        let listed: BTreeSet<String> = strings(&k["resources"]).into_iter().collect();
        assert_eq!(listed, self.files);
    }
}
