//! Stamps the commit, build date and compiler into the binary for `version` and `/version`.
//!
//! The date is `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else the commit's
//! time, so two builds of one commit carry the same stamp; the clock only without git.
use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The stamp's date, RFC 3339 in UTC, from the first source that gives one.
pub(crate) fn build_date(
    source_date_epoch: Option<&str>,
    commit_epoch: Option<&str>,
    now_epoch: i64,
) -> Result<String, String> {
    if let Some(raw) = source_date_epoch {
        let seconds = raw.trim().parse::<i64>().map_err(|_| {
            format!("SOURCE_DATE_EPOCH must be whole seconds since 1970, not {raw:?}")
        })?;
        return Ok(rfc3339(seconds));
    }
    let seconds = commit_epoch
        .and_then(|c| c.trim().parse::<i64>().ok())
        .unwrap_or(now_epoch);
    Ok(rfc3339(seconds))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, proleptic Gregorian (Howard Hinnant's civil_from_days).
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

fn main() {
    let commit = std::env::var("DCA_COMMIT")
        .ok()
        .or_else(|| output("git", &["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let date = build_date(
        std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
        output("git", &["log", "-1", "--format=%ct"]).as_deref(),
        now,
    )
    .unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::exit(1);
    });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DCA_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=DCA_BUILD_DATE={date}");
    println!("cargo:rustc-env=DCA_BUILD_RUSTC={rustc_version}");
    println!("cargo:rerun-if-env-changed=DCA_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
