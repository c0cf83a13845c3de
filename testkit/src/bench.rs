//! Helpers the benchmarks share: positional arguments, spreads of per-round figures, peak RSS,
//! CPU time.

/// Positional argument `index` (flags skipped) parsed, or `default`.
pub fn arg(index: usize, default: usize) -> usize {
    std::env::args().skip(1).filter(|a| !a.starts_with("--")).nth(index).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// The process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user and system) the process has used so far, in seconds; 10 ms resolution
/// (Linux counts it in ticks of 1/100 s).
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces): utime and stime
    // are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// (min, median, max) of per-round figures.
pub fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2], values[values.len() - 1])
}

/// Waits for the local broker to finish persisting what the last phase wrote: it saves its whole
/// state after changes, on one core, and each measured phase should start with it idle.
pub async fn settle() {
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
}
