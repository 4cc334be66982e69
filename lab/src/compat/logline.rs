//! Istio's log layout, as ztunnel writes it, read back into fields:
//! text `<time>\t<level>\t<scope>\t<message>\tk=v k="v" ...` or one JSON object per line with
//! `time`, `level`, `scope`, `message` and the fields as keys.
//!
//! Invariant: values keep their kind (quoted string, bare number, other bare word), since the
//! kind is part of what tools that read the log rely on.

use serde::{Deserialize, Serialize};

/// How a value was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `"..."` in text, a JSON string.
    String,
    /// A bare number in text, a JSON number.
    Number,
    /// Any other bare word (text) or JSON value.
    Bare,
}

/// One log line, split.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub time: String,
    pub level: String,
    pub scope: String,
    pub message: String,
    /// Fields in written order: key, value (unquoted), kind.
    pub fields: Vec<(String, String, Kind)>,
}

impl LogLine {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }
}

/// Parses a line in either layout; `None` when it is in neither.
pub fn parse(line: &str) -> Option<LogLine> {
    let line = line.trim_end();
    if line.starts_with('{') {
        return parse_json(line);
    }
    let mut parts = line.splitn(5, '\t');
    let time = parts.next()?.to_string();
    let level = parts.next()?.to_string();
    let scope = parts.next()?.to_string();
    let message = parts.next()?.to_string();
    // The time must look like RFC 3339, or this is some other layout that happens to hold tabs.
    if !time.contains('T') || !time.ends_with('Z') {
        return None;
    }
    let fields = parts.next().map(parse_fields).unwrap_or_default();
    Some(LogLine {
        time,
        level,
        scope,
        message,
        fields,
    })
}

fn parse_json(line: &str) -> Option<LogLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let mut fields = Vec::new();
    for (k, v) in obj {
        if matches!(k.as_str(), "time" | "level" | "scope" | "message") {
            continue;
        }
        let (value, kind) = match v {
            serde_json::Value::String(s) => (s.clone(), Kind::String),
            serde_json::Value::Number(n) => (n.to_string(), Kind::Number),
            other => (other.to_string(), Kind::Bare),
        };
        fields.push((k.clone(), value, kind));
    }
    Some(LogLine {
        time: text("time")?,
        level: text("level")?,
        scope: text("scope").unwrap_or_default(),
        message: text("message").unwrap_or_default(),
        fields,
    })
}

/// `k=v k="v w" ...`: a quoted value may hold spaces and `\"` escapes.
fn parse_fields(s: &str) -> Vec<(String, String, Kind)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, kind, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut escaped = false;
            let mut end = q.len();
            for (i, c) in q.char_indices() {
                match (escaped, c) {
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = i + 1;
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            (value, Kind::String, &q[end.min(q.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let word = &after[..end];
            let kind = if word.parse::<f64>().is_ok() {
                Kind::Number
            } else {
                Kind::Bare
            };
            (word.to_string(), kind, &after[end..])
        };
        out.push((key, value, kind));
        rest = remaining.trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_text_layout() {
        let line = "2026-12-04T04:00:00.123456Z\tinfo\taccess\tconnection complete\t\
src.addr=10.0.0.1:4000 src.identity=\"spiffe://cluster.local/ns/a/sa/b\" \
direction=\"inbound\" bytes_sent=12 duration=\"3ms\" error=\"say \\\"no\\\" twice\"";
        let l = parse(line).unwrap();
        assert_eq!(l.level, "info");
        assert_eq!(l.scope, "access");
        assert_eq!(l.message, "connection complete");
        let keys: Vec<_> = l.fields.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "src.addr",
                "src.identity",
                "direction",
                "bytes_sent",
                "duration",
                "error"
            ]
        );
        assert_eq!(l.fields[0].2, Kind::Bare);
        assert_eq!(l.fields[1].2, Kind::String);
        assert_eq!(
            l.fields[3],
            ("bytes_sent".into(), "12".into(), Kind::Number)
        );
        assert_eq!(l.field("error"), Some("say \"no\" twice"));
    }

    #[test]
    fn reads_the_json_layout() {
        let line = r#"{"level":"info","time":"2026-12-04T04:00:00.1Z","scope":"access","message":"connection complete","bytes_sent":12,"direction":"outbound"}"#;
        let l = parse(line).unwrap();
        assert_eq!(l.scope, "access");
        assert_eq!(l.field("direction"), Some("outbound"));
        assert!(
            l.fields
                .contains(&("bytes_sent".into(), "12".into(), Kind::Number))
        );
    }

    #[test]
    fn other_layouts_are_not_guessed() {
        assert_eq!(
            parse("2026-12-04T04:00:00Z  INFO access: connection complete"),
            None
        );
        assert_eq!(parse("{not json"), None);
    }
}
