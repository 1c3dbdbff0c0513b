//! What `ferry up` takes from the workers it runs: their sections and their
//! readiness needs.

use ferry_runtime::Config;
use ferry_runtime::config::SERVICE_SECTIONS;
use ferry_runtime::process::{ReadinessNeeds, sections_of};

use super::SERVICES;

#[test]
fn the_runtime_knows_every_service_section_by_name_and_no_other() {
    let mut declared: Vec<&str> = sections_of(SERVICES).iter().map(|s| s.name()).collect();
    declared.sort_unstable();
    let mut known = SERVICE_SECTIONS.to_vec();
    known.sort_unstable();
    assert_eq!(declared, known);
}

#[test]
fn readiness_is_what_each_service_declares_and_ferry_up_the_union() {
    let needs: Vec<(&str, bool)> = SERVICES
        .iter()
        .map(|s| (s.name, s.readiness.store))
        .collect();
    assert_eq!(
        needs,
        [
            ("ferry-scheduler", false),
            ("ferry-dumper", false),
            ("ferry-uploader", true),
            ("ferry-retention", true),
            ("ferry-notifier", false),
            ("ferry-capture", true),
        ]
    );
    assert_eq!(ReadinessNeeds::of(SERVICES), ReadinessNeeds { store: true });
    assert_eq!(
        ReadinessNeeds::of(&[ferry_scheduler::SERVICE, ferry_notifier::SERVICE]),
        ReadinessNeeds { store: false }
    );
}

#[test]
fn ferry_up_checks_every_section_and_reports_every_problem_at_once() {
    let sections = sections_of(SERVICES);
    let err = Config::from_toml_with(
        r#"
[http]
listen = "localhost"

[scheduler]
misfire_windw = "1h"
"#,
        &sections,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http.listen"), "{err}");
    assert!(err.contains("misfire_windw"), "{err}");

    let err = Config::from_toml_with(
        r#"
[dumper]
concurrency = 0

[uploader]
parts_in_flight = 0

[retention]
delete_batch = 0

[notifier]
max_attempts = 0

[[notify]]
kind = "webhook"
url = "https://x.example"
"#,
        &sections,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "dumper.concurrency",
            "uploader.parts_in_flight",
            "retention.delete_batch",
            "notifier.max_attempts"
        ]
    );
}

#[test]
fn an_unknown_key_in_any_workers_section_is_refused_by_ferry() {
    let sections = sections_of(SERVICES);
    for (text, named) in [
        ("[uploader]\npart_sise = \"8MiB\"\n", "part_sise"),
        ("[retention]\ngc_grase = \"6h\"\n", "gc_grase"),
        ("[notifier]\ntrace_uri = \"x\"\n", "trace_uri"),
        (
            "[[notify]]\nkind = \"slack\"\nurl = \"https://x.example\"\nchanel = \"x\"\n",
            "chanel",
        ),
        ("[notifer]\nmax_attempts = 1\n", "notifer"),
    ] {
        let err = Config::from_toml_with(text, &sections)
            .expect_err(text)
            .to_string();
        assert!(
            err.contains(named),
            "{named} not named for {text:?}:\n{err}"
        );
    }
}
