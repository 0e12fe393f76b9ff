//! Runs inputs through a target without AFL++, to reproduce a crash or re-check a corpus
//! with a plain `cargo run` (no AFL runtime is linked).
//!
//! `replay <target|all> [FILE|DIR]...`: with no paths, the target's seeds (`seeds/<target>`);
//! a directory means every file in it (an AFL++ output directory works: its `queue` and
//! `crashes` are searched). Exits 1 if any input panics.

use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!("usage: replay <target|all> [FILE|DIR]...");
        return ExitCode::from(2);
    };
    let targets: Vec<(&str, dca_fuzz::Target)> = if name == "all" {
        dca_fuzz::TARGETS.to_vec()
    } else {
        match dca_fuzz::target(name) {
            Some(t) => vec![(name.as_str(), t)],
            None => {
                let names: Vec<&str> = dca_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
                eprintln!("unknown target {name:?}; targets: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
    };

    let mut failed = 0usize;
    for (target_name, target) in targets {
        let roots: Vec<PathBuf> = if args.len() > 1 {
            args[1..].iter().map(PathBuf::from).collect()
        } else {
            vec![
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("seeds")
                    .join(target_name),
            ]
        };
        let mut files = Vec::new();
        for root in &roots {
            collect(root, &mut files);
        }
        files.sort();
        let mut ran = 0usize;
        for file in &files {
            let data = match std::fs::read(file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    failed += 1;
                    continue;
                }
            };
            ran += 1;
            if panic::catch_unwind(|| target(&data)).is_err() {
                eprintln!("PANIC {target_name} {}", file.display());
                failed += 1;
            }
        }
        println!("{target_name}: {ran} inputs");
    }
    if failed > 0 {
        eprintln!("{failed} input(s) failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Files under `path`, skipping AFL++ bookkeeping (`README.txt`, dot files, `.state`).
fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::metadata(path) else {
        eprintln!("{}: not found", path.display());
        return;
    };
    if meta.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "README.txt" {
            continue;
        }
        collect(&p, out);
    }
}
