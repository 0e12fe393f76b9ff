//! `status [--json] [--pretty-json]`: asks the running agent for `/status` with the local
//! token and prints the report: as text (aligned, coloured only on a terminal and without
//! `-n`), or the JSON for scripts.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use super::local;
use crate::status::Status;

/// The agent builds the report from memory; a slow answer means it is in trouble.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the report as JSON, on one line.
    #[arg(short = 'j', long = "json", conflicts_with = "pretty_json")]
    json: bool,
    /// Print the report as indented JSON.
    #[arg(short = 'p', long = "pretty-json")]
    pretty_json: bool,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text { colour: bool },
    Json,
    PrettyJson,
}

fn format(args: &StatusArgs, colour: bool) -> Format {
    match (args.json, args.pretty_json) {
        (true, _) => Format::Json,
        (_, true) => Format::PrettyJson,
        _ => Format::Text { colour },
    }
}

fn print(status: &Status, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Text { colour } => crate::status::render(status, colour),
        Format::Json => serde_json::to_string(status)? + "\n",
        Format::PrettyJson => serde_json::to_string_pretty(status)? + "\n",
    })
}

pub(super) fn run(cfgpath: Option<&Path>, args: &StatusArgs, colour: bool) -> anyhow::Result<()> {
    let settings = local::settings(cfgpath)?;
    let report: Status = local::get_json(&settings, "/status", "status report", TIMEOUT)?;
    let format = format(args, colour && std::io::stdout().is_terminal());
    print!("{}", print(&report, format)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_format() {
        let cases = [
            (false, false, true, Format::Text { colour: true }),
            (false, false, false, Format::Text { colour: false }),
            (true, false, true, Format::Json),
            (false, true, true, Format::PrettyJson),
        ];
        for (json, pretty_json, colour, want) in cases {
            let args = StatusArgs { json, pretty_json };
            assert_eq!(format(&args, colour), want, "{args:?}");
        }
    }

    #[test]
    fn json_output_parses_back_to_the_report() {
        let mut report = Status::default();
        report.agent.pid = 7;
        for f in [Format::Json, Format::PrettyJson] {
            let text = print(&report, f).unwrap();
            assert!(text.ends_with('\n'));
            assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), report);
        }
        assert_eq!(print(&report, Format::Json).unwrap().lines().count(), 1);
        let text = print(&report, Format::Text { colour: false }).unwrap();
        assert!(text.contains("  Pid:          7\n"), "{text}");
    }
}
