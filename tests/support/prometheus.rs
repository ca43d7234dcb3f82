//! A checker for Prometheus text format 0.0.4, as strict as a scraper: every sample line is
//! `name{labels} value` with a valid name, valid label pairs and a float value; every metric
//! has `# HELP` and `# TYPE`; counters end in `_total`; a histogram's `_bucket` samples carry
//! `le`, are cumulative, end with `+Inf`, and agree with its `_count` (histograms without
//! other labels: callme exports no labelled one). Panics with the line at fault.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `name{labels}` exactly as written.
    pub series: String,
    pub name: String,
    /// Label pairs, values still escaped as in the text.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Metric name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The metric a sample belongs to: its own name, or the histogram it is a
    /// `_bucket`/`_sum`/`_count` of.
    pub fn family_of(&self, sample_name: &str) -> String {
        for sfx in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(sfx) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return base.to_string();
                }
            }
        }
        sample_name.to_string()
    }

    /// Label names seen on any sample of `name` (a sample name, e.g. `x_bucket`).
    pub fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.iter().map(|(k, _)| k.clone()))
            .collect()
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// `label="value",...` (values may contain escaped quotes).
fn parse_labels(labels: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (lname, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label=\" expected in {line}"));
        assert!(valid_name(lname), "label name {lname:?} in {line}");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("closing quote missing in {line}"));
        out.push((lname.to_string(), after[..end].to_string()));
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

pub fn parse(text: &str) -> Exposition {
    let mut helped = BTreeSet::new();
    let mut exp = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it.next().unwrap_or("");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {name}");
            }
            assert!(
                exp.types
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "TYPE given twice: {line}"
            );
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value not a float: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("closing brace");
                (name, parse_labels(labels, line))
            }
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "metric name {name:?}");
        exp.samples.push(Sample {
            series: series.to_string(),
            name: name.to_string(),
            labels,
            value,
        });
    }
    for s in &exp.samples {
        let family = exp.family_of(&s.name);
        assert!(helped.contains(&family), "no HELP for {family}");
        assert!(exp.types.contains_key(&family), "no TYPE for {family}");
    }
    for (name, _) in exp.types.iter().filter(|(_, k)| *k == "histogram") {
        check_histogram(&exp, name);
    }
    exp
}

fn check_histogram(exp: &Exposition, name: &str) {
    let bucket = format!("{name}_bucket");
    let mut last_le = f64::NEG_INFINITY;
    let mut last_n = 0.0;
    let mut inf = None;
    for s in exp.samples.iter().filter(|s| s.name == bucket) {
        let le = s
            .labels
            .iter()
            .find(|(k, _)| k == "le")
            .unwrap_or_else(|| panic!("bucket without le: {}", s.series));
        let le: f64 = if le.1 == "+Inf" {
            f64::INFINITY
        } else {
            le.1.parse()
                .unwrap_or_else(|_| panic!("le not a float: {}", s.series))
        };
        assert!(le > last_le, "buckets out of order at {}", s.series);
        assert!(s.value >= last_n, "buckets not cumulative at {}", s.series);
        (last_le, last_n) = (le, s.value);
        if le.is_infinite() {
            inf = Some(s.value);
        }
    }
    let inf = inf.unwrap_or_else(|| panic!("{name} has no +Inf bucket"));
    let one = |sfx: &str| {
        let n = format!("{name}{sfx}");
        let v: Vec<f64> = exp
            .samples
            .iter()
            .filter(|s| s.name == n)
            .map(|s| s.value)
            .collect();
        assert_eq!(v.len(), 1, "{n}: {v:?}");
        v[0]
    };
    assert_eq!(
        one("_count"),
        inf,
        "{name}: _count differs from the +Inf bucket"
    );
    assert!(one("_sum") >= 0.0);
}

/// [`parse`], as (series, value) pairs.
pub fn check(text: &str) -> Vec<(String, f64)> {
    parse(text)
        .samples
        .into_iter()
        .map(|s| (s.series, s.value))
        .collect()
}
