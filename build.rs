//! Stamps the commit, build date and compiler into the binary for `version` and `/version`.
use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = std::env::var("DCA_COMMIT")
        .ok()
        .or_else(|| output("git", &["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DCA_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=DCA_BUILD_DATE={date}");
    println!("cargo:rustc-env=DCA_BUILD_RUSTC={rustc_version}");
    println!("cargo:rerun-if-env-changed=DCA_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
