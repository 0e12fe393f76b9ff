use std::path::Path;

use crate::config::{Settings, markdown_table};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Also print where each setting came from (default, file or environment variable).
    #[arg(long)]
    sources: bool,
    /// Print the README's configuration table instead (for maintainers).
    #[arg(long, hide = true)]
    markdown_table: bool,
}

pub(super) fn run(cfgpath: Option<&Path>, args: &ConfigArgs) -> anyhow::Result<()> {
    if args.markdown_table {
        print!("{}", markdown_table());
        return Ok(());
    }
    let settings = Settings::load(cfgpath)?;
    print!("{}", settings.to_scrubbed_yaml());
    if args.sources {
        println!("# sources");
        for (key, source) in settings.sources() {
            println!("# {key}: {source}");
        }
    }
    Ok(())
}
