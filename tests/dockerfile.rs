//! The Dockerfile's promises, read from the file itself (CI cannot pull base images, so it
//! cannot build the image; `.ci/run` builds the same static target with cargo instead): a
//! static musl binary, a final stage with nothing to run but it (no shell, no package
//! manager, no RUN), a numeric non-root user equal to the Deployment's, and the ports the
//! Deployment names.

use std::path::Path;

use serde_json::Value;

const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The instructions (continuation lines joined, comments dropped), each as
/// (INSTRUCTION, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The final stage's instructions, after its FROM.
fn final_stage(all: &[(String, String)]) -> (&str, &[(String, String)]) {
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    (&all[last_from].1, &all[last_from + 1..])
}

fn deployment() -> Value {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&repo_file("manifests/cluster-agent/cluster-agent.yaml"))
            .unwrap();
    docs.into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")
}

#[test]
fn instructions_join_continuations_and_skip_comments() {
    let parsed = instructions("# c\nFROM a AS b\nRUN x \\\n && y\n\nUSER 1:1\n");
    assert_eq!(
        parsed,
        [
            ("FROM".to_owned(), "a AS b".to_owned()),
            ("RUN".to_owned(), "x  && y".to_owned()),
            ("USER".to_owned(), "1:1".to_owned()),
        ]
    );
}

#[test]
fn the_image_is_a_static_binary_on_an_empty_final_stage() {
    let all = instructions(&repo_file("Dockerfile"));
    let build = all
        .iter()
        .find(|(op, args)| op == "RUN" && args.contains("cargo build"))
        .map(|(_, args)| args.as_str())
        .expect("a cargo build");
    for flag in [
        "--release",
        "--locked",
        &format!("--target {STATIC_TARGET}"),
    ] {
        assert!(build.contains(flag), "cargo build without {flag}: {build}");
    }
    let (base, stage) = final_stage(&all);
    assert_eq!(
        base, "scratch",
        "the final stage has no shell or package manager"
    );
    let ops: Vec<&str> = stage.iter().map(|(op, _)| op.as_str()).collect();
    assert!(!ops.contains(&"RUN"), "a RUN in the final stage: {ops:?}");
    let copied: Vec<&str> = stage
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, args)| args.as_str())
        .collect();
    assert_eq!(copied, ["--from=build /out/ /"], "{copied:?}");
    let entrypoint = stage
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, a)| a.as_str());
    assert_eq!(entrypoint, Some(r#"["/usr/bin/datadog-cluster-agent"]"#));
}

#[test]
fn the_user_is_numeric_non_root_and_the_deployments() {
    let all = instructions(&repo_file("Dockerfile"));
    let (_, stage) = final_stage(&all);
    let user = stage
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.clone())
        .expect("a USER in the final stage");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let uid: u64 = uid.parse().expect("a numeric uid");
    let gid: u64 = gid.parse().expect("a numeric gid");
    assert!(uid > 0 && gid > 0, "{user}");
    let pod = &deployment()["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsUser"].as_u64(), Some(uid), "{pod}");
    assert_eq!(pod["runAsGroup"].as_u64(), Some(gid), "{pod}");
}

#[test]
fn the_exposed_ports_are_the_deployments() {
    let all = instructions(&repo_file("Dockerfile"));
    let (_, stage) = final_stage(&all);
    let mut exposed: Vec<u64> = stage
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(|p| p.parse::<u64>().unwrap()))
        .collect();
    exposed.sort_unstable();
    let mut declared: Vec<u64> = deployment()["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    declared.sort_unstable();
    assert_eq!(exposed, declared);
}

#[test]
fn the_build_context_leaves_build_output_out() {
    let ignore = repo_file(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}
