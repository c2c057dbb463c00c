//! `process_*` metrics, read from `/proc/self` at scrape time, named and defined as Prometheus'
//! own client libraries export them (client_golang's process collector): CPU time, resident and
//! virtual memory, open and maximum file descriptors, start time.
//!
//! Read here rather than through a crate: `prometheus-client` has no process collector, and the
//! crates that add one build on `procfs` or `sysinfo` (and their dependency trees) to get six
//! numbers from two files; `libc`, already a dependency, gives the clock tick, the page size and
//! the descriptor limit. Linux only (the bridge's target); elsewhere nothing is exported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Registers the process collector in `registry` (which should have no prefix).
pub(super) fn register(registry: &mut Registry) {
    if cfg!(target_os = "linux") {
        registry.register_collector(Box::new(ProcessCollector::new()));
    }
}

#[derive(Debug)]
struct ProcessCollector {
    /// Seconds since the epoch, fixed at start.
    start_time: Option<f64>,
    ticks_per_second: f64,
    page_size: f64,
}

/// What `/proc/self/stat` says (fields 14, 15, 22, 23, 24 of proc(5)).
#[derive(Debug, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime` of `/proc/stat`), seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a system constant; it has no memory effects.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as f64)
}

fn open_fds() -> Option<f64> {
    // Counts the directory's own descriptor too, as client_golang does.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

impl ProcessCollector {
    fn new() -> Self {
        let ticks_per_second = sysconf(libc::_SC_CLK_TCK).unwrap_or(100.0);
        let start_time = (|| {
            let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
            let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
            Some(boot as f64 + stat.start_ticks as f64 / ticks_per_second)
        })();
        ProcessCollector {
            start_time,
            ticks_per_second,
            page_size: sysconf(libc::_SC_PAGESIZE).unwrap_or(4096.0),
        }
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            let cpu = ConstCounter::new(
                (stat.utime_ticks + stat.stime_ticks) as f64 / self.ticks_per_second,
            );
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_pages as f64 * self.page_size,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize_bytes as f64,
            )?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                n,
            )?;
        }
        if let Some(t) = self.start_time {
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                t,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a ')' of its own.
        let line = "4242 (ccgw (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    150 30 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 150,
                stime_ticks: 30,
                start_ticks: 98765,
                vsize_bytes: 123456789,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
    }
}
