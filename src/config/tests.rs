use super::*;
use std::collections::HashMap;
use std::io::Write;

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn yaml_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join(CONFIG_FILE_NAME);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

fn load(file: Option<&Path>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    // Without a file, a folder that has no token file keeps the machine's out of the test.
    let empty = tempfile::tempdir().unwrap();
    let dir = file.and_then(Path::parent).unwrap_or(empty.path());
    Settings::load_from(file, dir, &env_of(env))
}

#[test]
fn defaults_are_the_dcas() {
    let s = load(None, &[]).unwrap();
    assert_eq!(s.site, "datadoghq.com");
    assert_eq!(s.cluster_agent.cmd_port, 5005);
    assert_eq!(s.cluster_agent.token_name, "datadogtoken");
    assert!(s.kubernetes_collect_metadata_tags);
    assert!(!s.leader_election.enabled);
    assert_eq!(s.leader_election.lease_duration, Duration::from_secs(60));
    assert_eq!(s.leader_election.lease_name, "datadog-leader-election");
    assert_eq!(s.leader_election.resource, LockResource::ConfigMap);
    assert_eq!(s.external_metrics.port, 8443);
    assert_eq!(s.external_metrics.refresh_period, Duration::from_secs(30));
    assert_eq!(s.external_metrics.max_age, Duration::from_secs(120));
    assert_eq!(s.external_metrics.bucket_size, Duration::from_secs(300));
    assert_eq!(s.external_metrics.rollup, Duration::from_secs(30));
    assert_eq!(s.external_metrics.chunk_size, 35);
    assert_eq!(s.external_metrics.aggregator, Aggregator::Avg);
    assert_eq!(
        s.external_metrics.hpa_configmap_name,
        "datadog-custom-metrics"
    );
    assert_eq!(s.expvar_port, 5000);
    assert_eq!(s.health_port, 0);
    assert_eq!(s.log_level, LogLevel::Info);
    assert!(s.api_key.is_empty());
}

#[test]
fn env_overrides_file_overrides_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(
        &dir,
        "site: datadoghq.eu\ncluster_agent:\n  cmd_port: 6000\n  token_name: tok\nlog_level: debug\n",
    );
    let s = load(Some(&file), &[("DD_CLUSTER_AGENT_CMD_PORT", "7000")]).unwrap();
    assert_eq!(s.cluster_agent.cmd_port, 7000, "env wins over file");
    assert_eq!(s.site, "datadoghq.eu", "file wins over default");
    assert_eq!(s.cluster_agent.token_name, "tok");
    assert_eq!(s.log_level, LogLevel::Debug);
    assert_eq!(
        s.leader_election.lease_name, "datadog-leader-election",
        "default stays"
    );
    let sources: HashMap<_, _> = s.sources().into_iter().collect();
    assert_eq!(
        sources["cluster_agent.cmd_port"],
        "DD_CLUSTER_AGENT_CMD_PORT"
    );
    assert_eq!(sources["site"], file.display().to_string());
    assert_eq!(sources["leader_lease_name"], "the default");
}

#[test]
fn dotted_keys_in_the_file_are_nested_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(
        &dir,
        "external_metrics_provider.enabled: true\nexternal_metrics:\n  aggregator: max\n",
    );
    let s = load(Some(&file), &[]).unwrap();
    assert!(s.external_metrics.enabled);
    assert_eq!(s.external_metrics.aggregator, Aggregator::Max);
}

#[test]
fn aliases_apply_below_the_main_name() {
    let s = load(None, &[("DD_USE_METADATA_MAPPER", "false")]).unwrap();
    assert!(!s.kubernetes_collect_metadata_tags);
    let s = load(
        None,
        &[
            ("DD_USE_METADATA_MAPPER", "false"),
            ("DD_KUBERNETES_COLLECT_METADATA_TAGS", "TRUE"),
        ],
    )
    .unwrap();
    assert!(s.kubernetes_collect_metadata_tags);
    let s = load(None, &[("DD_URL", "https://intake.example")]).unwrap();
    assert_eq!(s.dd_url.as_deref(), Some("https://intake.example"));
}

#[test]
fn malformed_values_name_the_setting_and_its_source() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("DD_LEADER_ELECTION", "yes")],
            "invalid value for leader_election (from DD_LEADER_ELECTION): \"yes\" is not a boolean",
        ),
        (
            &[("DD_CLUSTER_AGENT_CMD_PORT", "70000")],
            "invalid value for cluster_agent.cmd_port (from DD_CLUSTER_AGENT_CMD_PORT): 70000 is out of range",
        ),
        (
            &[("DD_EXTERNAL_METRICS_PROVIDER_PORT", "https")],
            "external_metrics_provider.port",
        ),
        (
            &[("DD_EXTERNAL_METRICS_AGGREGATOR", "median")],
            "invalid value for external_metrics.aggregator (from DD_EXTERNAL_METRICS_AGGREGATOR): \"median\" is not an aggregator",
        ),
        (
            &[("DD_EXTERNAL_METRICS_PROVIDER_REFRESH_PERIOD", "soon")],
            "external_metrics_provider.refresh_period (from DD_EXTERNAL_METRICS_PROVIDER_REFRESH_PERIOD): \"soon\" is not a duration",
        ),
        (
            &[("DD_EXTERNAL_METRICS_PROVIDER_REFRESH_PERIOD", "0")],
            "must be greater than zero",
        ),
        (
            &[("DD_EXTERNAL_METRICS_PROVIDER_CHUNK_SIZE", "36")],
            "above Datadog's limit of 35",
        ),
        (
            &[("DD_LEADER_ELECTION_DEFAULT_RESOURCE", "etcd")],
            "leader_election_default_resource",
        ),
        (&[("DD_LOG_LEVEL", "loud")], "is not a log level"),
        // Added to the monotonic clock by the elector, where it used to overflow and panic.
        (
            &[("DD_LEADER_LEASE_DURATION", "18446744073709551615")],
            "invalid value for leader_lease_duration (from DD_LEADER_LEASE_DURATION): \"18446744073709551615\" is too long a duration",
        ),
        (
            &[("DD_HPA_WATCHER_GC_PERIOD", "9999999999h")],
            "hpa_watcher_gc_period",
        ),
        (&[("DD_HEALTH_PORT", "-1")], "invalid value for health_port"),
    ];
    for (env, want) in cases {
        let err = load(None, env).unwrap_err().to_string();
        assert!(err.contains(want), "{env:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn malformed_file_values_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(&dir, "cluster_agent:\n  cmd_port: many\n");
    let err = load(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("cluster_agent.cmd_port"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn invalid_yaml_reports_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(
        &dir,
        "site: datadoghq.com\ncluster_agent:\n  cmd_port: [5005\n",
    );
    let err = load(Some(&file), &[]).unwrap_err();
    match &err {
        ConfigError::Yaml { line, .. } => assert!(*line >= 3, "{err}"),
        other => panic!("want a YAML error, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("line") && text.contains("column"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    let file = yaml_file(&dir, "- a\n- b\n");
    assert!(
        load(Some(&file), &[])
            .unwrap_err()
            .to_string()
            .contains("mapping")
    );
}

#[test]
fn missing_api_key_is_reported_for_start_only() {
    let s = load(None, &[]).unwrap();
    assert_eq!(
        s.validate_for_start().unwrap_err().to_string(),
        "no API key configured: set DD_API_KEY or api_key"
    );
    let s = load(None, &[("DD_API_KEY", KEY)]).unwrap();
    assert!(s.validate_for_start().is_ok());
}

#[test]
fn external_metrics_need_an_app_key() {
    let on = ("DD_EXTERNAL_METRICS_PROVIDER_ENABLED", "true");
    let err = load(None, &[("DD_API_KEY", KEY), on])
        .unwrap()
        .validate_for_start()
        .unwrap_err();
    assert!(err.to_string().contains("DD_APP_KEY"), "{err}");
    for app in ["DD_APP_KEY", "DD_EXTERNAL_METRICS_PROVIDER_APP_KEY"] {
        let s = load(None, &[("DD_API_KEY", KEY), on, (app, "appkey")]).unwrap();
        assert!(s.validate_for_start().is_ok(), "{app}");
    }
}

#[test]
fn auth_token_is_validated_from_env_and_file() {
    let err = load(None, &[("DD_CLUSTER_AGENT_AUTH_TOKEN", "short")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster_agent.auth_token") && err.contains("32"),
        "{err}"
    );
    assert!(err.contains("DD_CLUSTER_AGENT_AUTH_TOKEN"), "{err}");
    let err = load(
        None,
        &[(
            "DD_CLUSTER_AGENT_AUTH_TOKEN",
            "0123456789abcdef0123456789abcdef!",
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("letters and digits"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = yaml_file(&dir, "site: datadoghq.com\n");
    std::fs::write(dir.path().join(AUTH_TOKEN_FILE_NAME), format!("{KEY}\n")).unwrap();
    let s = load(Some(&file), &[]).unwrap();
    assert_eq!(
        s.cluster_agent.auth_token.unwrap().expose(),
        KEY,
        "line ending stripped"
    );
    std::fs::write(dir.path().join(AUTH_TOKEN_FILE_NAME), "tiny").unwrap();
    let err = load(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains(AUTH_TOKEN_FILE_NAME), "{err}");
    // The setting wins over the file.
    let s = load(Some(&file), &[("DD_CLUSTER_AGENT_AUTH_TOKEN", KEY)]).unwrap();
    assert_eq!(s.cluster_agent.auth_token.unwrap().expose(), KEY);
}

#[test]
fn external_metrics_keys_fall_back_to_the_main_keys() {
    let s = load(None, &[("DD_API_KEY", KEY), ("DD_APP_KEY", "appkey")]).unwrap();
    assert_eq!(s.external_metrics.api_key.expose(), KEY);
    assert_eq!(s.external_metrics.app_key.expose(), "appkey");
    let s = load(
        None,
        &[
            ("DD_API_KEY", KEY),
            ("DD_EXTERNAL_METRICS_PROVIDER_API_KEY", "other"),
        ],
    )
    .unwrap();
    assert_eq!(s.external_metrics.api_key.expose(), "other");
}

#[test]
fn scrubbed_yaml_never_shows_secrets() {
    let app = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";
    let s = load(
        None,
        &[
            ("DD_API_KEY", KEY),
            ("DD_APP_KEY", app),
            ("DD_CLUSTER_AGENT_AUTH_TOKEN", KEY),
        ],
    )
    .unwrap();
    let yaml = s.to_scrubbed_yaml();
    assert!(!yaml.contains(KEY), "{yaml}");
    assert!(!yaml.contains(app), "{yaml}");
    assert!(yaml.contains("***************************bcdef"), "{yaml}");
    assert!(yaml.contains("cmd_port: 5005"), "{yaml}");
    let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(parsed["cluster_agent"]["cmd_port"], 5005);
    assert_eq!(parsed["leader_election"], false);
    let debug = format!("{s:?}");
    assert!(
        !debug.contains(KEY) && !debug.contains(app),
        "Debug leaks: {debug}"
    );
}

/// The text between the README's table markers, which must be exactly the generated table: a
/// stale row left before or after it would fail too.
fn readme_table_section(readme: &str) -> Option<&str> {
    const BEGIN: &str = "<!-- BEGIN CONFIG TABLE -->\n";
    const END: &str = "<!-- END CONFIG TABLE -->";
    let start = readme.find(BEGIN)? + BEGIN.len();
    let len = readme[start..].find(END)?;
    Some(&readme[start..start + len])
}

#[test]
fn readme_table_section_is_what_lies_between_the_markers() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            "a\n<!-- BEGIN CONFIG TABLE -->\n| x |\n<!-- END CONFIG TABLE -->\nb",
            Some("| x |\n"),
        ),
        (
            "<!-- BEGIN CONFIG TABLE -->\n<!-- END CONFIG TABLE -->",
            Some(""),
        ),
        ("no markers", None),
        ("<!-- BEGIN CONFIG TABLE -->\n| x |\n", None),
        (
            "<!-- END CONFIG TABLE -->\n<!-- BEGIN CONFIG TABLE -->\n",
            None,
        ),
    ];
    for (readme, section) in cases {
        assert_eq!(readme_table_section(readme), *section, "{readme:?}");
    }
}

#[test]
fn readme_configuration_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme_table_section(&readme).expect("README.md lost its CONFIG TABLE markers");
    assert!(
        section == markdown_table(),
        "README.md's configuration table is out of date; regenerate it with \
         `cargo run -- config --markdown-table` and paste it between the markers"
    );
}

proptest::proptest! {
    #[test]
    fn any_env_value_gives_a_value_or_an_error(v in ".*", i in 0usize..SPECS.len()) {
        let name = SPECS[i].env_name();
        let _ = load(None, &[(name.as_str(), v.as_str())]);
    }

    #[test]
    fn any_yaml_gives_a_value_or_an_error(text in ".*") {
        let dir = tempfile::tempdir().unwrap();
        let file = yaml_file(&dir, &text);
        let _ = load(Some(&file), &[]);
    }

    #[test]
    fn any_yaml_value_for_a_setting_gives_a_value_or_an_error(v in ".*", i in 0usize..SPECS.len()) {
        let dir = tempfile::tempdir().unwrap();
        let quoted = serde_json::to_string(&v).unwrap();
        let file = yaml_file(&dir, &format!("{}: {}\n", SPECS[i].key, quoted));
        let _ = load(Some(&file), &[]);
    }
}

#[test]
fn start_warns_about_malformed_settings_nothing_reads_yet() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DD_KUBERNETES_INFORMERS_RESYNC_PERIOD", "soon"),
        ("DD_COLLECT_KUBERNETES_EVENTS", "perhaps"),
    ];
    // Strict loading (the `config` command) still names the first malformed one...
    assert!(load(None, &env).is_err());
    // ...but `start` goes on with the defaults and one warning each.
    let (s, warnings) = Settings::load_leniently(None, dir.path(), &env_of(&env)).unwrap();
    assert_eq!(
        s.kubernetes_informers_resync_period,
        Duration::from_secs(300)
    );
    assert!(!s.collect_kubernetes_events);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    for (w, key) in warnings.iter().zip([
        "collect_kubernetes_events",
        "kubernetes_informers_resync_period",
    ]) {
        assert!(w.contains(key) && w.contains("not used yet"), "{w}");
    }
    // A setting that is used still stops start-up.
    for used in [
        ("DD_LEADER_ELECTION", "perhaps"),
        ("DD_CLUSTER_AGENT_CMD_PORT", "70000"),
        ("DD_EXPVAR_PORT", "70000"),
        ("DD_HEALTH_PORT", "-1"),
    ] {
        assert!(Settings::load_leniently(None, dir.path(), &env_of(&[used])).is_err());
    }
    // So does a malformed node-agent token: it will be served as it is.
    let token = [("DD_CLUSTER_AGENT_AUTH_TOKEN", "short")];
    assert!(Settings::load_leniently(None, dir.path(), &env_of(&token)).is_err());
}

#[test]
fn the_readme_marks_every_setting_nothing_reads_yet() {
    let table = crate::config::markdown_table();
    for key in crate::config::NOT_YET_USED {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("{key} is not a setting"));
        assert!(row.contains("(not yet used)"), "{row}");
    }
    let marked = table.matches("(not yet used)").count();
    assert_eq!(marked, crate::config::NOT_YET_USED.len());
}
