//! `[dumper]`, and the start-up hook seen from one worker: the sections of other
//! services are accepted, unknown ones and unknown keys are not.

use ferry_runtime::config::SectionSpec;

use super::*;

const SECTIONS: [SectionSpec; 1] = [SectionSpec::of::<DumperConfig>()];

fn dumper(text: &str) -> Result<std::sync::Arc<DumperConfig>, ferry_runtime::config::ConfigError> {
    Config::from_toml_with(text, &SECTIONS)?.section::<DumperConfig>()
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = dumper(
        r#"
[nats]
url = "nats://127.0.0.1:4222"

[[sources]]
name = "orders"
engine = "postgres"
url = "postgres://backup@db1.internal:5432/orders"
"#,
    )
    .unwrap();
    assert_eq!(
        config.concurrency, 2,
        "defaults fill what the file leaves out"
    );
    assert_eq!(config.compression, CompressionKind::Zstd);
    assert_eq!(config.mongo_parallel_collections, 4);
}

#[test]
fn every_dumper_problem_names_its_key() {
    let err = Config::from_toml_with(
        r#"
[http]
listen = "localhost"

[dumper]
concurrency = 0
pg_jobs = 0
compression_level = 30
mongo_parallel_collections = 0
mongo_zstd_level = 0
"#,
        &SECTIONS,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "http.listen",
            "dumper.concurrency",
            "dumper.pg_jobs",
            "dumper.compression_level",
            "dumper.mongo_parallel_collections",
            "dumper.mongo_zstd_level"
        ],
        "shared and service problems are reported at once"
    );
    let text = err.to_string();
    assert!(
        text.contains("dumper.compression_level: invalid value \"30\": expected 1 to 22 for zstd"),
        "{text}"
    );
    let gzip = dumper("[dumper]\ncompression = \"gzip\"\ncompression_level = 10\n").unwrap_err();
    assert_eq!(gzip.problems[0].expected, "0 to 9 for gzip");
}

#[test]
fn a_worker_accepts_the_sections_of_other_services() {
    // Values the uploader, retention and the notifier would refuse are theirs to
    // refuse when they start: the dumper runs.
    let config = dumper(
        r#"
[dumper]
concurrency = 3

[scheduler]
misfire = "skip"

[uploader]
part_size = "1MiB"

[retention]
delete_batch = 0

[notifier]
max_attempts = 0

[[notify]]
kind = "webhook"
"#,
    )
    .unwrap();
    assert_eq!(config.concurrency, 3);
}

#[test]
fn an_unknown_section_or_key_is_refused_naming_it() {
    for (text, named) in [
        ("[dumpr]\nconcurrency = 3\n", "dumpr"),
        ("[dumper]\nconcurency = 3\n", "concurency"),
        ("[storage]\nbukcet = \"x\"\n", "bukcet"),
        ("[dumper]\nconcurrency = \"many\"\n", "dumper.concurrency"),
    ] {
        let err = dumper(text).expect_err(text).to_string();
        assert!(
            err.contains(named),
            "{named} not named for {text:?}:\n{err}"
        );
    }
}

#[test]
fn the_older_lease_ttl_name_is_accepted_and_sets_the_lease_ttl() {
    let config = Config::from_toml_with("[dumper]\nlease_ttl = \"45s\"\n", &SECTIONS).unwrap();
    assert_eq!(config.leases.ttl, Duration::from_secs(45));
    let config = Config::from_toml_with("[leases]\nttl = \"90s\"\n", &SECTIONS).unwrap();
    assert_eq!(config.leases.ttl, Duration::from_secs(90));
    // Both, saying the same: fine; saying different things: which one is meant?
    let both = "[leases]\nttl = \"90s\"\n[dumper]\nlease_ttl = \"90s\"\n";
    assert_eq!(
        Config::from_toml_with(both, &SECTIONS).unwrap().leases.ttl,
        Duration::from_secs(90)
    );
    let err = Config::from_toml_with(
        "[leases]\nttl = \"90s\"\n[dumper]\nlease_ttl = \"45s\"\n",
        &SECTIONS,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["dumper.lease_ttl"]);
    // A bad value under the older name is named once, though two checks read it.
    let err = Config::from_toml_with("[dumper]\nlease_ttl = \"soon\"\n", &SECTIONS).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(err.problems[0].key.contains("dumper.lease_ttl"), "{err}");
}
