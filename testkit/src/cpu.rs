//! CPU time and context switches per thread name (this process) and per process (others, e.g.
//! PostgreSQL backends), read from `/proc`, so a benchmark can say where each event's CPU went
//! rather than guess. A thread that parks and is woken per event shows it as switches.
//! Linux only; elsewhere every reading is empty. Each benchmark uses what it needs of it.

use std::collections::BTreeMap;
use std::path::Path;

/// CPU seconds used and context switches so far, per thread, named by thread name (`comm`)
/// for this process and by label for others; plus each process's own total, which still counts
/// the threads that have exited since.
#[derive(Clone, Debug, Default)]
pub struct CpuTimes {
    /// By (process, tid): the row the thread is counted in, and its usage.
    threads: BTreeMap<(u32, u32), (String, Usage)>,
    /// By process: the row its exited threads are counted in, and its total CPU seconds.
    processes: BTreeMap<u32, (String, f64)>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    secs: f64,
    switches: u64,
    /// Of `switches`, the voluntary ones: the thread parked and was woken again.
    parked: u64,
}

/// One name's share of each event.
#[derive(Clone, Debug)]
pub struct PerEvent {
    pub name: String,
    /// µs of CPU.
    pub us: f64,
    /// Context switches, voluntary (parked) and involuntary (preempted).
    pub switches: f64,
    /// Of `switches`, the voluntary ones: wake-ups. The involuntary rest are preemptions, which
    /// a thread busy on a shared core takes however it is written.
    pub parked: f64,
}

impl CpuTimes {
    /// Threads of this process, summed per name, plus each `(label, pid)` of `others` (all of
    /// the process's threads).
    pub fn now(others: &[(String, u32)]) -> Self {
        let mut times = Self::default();
        times.add_process(std::process::id(), None);
        for (label, pid) in others {
            times.add_process(*pid, Some(&Label(label)));
        }
        times
    }

    /// [`CpuTimes::now`], plus the threads of each `(prefix, pid)` of `split` listed by thread
    /// name (`prefix` + `comm`), for another process whose threads do different work (a JVM's
    /// stream threads apart from its garbage collector and compiler).
    pub fn now_split(others: &[(String, u32)], split: &[(String, u32)]) -> Self {
        let mut times = Self::now(others);
        for (prefix, pid) in split {
            times.add_process(*pid, Some(&Prefix(prefix)));
        }
        times
    }

    /// CPU and switches per event, by name, between `earlier` and `self`; names that used
    /// nothing are left out. A thread that exited in between is not there to be read: its CPU
    /// (the process total's growth beyond its live threads') is shown as "exited threads" of
    /// its process (under the process's label for a labelled one); its switches are lost.
    pub fn per_event_since(&self, earlier: &CpuTimes, events: usize) -> Vec<PerEvent> {
        let n = events as f64;
        let mut rows: BTreeMap<String, (f64, u64, u64)> = BTreeMap::new();
        let mut live: BTreeMap<u32, f64> = BTreeMap::new();
        for (&(pid, tid), (name, now)) in &self.threads {
            let before = earlier
                .threads
                .get(&(pid, tid))
                .map(|(_, usage)| *usage)
                .unwrap_or_default();
            let secs = now.secs - before.secs;
            *live.entry(pid).or_default() += secs;
            let row = rows.entry(name.clone()).or_default();
            row.0 += secs;
            row.1 += now.switches.saturating_sub(before.switches);
            row.2 += now.parked.saturating_sub(before.parked);
        }
        for (pid, (name, total)) in &self.processes {
            let before = earlier.processes.get(pid).map_or(0.0, |(_, total)| *total);
            let exited = total - before - live.get(pid).copied().unwrap_or_default();
            rows.entry(name.clone()).or_default().0 += exited.max(0.0);
        }
        rows.into_iter()
            .map(|(name, (secs, switches, parked))| PerEvent {
                name,
                us: secs * 1e6 / n,
                switches: switches as f64 / n,
                parked: parked as f64 / n,
            })
            .filter(|row| row.us >= 0.05)
            .collect()
    }

    fn add_process(&mut self, pid: u32, name: Option<&Name<'_>>) {
        let exited = match name {
            Some(Label(label)) => label.to_string(),
            Some(Prefix(prefix)) => format!("{prefix}exited threads"),
            None => "exited threads".to_string(),
        };
        let root = Path::new("/proc").join(pid.to_string());
        // Read before the threads, so a thread that exits meanwhile is not counted twice.
        let Some(total) = stat_secs(&root.join("stat")) else {
            return;
        };
        self.processes.insert(pid, (exited, total));
        let Ok(entries) = std::fs::read_dir(root.join("task")) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(secs) = parse_secs(&stat) else {
                continue;
            };
            let comm = || {
                stat.split_once('(')
                    .and_then(|(_, rest)| rest.rsplit_once(')'))
                    .map(|(comm, _)| comm.to_string())
                    .unwrap_or_default()
            };
            let row = match name {
                Some(Label(label)) => label.to_string(),
                Some(Prefix(prefix)) => format!("{prefix}{}", comm()),
                None => comm(),
            };
            let (voluntary, involuntary) = switches(&entry.path().join("status"));
            let usage = Usage {
                secs,
                switches: voluntary + involuntary,
                parked: voluntary,
            };
            self.threads.insert((pid, tid), (row, usage));
        }
    }
}

/// The mean per name of several `per_event_since` readings (a name missing from a reading
/// counts as zero there).
pub fn mean(readings: &[Vec<PerEvent>]) -> Vec<PerEvent> {
    let mut sums: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for row in readings.iter().flatten() {
        let sum = sums.entry(&row.name).or_default();
        sum.0 += row.us;
        sum.1 += row.switches;
        sum.2 += row.parked;
    }
    let n = readings.len().max(1) as f64;
    sums.into_iter()
        .map(|(name, (us, switches, parked))| PerEvent {
            name: name.to_string(),
            us: us / n,
            switches: switches / n,
            parked: parked / n,
        })
        .collect()
}

/// Prints `per_event_since` as one indented line per name, then the total: CPU, context
/// switches, and of those the wake-ups (voluntary switches: the thread parked).
pub fn print_per_event(title: &str, rows: &[PerEvent]) {
    println!("  CPU per event, {title}:");
    for row in rows {
        println!(
            "    {:<22} {:>8.1} µs {:>7.2} switches ({:.2} wake-ups)",
            row.name, row.us, row.switches, row.parked
        );
    }
    let total: f64 = rows.iter().map(|row| row.us).sum();
    let switches: f64 = rows.iter().map(|row| row.switches).sum();
    let parked: f64 = rows.iter().map(|row| row.parked).sum();
    println!(
        "    {:<22} {total:>8.1} µs {switches:>7.2} switches ({parked:.2} wake-ups)",
        "total"
    );
}

/// How [`CpuTimes::add_process`] names another process's threads: all under one label, or
/// each by its own name after a prefix.
enum Name<'a> {
    Label(&'a str),
    Prefix(&'a str),
}
use Name::{Label, Prefix};

/// CPU seconds (user + system) of a `stat` file: a thread's, or a whole process's (which
/// includes its exited threads).
fn stat_secs(path: &Path) -> Option<f64> {
    parse_secs(&std::fs::read_to_string(path).ok()?)
}

/// Clock ticks per second of `stat` files: 100 on every Linux this runs on (USER_HZ).
const TICKS: f64 = 100.0;

/// Field `n` (counted from 1, as in proc(5)) of a `stat` file, as ticks.
fn stat_field(stat: &str, n: usize) -> Option<f64> {
    // `pid (comm) state ...`: comm may hold spaces, so split after the last ')', where field
    // 3 (state) starts.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

fn parse_secs(stat: &str) -> Option<f64> {
    // Fields 14 and 15: utime and stime.
    Some((stat_field(stat, 14)? + stat_field(stat, 15)?) / TICKS)
}

/// How long ago process `pid` started, from its `stat` and `/proc/uptime`.
pub fn process_age(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22: starttime, in ticks after boot.
    let started = stat_field(&stat, 22)? / TICKS;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_secs_f64(
        (uptime - started).max(0.0),
    ))
}

/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of a thread's `status` file.
fn switches(status: &Path) -> (u64, u64) {
    let status = std::fs::read_to_string(status).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches"),
        field("nonvoluntary_ctxt_switches"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_process_just_started_is_seconds_old() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let age = process_age(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        let age = age.expect("the child's age");
        assert!(age < Duration::from_secs(60), "{age:?}");
        // Init started before the child did.
        assert!(process_age(1).expect("init's age") >= age);
    }

    #[test]
    fn a_stat_file_gives_cpu_seconds() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 12345 0";
        assert_eq!(parse_secs(stat), Some(4.0));
        assert_eq!(stat_field(stat, 22), Some(12345.0));
        assert!(stat_secs(Path::new("/proc/self/stat")).is_some());
    }
}
