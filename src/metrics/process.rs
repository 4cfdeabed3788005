//! The process metrics Prometheus users expect (`process_resident_memory_bytes`,
//! `process_open_fds`, `process_cpu_seconds_total`, `process_start_time_seconds`, …), read
//! from `/proc` at each scrape or push.
//!
//! Design: a [`Collector`] registered on the root registry (no `marketbox_` prefix, so the
//! names are the ones every dashboard already knows). Nothing is cached: each encode reads
//! `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`, `/proc/stat` and lists
//! `/proc/self/fd`. A file that cannot be read or parsed (not Linux, a kernel that writes
//! something unexpected) leaves its metrics out of that scrape; it never fails the scrape.
//!
//! CPU times in `/proc/self/stat` are in clock ticks of `USER_HZ`, which the kernel fixes at
//! 100 for user space on every architecture marketbox runs on (x86-64, arm64); glibc's
//! `sysconf(_SC_CLK_TCK)` returns the same constant.
//!
//! Owns: reading and parsing those files. Must not touch: anything else.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `USER_HZ`: clock ticks per second in `/proc` times.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the process's figures; a field is `None` when its source was unreadable.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_memory_bytes: Option<i64>,
    pub virtual_memory_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub threads: Option<i64>,
}

/// The fields of `/proc/<pid>/stat` after the command name: (utime + stime in ticks, number
/// of threads, start time in ticks since boot).
fn parse_stat(stat: &str) -> Option<(u64, i64, u64)> {
    // The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = field(14)?.checked_add(field(15)?)?;
    let threads = i64::try_from(field(20)?).ok()?;
    Some((cpu, threads, field(22)?))
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in bytes.
fn parse_status_kb(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_ascii_whitespace();
    let kb: i64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kb.checked_mul(1024),
        _ => None,
    }
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn parse_max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads the current process's figures from `/proc`.
    pub fn read() -> ProcessStats {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut s = ProcessStats::default();
        if let Some((cpu, threads, start)) = read("/proc/self/stat").and_then(|t| parse_stat(&t)) {
            s.cpu_seconds = Some(cpu as f64 / TICKS_PER_SECOND);
            s.threads = Some(threads);
            s.start_time_seconds = read("/proc/stat")
                .and_then(|t| parse_btime(&t))
                .map(|boot| boot as f64 + start as f64 / TICKS_PER_SECOND);
        }
        if let Some(status) = read("/proc/self/status") {
            s.resident_memory_bytes = parse_status_kb(&status, "VmRSS:");
            s.virtual_memory_bytes = parse_status_kb(&status, "VmSize:");
        }
        s.max_fds = read("/proc/self/limits").and_then(|t| parse_max_fds(&t));
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as i64);
        s
    }
}

/// Encodes [`ProcessStats::read`] at every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges_i = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
            ("process_threads", "Number of OS threads", s.threads),
        ];
        for (name, help, v) in gauges_i {
            if let Some(v) = v {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Some(v) = s.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name_whatever_it_holds() {
        // TC0: a command name with spaces and parentheses (fields from a real arm64 box).
        let stat = "4242 (mark (box) 1) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 130 0 0 20 \
                    0 5 0 987654 123456789 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((380, 5, 987654)));
        // TC1: truncated or garbage: no figures, no panic.
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        // TC2: utime + stime at u64::MAX does not overflow.
        let huge = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 1 0 0 20 0 1 0 1";
        assert_eq!(parse_stat(huge), None);
    }

    #[test]
    fn status_limits_and_btime_parse_and_refuse_what_they_do_not_know() {
        let status = "Name:\tmarketbox\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(status, "VmSize:"), Some(123456 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        assert_eq!(parse_status_kb("VmRSS: 12 MB\n", "VmRSS:"), None);
        assert_eq!(
            parse_status_kb("VmRSS: 99999999999999999 kB\n", "VmRSS:"),
            None
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1764000000\n"),
            Some(1764000000)
        );
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_reads_its_own_figures() {
        let s = ProcessStats::read();
        assert!(s.resident_memory_bytes.is_some_and(|v| v > 0), "{s:?}");
        assert!(s.open_fds.is_some_and(|v| v >= 3), "{s:?}");
        let start = s.start_time_seconds.expect("a start time on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
