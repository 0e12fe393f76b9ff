//! The expvar-style document at `/debug/vars`: what Go's `expvar` package shows of a process
//! (its command line) and, in place of Go's `memstats`, the figures an operator reads off
//! ours: pid, resident memory, uptime, version. Keys are sorted, as Go's are.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug)]
pub(crate) struct Expvar {
    cmdline: Vec<String>,
    started: Instant,
    started_at: jiff::Timestamp,
}

#[derive(Serialize)]
struct Document<'a> {
    cmdline: &'a [String],
    process: Process,
    version: Version,
}

#[derive(Serialize)]
struct Process {
    pid: u32,
    /// Absent where `/proc/self/status` cannot be read (not Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_bytes: Option<u64>,
    start_time: String,
    uptime_seconds: u64,
}

#[derive(Serialize)]
struct Version {
    commit: &'static str,
    version: &'static str,
}

impl Expvar {
    pub(crate) fn new(cmdline: Vec<String>) -> Self {
        let started_at =
            jiff::Timestamp::try_from(SystemTime::now()).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        Expvar {
            cmdline,
            started: Instant::now(),
            started_at,
        }
    }

    pub(crate) fn document(&self) -> Bytes {
        let rss_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| vm_rss_bytes(&status));
        let document = Document {
            cmdline: &self.cmdline,
            process: Process {
                pid: std::process::id(),
                rss_bytes,
                start_time: self.started_at.to_string(),
                uptime_seconds: self.started.elapsed().as_secs(),
            },
            version: Version {
                commit: crate::version::COMMIT,
                version: crate::version::VERSION,
            },
        };
        // Strings and integers always serialise; the fallback keeps this total.
        Bytes::from(serde_json::to_vec(&document).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

/// The `VmRSS:` line of `/proc/<pid>/status`, which the kernel prints in kB.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::vm_rss_bytes;

    #[test]
    fn resident_memory_is_read_off_the_status_file() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "Name:\tdca\nVmRSS:\t   56012 kB\nThreads:\t4\n",
                Some(56012 * 1024),
            ),
            ("VmRSS:\t0 kB\n", Some(0)),
            ("Name:\tdca\n", None),
            ("VmRSS:\tlots kB\n", None),
            ("VmRSS:\t12 MB\n", None),
            ("VmRSS:\t18446744073709551615 kB\n", None),
        ];
        for (status, want) in cases {
            assert_eq!(vm_rss_bytes(status), *want, "{status:?}");
        }
    }
}
