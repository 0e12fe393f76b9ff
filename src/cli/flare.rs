//! `flare [CASE_ID] [-e EMAIL] [-s|--send]`: a zip for Datadog support with what the
//! running agent reports (status, health, the pod -> services map, its recent log, its log
//! level, telemetry and expvar) and what this process can read (the configuration, the
//! environment, the version), every file scrubbed. Without an agent to ask, the archive
//! holds the local part and says why the rest is missing. It is sent (multipart, as the Go
//! agent sends it) with `--send`, after a yes on a terminal, and never otherwise.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::local;
use crate::config::Settings;
use crate::scrub::scrub;

const AGENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Go's upload timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Environment variables worth a support engineer's time.
const ENV_PREFIXES: &[&str] = &[
    "DD_",
    "KUBERNETES_",
    "HOSTNAME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

#[derive(Debug, clap::Args)]
pub struct FlareArgs {
    /// The support case the flare belongs to.
    case_id: Option<String>,
    /// Your email, for the support case.
    #[arg(short = 'e', long = "email")]
    email: Option<String>,
    /// Send it without asking.
    #[arg(short = 's', long = "send")]
    send: bool,
}

#[derive(Debug, thiserror::Error)]
enum FlareError {
    #[error("cannot write the flare archive {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the case id must be digits, not {0:?}")]
    CaseId(String),
    #[error("cannot send the flare to {url}: {reason}")]
    Send { url: String, reason: String },
}

/// One file of the archive.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    name: String,
    contents: String,
}

fn entry(name: &str, contents: impl Into<String>) -> Entry {
    Entry {
        name: name.to_owned(),
        contents: contents.into(),
    }
}

/// What the running agent reports, by file name and local-API path.
const FROM_AGENT: &[(&str, &str)] = &[
    ("status.log", "/status?format=text"),
    ("status.json", "/status"),
    ("health.json", "/status/health"),
    ("metadata-mapper.json", "/api/v1/tags/pod"),
    ("log-level.json", "/config/log_level"),
    ("cluster-agent.log", "/flare/logs"),
];

/// The files, scrubbed, and notes on what could not be collected.
fn collect(settings: &Settings, env: &[(String, String)]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    let mut agent_reached = false;
    for (name, path) in FROM_AGENT {
        match local::get(settings, path, AGENT_TIMEOUT) {
            Ok(Ok(answer)) if answer.status == 200 => {
                agent_reached = true;
                entries.push(entry(name, String::from_utf8_lossy(&answer.body)));
            }
            Ok(Ok(answer)) => {
                agent_reached = true;
                notes.push(format!(
                    "{name}: {} answered {}: {}",
                    answer.url,
                    answer.status,
                    String::from_utf8_lossy(&answer.body).trim_end()
                ));
            }
            Ok(Err(e)) => notes.push(format!("{name}: {e}")),
            Err(e) => notes.push(format!("{name}: {e:#}")),
        }
    }
    for (name, port, path) in [
        ("telemetry.log", settings.metrics_port, "/metrics"),
        ("expvar.json", settings.expvar_port, "/debug/vars"),
    ] {
        if port == 0 {
            notes.push(format!("{name}: its port is 0 (off)"));
            continue;
        }
        let url = format!("http://127.0.0.1:{port}{path}");
        match plain_get(&url) {
            Ok(body) => entries.push(entry(name, body)),
            Err(e) => notes.push(format!("{name}: {url}: {e}")),
        }
    }
    entries.push(entry("config.yaml", settings.to_scrubbed_yaml()));
    entries.push(entry("envvars.log", environment(env)));
    entries.push(entry("version.log", crate::version::long() + "\n"));
    if !agent_reached {
        notes.insert(
            0,
            "local flare: the running agent could not be asked, so this archive holds only what the CLI could read".to_owned(),
        );
    }
    if !notes.is_empty() {
        entries.push(entry("flare-notes.log", notes.join("\n") + "\n"));
    }
    for e in &mut entries {
        e.contents = scrub(&e.contents);
    }
    entries
}

fn plain_get(url: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(AGENT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        response.text().await.map_err(|e| e.to_string())
    })
}

/// `NAME=value` lines of the variables worth sending; values of names that say they hold a
/// secret are dropped whole, the rest go through the scrubber with everything else.
fn environment(env: &[(String, String)]) -> String {
    let mut lines: Vec<String> = env
        .iter()
        .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| {
            let upper = k.to_ascii_uppercase();
            let secret = ["KEY", "TOKEN", "PASS", "SECRET"]
                .iter()
                .any(|s| upper.contains(s));
            if secret {
                format!("{k}=********")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// Writes the entries into a zip at `path` (owner-only: it is support data).
fn write_zip(path: &Path, entries: &[Entry]) -> Result<(), FlareError> {
    let err = |source| FlareError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o600);
    for e in entries {
        zip.start_file(format!("flare/{}", e.name), options)
            .map_err(|z| err(std::io::Error::other(z)))?;
        zip.write_all(e.contents.as_bytes()).map_err(err)?;
    }
    zip.finish().map_err(|z| err(std::io::Error::other(z)))?;
    Ok(())
}

/// `https://7-62-0-flare.agent.datadoghq.com/support/flare/<case>`, or `dd_url`'s host when
/// set (a proxy or a test double), as the Go agent derives it.
fn flare_url(settings: &Settings, case_id: Option<&str>) -> String {
    let base = settings.dd_url.as_deref().map_or_else(
        || {
            format!(
                "https://{}-flare.agent.{}",
                crate::version::VERSION.replace('.', "-"),
                settings.site
            )
        },
        |u| u.trim_end_matches('/').to_owned(),
    );
    match case_id {
        Some(id) => format!("{base}/support/flare/{id}"),
        None => format!("{base}/support/flare"),
    }
}

/// A `multipart/form-data` body: the text fields, then the archive as `flare_file`.
fn multipart(boundary: &str, fields: &[(&str, &str)], file_name: &str, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"flare_file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn hostname(settings: &Settings) -> String {
    settings
        .hostname
        .clone()
        .or_else(|| std::env::var("DD_POD_NAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

fn send(settings: &Settings, args: &FlareArgs, path: &Path) -> anyhow::Result<String> {
    let url = flare_url(settings, args.case_id.as_deref());
    let failed = |reason: String| FlareError::Send {
        url: url.clone(),
        reason,
    };
    let archive = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let boundary = format!("dca-flare-{:016x}", rand::random::<u64>());
    let host = hostname(settings);
    let mut fields = vec![
        ("source", "local"),
        ("agent_version", crate::version::VERSION),
        ("hostname", host.as_str()),
    ];
    if let Some(case) = &args.case_id {
        fields.push(("case_id", case));
    }
    if let Some(email) = &args.email {
        fields.push(("email", email));
    }
    let file_name = path
        .file_name()
        .map_or_else(|| "flare.zip".into(), |n| n.to_string_lossy().into_owned());
    let body = multipart(&boundary, &fields, &file_name, &archive);
    let tls = crate::datadog::client::tls_config(None).map_err(|e| failed(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(SEND_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .post(&url)
            .header("DD-API-KEY", settings.api_key.expose())
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(text)
        } else {
            Err(format!("HTTP {status}: {}", text.trim()))
        }
    });
    answer.map_err(|reason| failed(reason).into())
}

fn ask(question: &str) -> bool {
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok()
        && matches!(line.trim(), "y" | "Y" | "yes" | "Yes")
}

pub(super) fn run(cfgpath: Option<&Path>, args: &FlareArgs) -> anyhow::Result<()> {
    if let Some(case) = &args.case_id
        && !case.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(FlareError::CaseId(case.clone()).into());
    }
    let settings = local::settings(cfgpath)?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let entries = collect(&settings, &env);
    let path = std::env::temp_dir().join(format!(
        "datadog-cluster-agent-flare-{}-{}.zip",
        jiff::Timestamp::now().as_second(),
        std::process::id()
    ));
    write_zip(&path, &entries)?;
    println!("{}", path.display());
    if let Some(notes) = entries.iter().find(|e| e.name == "flare-notes.log") {
        eprint!("{}", notes.contents);
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if args.send || (interactive && ask("Send it to Datadog support?")) {
        let answer = send(&settings, args, &path)?;
        println!(
            "sent to {}: {}",
            flare_url(&settings, args.case_id.as_deref()),
            answer.trim()
        );
    } else {
        eprintln!("not sent (pass --send to send it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(None, Path::new("/nonexistent"), &|name: &str| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    #[test]
    fn the_flare_url_follows_site_dd_url_and_case() {
        let version = crate::version::VERSION.replace('.', "-");
        let cases = [
            (
                vec![],
                None,
                format!("https://{version}-flare.agent.datadoghq.com/support/flare"),
            ),
            (
                vec![("DD_SITE", "datadoghq.eu")],
                Some("1234"),
                format!("https://{version}-flare.agent.datadoghq.eu/support/flare/1234"),
            ),
            (
                vec![("DD_DD_URL", "http://127.0.0.1:9/")],
                Some("7"),
                "http://127.0.0.1:9/support/flare/7".to_owned(),
            ),
        ];
        for (env, case, want) in cases {
            assert_eq!(flare_url(&settings(&env), case), want, "{env:?}");
        }
    }

    #[test]
    fn the_environment_keeps_our_variables_and_drops_secret_values() {
        let env: Vec<(String, String)> = [
            ("DD_API_KEY", "0123456789abcdef0123456789abcdef"),
            (
                "DD_CLUSTER_AGENT_AUTH_TOKEN",
                "abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            ("DD_SITE", "datadoghq.com"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("HOME", "/root"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            environment(&env),
            "DD_API_KEY=********\nDD_CLUSTER_AGENT_AUTH_TOKEN=********\nDD_SITE=datadoghq.com\nKUBERNETES_SERVICE_HOST=10.0.0.1\n"
        );
    }

    #[test]
    fn the_multipart_body_has_the_fields_and_the_file() {
        let body = multipart(
            "B",
            &[("case_id", "12"), ("email", "a@b")],
            "f.zip",
            b"PK\x03\x04",
        );
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            text,
            "--B\r\nContent-Disposition: form-data; name=\"case_id\"\r\n\r\n12\r\n\
             --B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b\r\n\
             --B\r\nContent-Disposition: form-data; name=\"flare_file\"; filename=\"f.zip\"\r\n\
             Content-Type: application/octet-stream\r\n\r\nPK\u{3}\u{4}\r\n--B--\r\n"
        );
    }

    #[test]
    fn a_local_flare_holds_the_local_files_scrubbed_and_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("auth_token");
        std::fs::write(&token_file, "0123456789abcdef0123456789abcdef0123").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let api_key = "0123456789abcdef0123456789abcdef";
        let app_key = "fedcba9876543210fedcba9876543210fedcba98";
        let token = "abcdefghijklmnopqrstuvwxyzABCDEF0123456789";
        let env = [
            ("DD_API_KEY", api_key),
            ("DD_APP_KEY", app_key),
            ("DD_CLUSTER_AGENT_AUTH_TOKEN", token),
            ("DD_AUTH_TOKEN_FILE_PATH", token_file.to_str().unwrap()),
            ("DD_CLUSTER_AGENT_CMD_PORT", &port),
            ("DD_METRICS_PORT", "0"),
            ("DD_EXPVAR_PORT", "0"),
        ];
        let s = settings(&env);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let entries = collect(&s, &env);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "config.yaml",
                "envvars.log",
                "version.log",
                "flare-notes.log"
            ]
        );
        let notes = &entries[3].contents;
        assert!(notes.starts_with("local flare: "), "{notes}");
        assert!(
            notes.contains("status.log: cannot reach the cluster agent"),
            "{notes}"
        );
        let path = dir.path().join("f.zip");
        write_zip(&path, &entries).unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(archive.len(), entries.len());
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            for secret in [
                api_key,
                app_key,
                token,
                "0123456789abcdef0123456789abcdef0123",
            ] {
                assert!(
                    !text.contains(secret),
                    "{} holds a secret:\n{text}",
                    file.name()
                );
            }
        }
        // Refuses to overwrite.
        assert!(write_zip(&path, &entries).is_err());
    }
}
