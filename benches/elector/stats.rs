//! Figures and how they are reported: a [`Summary`] (min, p50, p90, p99, max) per figure, the
//! markdown tables printed at the end, and the JSON file beside them.
//!
//! Percentiles are nearest-rank: p99 of 50 samples is the largest one, so with the default
//! repetitions p99 is a pessimistic figure, never an interpolation between samples.

use std::time::Duration;

use serde::Serialize;

/// One figure over its samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Section of the report: `handoff`, `peer`, `crash`, `footprint`, `probe`, `scale`.
    pub scenario: String,
    /// What was measured, e.g. `SIGTERM -> new leader answers 200`.
    pub metric: String,
    /// Parameters that distinguish rows of the same metric, e.g. `candidates=3`.
    pub params: String,
    pub unit: String,
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// What bounds the figure or how it was taken, one line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Summary {
    /// Summarise `samples`. None gives NaN everywhere and `n = 0`: a scenario that produced
    /// nothing still shows up as a row.
    pub fn of(scenario: &str, metric: &str, params: &str, unit: &str, samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let pick = |p: f64| {
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted.get(rank.max(1) - 1).copied().unwrap_or(f64::NAN)
        };
        Summary {
            scenario: scenario.into(),
            metric: metric.into(),
            params: params.into(),
            unit: unit.into(),
            n: sorted.len(),
            min: pick(0.0),
            p50: pick(50.0),
            p90: pick(90.0),
            p99: pick(99.0),
            max: pick(100.0),
            note: String::new(),
        }
    }

    /// For a goal or a comparison rather than a row.
    pub fn bare(samples: &[f64]) -> Self {
        Summary::of("", "", "", "", samples)
    }
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds of a duration, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A goal of issue 5 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Ours against the peer (`etcdctl elect`) for one candidate count.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub candidates: usize,
    pub ours_p50_ms: f64,
    pub peer_p50_ms: f64,
    pub ratio_p50: f64,
    pub ours_p99_ms: f64,
    pub peer_p99_ms: f64,
    pub ratio_p99: f64,
}

/// Everything one run produced.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(serialize_with = "as_object")]
    pub machine: Vec<(&'static str, String)>,
    #[serde(serialize_with = "as_object")]
    pub settings: Vec<(&'static str, String)>,
    pub figures: Vec<Summary>,
    pub comparisons: Vec<Comparison>,
    pub goals: Vec<Goal>,
    /// What went wrong without stopping the run (a replica that exited non-zero, a handoff
    /// that timed out). A clean run has none.
    pub anomalies: Vec<String>,
}

impl Report {
    /// One figure per `(metric, unit, samples, note)` of `scenario` with `params`; an empty
    /// note is none, and `&[value]` is a figure that is one value (binary size, a rate).
    pub fn rows(&mut self, scenario: &str, params: &str, rows: &[(&str, &str, &[f64], &str)]) {
        for (metric, unit, samples, note) in rows {
            let note = note.to_string();
            let s = Summary::of(scenario, metric, params, unit, samples);
            self.figures.push(Summary { note, ..s });
        }
    }

    pub fn anomaly(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("bench: anomaly: {what}");
        self.anomalies.push(what);
    }

    /// The report as markdown: machine, figures, comparison with the peer, goals.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| | |\n|---|---|\n");
        for (k, v) in self.machine.iter().chain(self.settings.iter()) {
            out += &row(&[k, v]);
        }
        out.push('\n');
        out.push_str("| scenario | metric | params | unit | n | min | p50 | p90 | p99 | max |\n");
        out.push_str("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.figures {
            // A figure that is one value shows it as its p50 alone.
            let stats = if s.n == 1 {
                format!("1 | | {} | | |", fmt(s.p50))
            } else {
                let values = [s.min, s.p50, s.p90, s.p99, s.max].map(fmt);
                format!("{} | {}", s.n, values.join(" | "))
            };
            out += &row(&[&s.scenario, &s.metric, &s.params, &s.unit, &stats]);
        }
        if !self.comparisons.is_empty() {
            out.push_str(
                "\nGraceful handoff, SIGTERM to the new leader reporting itself, same run:\n\n",
            );
            out.push_str("| candidates | etcd-elector p50 ms | etcdctl elect p50 ms | ratio p50 | etcd-elector p99 ms | etcdctl elect p99 ms | ratio p99 |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
            for c in &self.comparisons {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.2} | {} | {} | {:.2} |\n",
                    c.candidates,
                    fmt(c.ours_p50_ms),
                    fmt(c.peer_p50_ms),
                    c.ratio_p50,
                    fmt(c.ours_p99_ms),
                    fmt(c.peer_p99_ms),
                    c.ratio_p99
                ));
            }
        }
        if !self.goals.is_empty() {
            out.push_str("\n| goal | target | measured | met |\n|---|---|---|---|\n");
            for g in &self.goals {
                let met = if g.met { "yes" } else { "**no**" };
                out += &row(&[&g.goal, &g.target, &g.measured, met]);
            }
        }
        if !self.anomalies.is_empty() {
            out.push_str("\nAnomalies:\n");
            for a in &self.anomalies {
                out.push_str(&format!("- {a}\n"));
            }
        }
        out
    }
}

/// One row of a markdown table.
fn row(cells: &[&str]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// Name-value pairs as a JSON object (kept as a list in memory for the table's order).
fn as_object<S: serde::Serializer>(pairs: &[(&str, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// Three significant figures, without a forest of decimals on big numbers.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let decimals = match v.abs() {
        a if a >= 1000.0 || a == 0.0 => 0,
        a if a >= 100.0 => 1,
        a if a >= 10.0 => 2,
        a if a >= 1.0 => 3,
        _ => 4,
    };
    format!("{v:.decimals$}")
}
