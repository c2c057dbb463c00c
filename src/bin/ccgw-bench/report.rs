//! Percentiles, the human table and the JSON line.

use serde_json::{Map, Value};

/// Sorted latency samples in nanoseconds.
#[derive(Default, Clone)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn new(mut v: Vec<u64>) -> Samples {
        v.sort_unstable();
        Samples(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn mean_us(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().sum::<u64>() as f64 / self.0.len() as f64 / 1000.0
    }

    /// Nearest-rank percentile (`q` in 0..=1), nanoseconds; 0 when empty.
    pub fn q(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }
}

/// One line of the table.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
    /// The figure has a target but the run could not measure it (the reason is in `measured`).
    pub not_measured: bool,
}

/// A scenario's results: table rows and JSON fields.
pub struct Report {
    pub scenario: &'static str,
    pub rows: Vec<Row>,
    pub json: Map<String, Value>,
    /// Calls or deliveries that were not verified OK.
    pub failures: u64,
    pub failure_examples: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            rows: Vec::new(),
            json: Map::new(),
            failures: 0,
            failure_examples: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// An informational row.
    pub fn info(&mut self, figure: impl Into<String>, measured: impl Into<String>) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: String::new(),
            pass: None,
            not_measured: false,
        });
    }

    /// A row with a target that this run could not measure: printed as such, never as a pass,
    /// and counted in the JSON line's `targets_not_measured`.
    pub fn not_measured(
        &mut self,
        figure: impl Into<String>,
        why: impl std::fmt::Display,
        target: impl Into<String>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: format!("not measured: {why}"),
            target: target.into(),
            pass: None,
            not_measured: true,
        });
    }

    /// A row with a target: `value` must be ≤ `max` (or ≥ when `at_least`).
    pub fn target(
        &mut self,
        figure: impl Into<String>,
        measured: impl Into<String>,
        value: f64,
        limit: f64,
        at_least: bool,
        target: impl Into<String>,
    ) {
        let pass = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
            pass: Some(pass),
            not_measured: false,
        });
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.to_owned(), value.into());
    }

    /// Every target row passed; a target the run could not measure is not met.
    pub fn targets_met(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.pass != Some(false) && !r.not_measured)
    }

    /// Prints the table, then the JSON line.
    pub fn print(&mut self) {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.figure.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.measured.chars().count())
            .max()
            .unwrap_or(8)
            .max(8);
        let w2 = self
            .rows
            .iter()
            .map(|r| r.target.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        println!();
        println!("== ccgw-bench {} ==", self.scenario);
        println!(
            "{:<w0$}  {:>w1$}  {:<w2$}  result",
            "figure", "measured", "target"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 12));
        for r in &self.rows {
            let verdict = match (r.pass, r.not_measured) {
                (_, true) => "NOT MEASURED",
                (Some(true), _) => "pass",
                (Some(false), _) => "FAIL",
                (None, _) => "",
            };
            println!(
                "{:<w0$}  {:>w1$}  {:<w2$}  {verdict}",
                r.figure, r.measured, r.target
            );
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        if self.failures > 0 {
            println!("FAILED CALLS: {}", self.failures);
            for e in &self.failure_examples {
                println!("  e.g. {e}");
            }
        }
        let mut line = Map::new();
        line.insert("scenario".into(), self.scenario.into());
        line.insert("failures".into(), self.failures.into());
        line.insert("targets_met".into(), self.targets_met().into());
        let not_measured = self.rows.iter().filter(|r| r.not_measured).count();
        line.insert("targets_not_measured".into(), not_measured.into());
        line.append(&mut self.json.clone());
        println!("{}", Value::Object(line));
    }
}

/// Microseconds with one decimal from nanoseconds.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// Signed difference in microseconds.
pub fn us_diff(a: u64, b: u64) -> f64 {
    ((a as f64 - b as f64) / 100.0).round() / 10.0
}

/// Rounds to `d` decimals.
/// KiB as MiB, one decimal.
pub fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

pub fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

/// Collects failures with a few examples.
#[derive(Default)]
pub struct Failures {
    pub count: std::sync::atomic::AtomicU64,
    pub examples: std::sync::Mutex<Vec<String>>,
}

impl Failures {
    pub fn record(&self, what: String) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ex = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if ex.len() < 5 {
            ex.push(what);
        }
    }

    pub fn add_to(&self, report: &mut Report) {
        report.failures += self.count.load(std::sync::atomic::Ordering::Relaxed);
        report.failure_examples.extend(
            self.examples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
    }
}
