//! The build script's date stamp, tested as a function: build.rs is included here as a
//! module, so its `main` is only a function and is never run.

#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

use build_script::build_date;

#[test]
fn source_date_epoch_wins_then_the_commit_then_the_clock() {
    let now = 1_800_000_000;
    let cases: &[(Option<&str>, Option<&str>, &str)] = &[
        (Some("0"), Some("1700000000"), "1970-01-01T00:00:00Z"),
        (Some("1700000000"), None, "2023-11-14T22:13:20Z"),
        (Some(" 951782400\n"), None, "2000-02-29T00:00:00Z"),
        (Some("-1"), None, "1969-12-31T23:59:59Z"),
        (None, Some("1700000000"), "2023-11-14T22:13:20Z"),
        (None, Some("not a time"), "2027-01-15T08:00:00Z"),
        (None, None, "2027-01-15T08:00:00Z"),
    ];
    for (sde, commit, want) in cases {
        assert_eq!(
            build_date(*sde, *commit, now).as_deref(),
            Ok(*want),
            "{sde:?} {commit:?}"
        );
    }
}

#[test]
fn a_malformed_source_date_epoch_names_the_variable() {
    for bad in ["", "yesterday", "1.5", "1e9"] {
        let err = build_date(Some(bad), Some("1700000000"), 0).unwrap_err();
        assert!(err.contains("SOURCE_DATE_EPOCH"), "{bad:?}: {err}");
    }
}

#[test]
fn the_binary_carries_the_stamp_of_its_build() {
    // This binary's library was built by the same script: its date is a well-formed stamp.
    let date = datadog_cluster_agent::version::BUILD_DATE;
    let bytes = date.as_bytes();
    assert_eq!(bytes.len(), 20, "{date}");
    assert!(date.ends_with('Z') && bytes[10] == b'T', "{date}");
}
