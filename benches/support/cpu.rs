//! CPU time per thread name (this process) and per process (others, e.g. PostgreSQL backends),
//! read from `/proc`, so a benchmark can say where each event's CPU went rather than guess.
//! Linux only; elsewhere every reading is empty. Each benchmark uses what it needs of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// CPU seconds used so far, by thread name (`comm`) for this process and by label for others.
#[derive(Clone, Debug, Default)]
pub struct CpuTimes(BTreeMap<String, f64>);

impl CpuTimes {
    /// Threads of this process, summed per name, plus each `(label, pid)` of `others` (all of
    /// the process's threads).
    pub fn now(others: &[(String, u32)]) -> Self {
        let mut times = BTreeMap::new();
        add_threads(Path::new("/proc/self/task"), &mut times, None);
        for (label, pid) in others {
            add_threads(
                &Path::new("/proc").join(pid.to_string()).join("task"),
                &mut times,
                Some(label),
            );
        }
        Self(times)
    }

    /// µs of CPU per event, by name, between `earlier` and `self`; names that used nothing
    /// are left out.
    pub fn per_event_since(&self, earlier: &CpuTimes, events: usize) -> Vec<(String, f64)> {
        self.0
            .iter()
            .map(|(name, &secs)| {
                let before = earlier.0.get(name).copied().unwrap_or(0.0);
                (name.clone(), (secs - before) * 1e6 / events as f64)
            })
            .filter(|(_, us)| *us >= 0.05)
            .collect()
    }
}

/// Prints `per_event_since` as one indented line per name, then the total.
pub fn print_per_event(title: &str, rows: &[(String, f64)]) {
    println!("  CPU per event, {title}:");
    for (name, us) in rows {
        println!("    {name:<22} {us:>8.1} µs");
    }
    let total: f64 = rows.iter().map(|(_, us)| us).sum();
    println!("    {:<22} {total:>8.1} µs", "total");
}

fn add_threads(tasks: &Path, times: &mut BTreeMap<String, f64>, label: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return;
    };
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the comm.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let ticks: f64 = utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0);
        let name = match label {
            Some(label) => label.to_string(),
            None => head
                .split_once('(')
                .map(|(_, comm)| comm.to_string())
                .unwrap_or_default(),
        };
        *times.entry(name).or_default() += ticks / TICKS;
    }
}

/// `(label, pid)` of every other process whose command line contains `needle` (e.g. the
/// broker's main class), to pass to [`CpuTimes::now`].
pub fn processes_matching(label: &str, needle: &str) -> Vec<(String, u32)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .map(|pid| (label.to_string(), pid))
        .collect()
}
