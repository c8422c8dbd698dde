//! CPU time of this process (all its threads: the relays under test run here) and of the whole
//! machine, read from `/proc`, to tell a drain that did more work from one that got less CPU; and
//! how late a sleeping thread wakes up, the machine's own scheduling delay during a latency load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stats::Summary;

/// Clock ticks per second of `/proc` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A reading of both clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// User and system time of this process.
    process: f64,
    /// Busy and idle time of all cores, seconds.
    busy: f64,
    idle: f64,
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// CPU seconds this process used.
    pub process_seconds: f64,
    /// Share of the machine's CPU time that was idle (0 to 1).
    pub machine_idle: f64,
}

impl Reading {
    /// Now; zeros where `/proc` cannot be read.
    pub fn now() -> Self {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                // Fields after the command name (which may hold spaces) in parentheses.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / TICKS_PER_SECOND)
            })
            .unwrap_or(0.0);
        let (busy, idle) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?.strip_prefix("cpu ")?.to_owned();
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .filter_map(|t| t.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal (guest is inside user).
                let idle = ticks.get(3)? + ticks.get(4)?;
                let all: f64 = ticks.iter().take(8).sum();
                Some(((all - idle) / TICKS_PER_SECOND, idle / TICKS_PER_SECOND))
            })
            .unwrap_or((0.0, 0.0));
        Self {
            process,
            busy,
            idle,
        }
    }

    /// What was used since `self`.
    pub fn since(self, earlier: Self) -> Usage {
        let (busy, idle) = (self.busy - earlier.busy, self.idle - earlier.idle);
        Usage {
            process_seconds: self.process - earlier.process,
            machine_idle: if busy + idle > 0.0 {
                idle / (busy + idle)
            } else {
                0.0
            },
        }
    }
}

/// CPU microseconds per message of `usage` over `messages`.
pub fn micros_per_message(usage: Usage, messages: u64) -> f64 {
    usage.process_seconds * 1e6 / messages.max(1) as f64
}

/// Seconds of `usage` as a share of `elapsed`.
pub fn share_of(usage: Usage, elapsed: Duration) -> f64 {
    usage.process_seconds / elapsed.as_secs_f64().max(1e-9)
}

/// A thread that sleeps 1 ms over and over and records how much later than that it woke up: what
/// any process of the machine waits for a core at that moment. Stops when dropped.
pub struct WakeProbe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl WakeProbe {
    /// Starts sampling.
    pub fn start() -> Self {
        const NAP: Duration = Duration::from_millis(1);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                std::thread::sleep(NAP);
                late.push(started.elapsed().saturating_sub(NAP));
            }
            late
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and summarizes the delays.
    pub fn finish(mut self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .map_or_else(Summary::default, Summary::of)
    }
}

impl Drop for WakeProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
