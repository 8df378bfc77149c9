//! CPU time and context switches per thread name (this process) and per process (others, e.g.
//! PostgreSQL backends), read from `/proc`, so a benchmark can say where each event's CPU went
//! rather than guess. A thread that parks and is woken per event shows it as switches.
//! Linux only; elsewhere every reading is empty. Each benchmark uses what it needs of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// CPU seconds used and context switches so far, by thread name (`comm`) for this process and by
/// label for others.
#[derive(Clone, Debug, Default)]
pub struct CpuTimes(BTreeMap<String, Usage>);

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    secs: f64,
    switches: u64,
}

/// One name's share of each event.
#[derive(Clone, Debug)]
pub struct PerEvent {
    pub name: String,
    /// µs of CPU.
    pub us: f64,
    /// Context switches, voluntary (parked) and involuntary (preempted).
    pub switches: f64,
}

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
                Some(&Label(label)),
            );
        }
        Self(times)
    }

    /// [`CpuTimes::now`], plus the threads of each `(prefix, pid)` of `split` listed by thread
    /// name (`prefix` + `comm`), for another process whose threads do different work (a JVM's
    /// stream threads apart from its garbage collector and compiler).
    pub fn now_split(others: &[(String, u32)], split: &[(String, u32)]) -> Self {
        let mut times = Self::now(others);
        for (prefix, pid) in split {
            add_threads(
                &Path::new("/proc").join(pid.to_string()).join("task"),
                &mut times.0,
                Some(&Prefix(prefix)),
            );
        }
        times
    }

    /// CPU and switches per event, by name, between `earlier` and `self`; names that used
    /// nothing are left out.
    pub fn per_event_since(&self, earlier: &CpuTimes, events: usize) -> Vec<PerEvent> {
        let n = events as f64;
        self.0
            .iter()
            .map(|(name, now)| {
                let before = earlier.0.get(name).copied().unwrap_or_default();
                PerEvent {
                    name: name.clone(),
                    us: (now.secs - before.secs) * 1e6 / n,
                    switches: now.switches.saturating_sub(before.switches) as f64 / n,
                }
            })
            .filter(|row| row.us >= 0.05)
            .collect()
    }
}

/// The mean per name of several `per_event_since` readings (a name missing from a reading
/// counts as zero there).
pub fn mean(readings: &[Vec<PerEvent>]) -> Vec<PerEvent> {
    let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for row in readings.iter().flatten() {
        let sum = sums.entry(&row.name).or_default();
        sum.0 += row.us;
        sum.1 += row.switches;
    }
    let n = readings.len().max(1) as f64;
    sums.into_iter()
        .map(|(name, (us, switches))| PerEvent {
            name: name.to_string(),
            us: us / n,
            switches: switches / n,
        })
        .collect()
}

/// Prints `per_event_since` as one indented line per name, then the total.
pub fn print_per_event(title: &str, rows: &[PerEvent]) {
    println!("  CPU per event, {title}:");
    for row in rows {
        println!(
            "    {:<22} {:>8.1} µs {:>7.2} switches",
            row.name, row.us, row.switches
        );
    }
    let total: f64 = rows.iter().map(|row| row.us).sum();
    let switches: f64 = rows.iter().map(|row| row.switches).sum();
    println!(
        "    {:<22} {total:>8.1} µs {switches:>7.2} switches",
        "total"
    );
}

/// How [`add_threads`] names another process's threads: all under one label, or each by its
/// own name after a prefix.
enum Name<'a> {
    Label(&'a str),
    Prefix(&'a str),
}
use Name::{Label, Prefix};

fn add_threads(tasks: &Path, times: &mut BTreeMap<String, Usage>, name: Option<&Name<'_>>) {
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
        let comm = || {
            head.split_once('(')
                .map(|(_, comm)| comm.to_string())
                .unwrap_or_default()
        };
        let name = match name {
            Some(Label(label)) => label.to_string(),
            Some(Prefix(prefix)) => format!("{prefix}{}", comm()),
            None => comm(),
        };
        let usage: &mut Usage = times.entry(name).or_default();
        usage.secs += ticks / TICKS;
        usage.switches += switches(&entry.path().join("status"));
    }
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a thread's `status` file.
fn switches(status: &Path) -> u64 {
    let status = std::fs::read_to_string(status).unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
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
