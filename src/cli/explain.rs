//! `explain <namespace>/<hpa> [--json]` (ours): why an HPA gets the value it gets, or none,
//! from the running agent (`/explain/<namespace>/<hpa>` with the local token).

use std::path::Path;
use std::time::Duration;

use super::local;
use crate::explain::Explanation;

const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The HPA, as <namespace>/<name>.
    #[arg(value_name = "NAMESPACE/HPA")]
    hpa: String,
    /// Print the explanation as JSON.
    #[arg(short = 'j', long = "json")]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("expected <namespace>/<hpa>, not {0:?}")]
struct BadName(String);

/// The local-API path for `namespace/name`, checked before any request.
fn path(hpa: &str) -> Result<String, BadName> {
    match hpa.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(format!("/explain/{ns}/{name}"))
        }
        _ => Err(BadName(hpa.to_owned())),
    }
}

pub(super) fn run(cfgpath: Option<&Path>, args: &ExplainArgs) -> anyhow::Result<()> {
    let path = path(&args.hpa)?;
    let settings = local::settings(cfgpath)?;
    let explanation: Explanation = local::get_json(&settings, &path, "explanation", TIMEOUT)?;
    if args.json {
        println!("{}", serde_json::to_string(&explanation)?);
    } else {
        print!("{}", crate::explain::render(&explanation));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hpa_is_namespace_slash_name() {
        assert_eq!(path("apps/orders").unwrap(), "/explain/apps/orders");
        for bad in ["orders", "/orders", "apps/", "apps/orders/x", ""] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }
}
