//! Reading the Prometheus text format back: what the dashboard's sampler takes its figures from
//! (the same text a scraper gets, so the two never disagree), and what a test checks the
//! rendering with. A strict reader of the subset Herald writes: `# HELP` and `# TYPE` lines, and
//! samples `name{label="value",...} value` (label values with `\\`, `\"` and `\n` escapes; values
//! as Go's `ParseFloat` spells them, `+Inf`, `-Inf` and `NaN` included).

/// Why a text is not the exposition format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpositionError {
    /// A line that is neither a comment nor a sample.
    #[error("line {line}: {problem}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_bucket`, `_sum` or `_count` for a histogram's lines).
    pub name: String,
    /// Label names and values, as written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Every sample of `text`, checking that comment lines are well formed too.
pub fn parse(text: &str) -> Result<Vec<Sample>, ExpositionError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |problem| ExpositionError::Line {
            line: i + 1,
            problem,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_ascii_whitespace();
            match words.next() {
                Some("HELP") => {
                    let name = words.next().ok_or(bad("HELP without a metric name"))?;
                    if !is_name(name, true) {
                        return Err(bad("HELP of a malformed metric name"));
                    }
                }
                Some("TYPE") => {
                    let name = words.next().ok_or(bad("TYPE without a metric name"))?;
                    let kind = words.next().ok_or(bad("TYPE without a type"))?;
                    if !is_name(name, true) {
                        return Err(bad("TYPE of a malformed metric name"));
                    }
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !kinds.contains(&kind) || words.next().is_some() {
                        return Err(bad(
                            "TYPE is not one of counter, gauge, histogram, summary, untyped",
                        ));
                    }
                }
                _ => {} // any other comment
            }
            continue;
        }
        out.push(sample(line).map_err(bad)?);
    }
    Ok(out)
}

fn sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err("a malformed metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("a label without =")?;
            let key = rest[..eq].trim();
            if !is_name(key, false) {
                return Err("a malformed label name");
            }
            let r = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("a label value not in quotes")?;
            let (value, after) = label_value(r)?;
            labels.push((key.to_owned(), value));
            rest = after.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by commas");
            }
        }
    }
    let mut words = rest.split_ascii_whitespace();
    let value = words.next().ok_or("a sample without a value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "a value that is not a number")?,
    };
    if let Some(ts) = words.next()
        && ts.parse::<i64>().is_err()
    {
        return Err("a timestamp that is not an integer");
    }
    if words.next().is_some() {
        return Err("more than a value and a timestamp");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value after its opening quote: the value unescaped, and what follows its closing quote.
fn label_value(s: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err("a label value with a bad escape"),
            },
            c => value.push(c),
        }
    }
    Err("a label value without its closing quote")
}

/// The value of the sample named `name` whose labels include every one of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

/// The cumulative buckets (`le`, count) of histogram `name` whose labels include `labels`,
/// in increasing `le` (`+Inf` last).
pub fn buckets(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .filter_map(|s| {
            let le = match s.label("le")? {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (0 to 1) of the observations counted by cumulative `buckets`, interpolated
/// linearly inside its bucket as Prometheus's `histogram_quantile` does; `None` without
/// observations. A quantile in the `+Inf` bucket is the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_comments_labels_and_escapes_are_read() {
        let text = "# HELP a_total A thing.\n# TYPE a_total counter\na_total 3\n\n\
                    b{x=\"1\",y=\"q\\\"u\\\\o\\nte\"} -2.5e3\nc_bucket{le=\"+Inf\"} 7 1700000000\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(value(&s, "a_total", &[]), Some(3.0));
        assert_eq!(s[1].label("y"), Some("q\"u\\o\nte"));
        assert_eq!(value(&s, "b", &[("x", "1")]), Some(-2500.0));
        assert_eq!(buckets(&s, "c", &[]), vec![(f64::INFINITY, 7.0)]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, line) in [
            ("ok 1\nbad", 2),
            ("x{a=1} 2", 1),
            ("x{a=\"1\" b=\"2\"} 2", 1),
            ("x two", 1),
            ("9x 1", 1),
            ("# TYPE x countr", 1),
            ("x{a=\"unterminated} 1", 1),
            ("x 1 2 3", 1),
        ] {
            match parse(text) {
                Err(ExpositionError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                Ok(s) => panic!("{text:?} was read as {s:?}"),
            }
        }
    }

    #[test]
    fn quantiles_are_interpolated_inside_their_bucket() {
        let b = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.5, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        let p = quantile(0.7, &b).unwrap();
        assert!((p - 0.15).abs() < 1e-9, "{p}");
        assert_eq!(quantile(0.99, &b).map(|p| (p * 100.0).round()), Some(47.0));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 4.0)]),
            Some(0.1)
        );
    }
}
