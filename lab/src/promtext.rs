//! A reader for the Prometheus text exposition format, enough for the lab to read what any node
//! proxy reports (ambit or ztunnel): samples with their labels, and the families' types.
//!
//! Invariant: a line that does not parse is skipped, never guessed at; callers compare what was
//! read, so a skipped line shows up as a missing sample, not as a wrong one.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order the exposition wrote them.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample in `text`.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

/// The `# TYPE` of every family declared in `text`, by family name.
pub fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include every `(key, value)` of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| want.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
        parse_labels(body)?
    } else {
        (Vec::new(), rest)
    };
    // A timestamp may follow the value; the value is the first field.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.push((key, value));
        s = &s[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP istio_build Istio component build info.\n\
# TYPE istio_build gauge\n\
istio_build{component=\"ztunnel\",tag=\"1.2\"} 1\n\
# TYPE istio_tcp_connections_opened counter\n\
istio_tcp_connections_opened_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/default/sa/client\",x=\"a\\\"b,c}\"} 3\n\
istio_tcp_connections_opened_total{reporter=\"source\",source_principal=\"unknown\"} 2 1700000000\n\
process_open_fds 12\n\
garbage{unterminated=\"x 1\n\
# EOF\n";

    #[test]
    fn reads_samples_labels_and_types() {
        let s = samples(TEXT);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].label("tag"), Some("1.2"));
        assert_eq!(s[1].label("x"), Some("a\"b,c}"));
        assert_eq!(s[1].value, 3.0);
        assert_eq!(s[2].value, 2.0);
        assert_eq!(s[3].name, "process_open_fds");
        assert!(s[3].labels.is_empty());
        let t = types(TEXT);
        assert_eq!(
            t.get("istio_tcp_connections_opened").map(String::as_str),
            Some("counter")
        );
    }

    #[test]
    fn sums_matching_samples() {
        let s = samples(TEXT);
        assert_eq!(
            sum(&s, "istio_tcp_connections_opened_total", &[]),
            5.0,
            "all samples"
        );
        assert_eq!(
            sum(
                &s,
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination")]
            ),
            3.0
        );
        assert_eq!(
            sum(
                &s,
                "istio_tcp_connections_opened_total",
                &[("reporter", "x")]
            ),
            0.0
        );
    }
}
