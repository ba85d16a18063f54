//! Results: one row per measured quantity (values per target, one per run), the target checks
//! of issue 5, and their rendering as a markdown table and as JSON.

use crate::targets::Kind;
use crate::util::median;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

pub struct Row {
    /// Stable key, e.g. `W3.rand.cold.t4`; checks refer to rows by it.
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    /// Samples per target, in `Kind::ALL` order.
    pub values: [Vec<f64>; 4],
}

impl Row {
    pub fn median(&self, k: Kind) -> Option<f64> {
        median(&self.values[k.index()])
    }

    /// Speed of a target on this row: the value, or its inverse for times.
    fn speed(&self, k: Kind) -> Option<f64> {
        let m = self.median(k)?;
        match self.better {
            Better::Higher => Some(m),
            Better::Lower if m > 0.0 => Some(1.0 / m),
            Better::Lower => None,
        }
    }

    /// genfs speed over `k`'s speed (above 1: genfs is faster).
    pub fn ratio_to(&self, k: Kind) -> Option<f64> {
        Some(self.speed(Kind::Genfs)? / self.speed(k)?)
    }

    pub fn best_peer(&self) -> Option<Kind> {
        Kind::PEERS
            .into_iter()
            .filter_map(|k| self.speed(k).map(|s| (k, s)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k)
    }

    pub fn ratio_to_best_peer(&self) -> Option<f64> {
        self.ratio_to(self.best_peer()?)
    }
}

pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    /// Machine and run facts, in order (`key`, `value`).
    pub facts: Vec<(String, String)>,
}

impl Report {
    pub fn row_mut(&mut self, key: &str, label: &str, unit: &'static str, better: Better) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.key == key) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            key: key.into(),
            label: label.into(),
            unit,
            better,
            values: Default::default(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Records one sample.
    pub fn add(&mut self, key: &str, label: &str, unit: &'static str, better: Better, k: Kind, v: f64) {
        self.row_mut(key, label, unit, better).values[k.index()].push(v);
    }

    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    pub fn genfs(&self, key: &str) -> Option<f64> {
        self.row(key)?.median(Kind::Genfs)
    }

    pub fn check(&mut self, target: impl Into<String>, measured: impl Into<String>, met: Option<bool>) {
        self.checks.push(Check { target: target.into(), measured: measured.into(), met });
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| workload | unit |");
        for k in Kind::ALL {
            let _ = write!(s, " {} |", k.name());
        }
        s.push_str(" genfs/native | genfs/best peer |\n|---|---|");
        s.push_str(&"---:|".repeat(Kind::ALL.len() + 2));
        s.push('\n');
        for r in &self.rows {
            let arrow = if r.better == Better::Higher { "↑" } else { "↓" };
            let _ = write!(s, "| {} | {} {arrow} |", r.label, r.unit);
            for k in Kind::ALL {
                let _ = write!(s, " {} |", r.median(k).map(fmt_value).unwrap_or_else(|| "—".into()));
            }
            let native = r.ratio_to(Kind::Native).map(fmt_ratio).unwrap_or_else(|| "—".into());
            let peer = match (r.ratio_to_best_peer(), r.best_peer()) {
                (Some(x), Some(p)) => format!("{} ({})", fmt_ratio(x), p.name()),
                _ => "—".into(),
            };
            let _ = writeln!(s, " {native} | {peer} |");
        }
        s
    }

    pub fn checks_markdown(&self) -> String {
        let mut s = String::from("| target | measured | met |\n|---|---|---|\n");
        for c in &self.checks {
            let met = match c.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(s, "| {} | {} | {met} |", c.target, c.measured);
        }
        s
    }

    pub fn facts_markdown(&self) -> String {
        self.facts.iter().map(|(k, v)| format!("- {k}: {v}\n")).collect()
    }

    pub fn json(&self) -> String {
        let mut s = String::from("{\n  \"facts\": {");
        let facts: Vec<String> = self.facts.iter().map(|(k, v)| format!("{}: {}", js(k), js(v))).collect();
        s.push_str(&facts.join(", "));
        s.push_str("},\n  \"rows\": [\n");
        let rows: Vec<String> = self.rows.iter().map(row_json).collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n  ],\n  \"checks\": [\n");
        let checks: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                let met = c.met.map(|b| b.to_string()).unwrap_or_else(|| "null".into());
                format!(
                    "    {{\"target\": {}, \"measured\": {}, \"met\": {met}}}",
                    js(&c.target),
                    js(&c.measured)
                )
            })
            .collect();
        s.push_str(&checks.join(",\n"));
        s.push_str("\n  ]\n}\n");
        s
    }
}

fn row_json(r: &Row) -> String {
    let mut targets = Vec::new();
    for k in Kind::ALL {
        let v = &r.values[k.index()];
        if v.is_empty() {
            continue;
        }
        let samples: Vec<String> = v.iter().map(|x| num(*x)).collect();
        let med = r.median(k).map(num).unwrap_or_else(|| "null".into());
        targets.push(format!(
            "{}: {{\"median\": {med}, \"samples\": [{}]}}",
            js(k.name()),
            samples.join(", ")
        ));
    }
    let opt = |x: Option<f64>| x.map(num).unwrap_or_else(|| "null".into());
    format!(
        "    {{\"key\": {}, \"label\": {}, \"unit\": {}, \"better\": {}, \"targets\": {{{}}}, \
         \"genfs_over_native\": {}, \"genfs_over_best_peer\": {}, \"best_peer\": {}}}",
        js(&r.key),
        js(&r.label),
        js(r.unit),
        js(if r.better == Better::Higher { "higher" } else { "lower" }),
        targets.join(", "),
        opt(r.ratio_to(Kind::Native)),
        opt(r.ratio_to_best_peer()),
        r.best_peer().map(|k| js(k.name())).unwrap_or_else(|| "null".into()),
    )
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "null".into()
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn fmt_value(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        group_thousands(x.round() as i64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn fmt_ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_direction_of_better() {
        let mut r = Report::default();
        for (k, v) in [(Kind::Native, 10.0), (Kind::Bindfs, 4.0), (Kind::Overlay, 5.0), (Kind::Genfs, 8.0)] {
            r.add("a", "rate", "MiB/s", Better::Higher, k, v);
            r.add("b", "time", "s", Better::Lower, k, v);
        }
        let a = r.row("a").unwrap();
        assert_eq!(a.ratio_to(Kind::Native), Some(0.8));
        assert_eq!(a.best_peer(), Some(Kind::Overlay));
        assert_eq!(a.ratio_to_best_peer(), Some(1.6));
        let b = r.row("b").unwrap();
        assert_eq!(b.ratio_to(Kind::Native), Some(1.25));
        assert_eq!(b.best_peer(), Some(Kind::Bindfs));
        assert_eq!(b.ratio_to_best_peer(), Some(0.5));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_value(1234567.0), "1,234,567");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(js("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num(3.0), "3");
    }
}
