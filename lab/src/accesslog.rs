//! Reading the node proxies' logs in Istio's layout (what ztunnel writes, and ambit with it):
//! text lines `<time>\t<level>\t<scope>\t<message>\t<key>=<value> ...` with strings quoted and
//! escaped, numbers and addresses bare; or JSON objects (`LOG_FORMAT=json`) with `time`,
//! `level`, `scope`, `message` and the fields as members. Either way a line becomes a
//! [`LogLine`]: the four header parts and the fields in order, values unquoted.
//!
//! [`LogLine::has`] matches the small needle language the tests and the demo select lines with.

use std::fmt;

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    /// Lowercase, as written (`info`, `warn`, ...).
    pub level: String,
    /// The target, with `:span{...}` suffixes in the text layout.
    pub scope: String,
    pub message: String,
    /// `(key, value)` in the order written, quotes removed and escapes resolved.
    pub fields: Vec<(String, String)>,
    /// The line as read.
    pub raw: String,
}

impl LogLine {
    /// Parses a text or JSON line; `None` for a line in neither layout.
    pub fn parse(line: &str) -> Option<LogLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.starts_with('{') {
            parse_json(line)
        } else {
            parse_text(line)
        }
    }

    /// The value of field `key`, if the line has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is an access-log line (scope `access`).
    pub fn is_access(&self) -> bool {
        self.scope == "access"
    }

    /// Whether the line satisfies one needle:
    /// - `key=value`: field `key` is exactly `value`; `key=` only asks that it is there;
    /// - `key^=prefix`, `key*=part`: field `key` starts with / contains the text;
    /// - `!key`: the line has no field `key`;
    /// - anything else: the level (any case), the scope or the message equals it.
    pub fn has(&self, needle: &str) -> bool {
        if let Some(key) = needle.strip_prefix('!') {
            return self.get(key).is_none();
        }
        let Some((key, want)) = needle.split_once('=') else {
            return self.level.eq_ignore_ascii_case(needle)
                || self.scope == needle
                || self.message == needle;
        };
        if let Some(key) = key.strip_suffix('^') {
            return self.get(key).is_some_and(|v| v.starts_with(want));
        }
        if let Some(key) = key.strip_suffix('*') {
            return self.get(key).is_some_and(|v| v.contains(want));
        }
        match self.get(key) {
            Some(v) => want.is_empty() || v == want,
            None => false,
        }
    }

    /// Whether the line satisfies every needle (see [`LogLine::has`]).
    pub fn has_all(&self, needles: &[&str]) -> bool {
        needles.iter().all(|n| self.has(n))
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Every parseable line of `text`.
pub fn lines(text: &str) -> impl Iterator<Item = LogLine> + '_ {
    text.lines().filter_map(LogLine::parse)
}

/// The access-log lines of `text` that satisfy every needle.
pub fn access_lines(text: &str, needles: &[&str]) -> Vec<LogLine> {
    lines(text)
        .filter(|l| l.is_access() && l.has_all(needles))
        .collect()
}

fn parse_text(line: &str) -> Option<LogLine> {
    let mut parts = line.splitn(4, '\t');
    let time = parts.next()?.to_string();
    let level = parts.next()?.to_string();
    let scope = parts.next()?.to_string();
    // `message\tfields`, `message\t` (no fields), `fields` (no message) or nothing at all.
    let rest = parts.next().unwrap_or("");
    let (message, fields) = match rest.split_once('\t') {
        Some((m, f)) => (m.to_string(), f),
        None => (String::new(), rest),
    };
    if time.is_empty() || level.is_empty() || level.contains(' ') {
        return None;
    }
    Some(LogLine {
        time,
        level,
        scope,
        message,
        fields: parse_fields(fields),
        raw: line.to_string(),
    })
}

/// `key=value key="quoted" ...`. A bare value runs to the next ` key=`; a quoted one to its
/// closing quote, with Rust's string escapes resolved.
fn parse_fields(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].to_string();
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            unquote(quoted)
        } else {
            let end = bare_end(after);
            (after[..end].to_string(), &after[end..])
        };
        out.push((key, value));
        rest = tail.trim_start_matches(' ');
    }
    out
}

/// Where a bare value ends: before the first space that starts another `key=`.
fn bare_end(s: &str) -> usize {
    let mut search = 0;
    while let Some(i) = s[search..].find(' ') {
        let at = search + i;
        if starts_key(&s[at + 1..]) {
            return at;
        }
        search = at + 1;
    }
    s.len()
}

fn starts_key(s: &str) -> bool {
    let key_len = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
        .count();
    key_len > 0 && s.as_bytes().get(key_len) == Some(&b'=')
}

/// Reads a `Debug`-escaped string body (after its opening quote); returns it and what follows
/// the closing quote.
fn unquote(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, '0')) => out.push('\0'),
                Some((j, 'u')) => {
                    // \u{XXXX}
                    let body = &s[j + 1..];
                    let close = body.find('}').unwrap_or(0);
                    let hex = body.get(1..close).unwrap_or("");
                    if let Some(ch) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                        out.push(ch);
                    }
                    for _ in 0..=close {
                        chars.next();
                    }
                }
                Some((_, other)) => out.push(other),
                None => {}
            },
            c => out.push(c),
        }
    }
    (out, "")
}

/// A JSON object's members in the order written.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_json(line: &str) -> Option<LogLine> {
    let Members(members) = serde_json::from_str(line).ok()?;
    let mut l = LogLine {
        time: String::new(),
        level: String::new(),
        scope: String::new(),
        message: String::new(),
        fields: Vec::new(),
        raw: line.to_string(),
    };
    for (k, v) in members {
        let text = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        match k.as_str() {
            "time" => l.time = text,
            "level" => l.level = text,
            "scope" => l.scope = text,
            "message" => l.message = text,
            _ => l.fields.push((k, text)),
        }
    }
    (!l.level.is_empty()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "2026-12-04T04:05:06.123456Z\tinfo\taccess\tconnection complete\t\
        src.addr=10.0.1.5:40000 src.workload=\"client\" src.identity=\"spiffe://cluster.local/ns/a/sa/client\" \
        dst.addr=10.0.2.7:15008 dst.hbone_addr=10.0.2.7:8080 direction=\"inbound\" bytes_sent=490 \
        bytes_recv=67 duration=\"13ms\" error=\"a \\\"quoted\\\"\\tthing\"";

    #[test]
    fn text_line_fields_in_order_unquoted() {
        let l = LogLine::parse(TEXT).unwrap();
        assert_eq!(
            (
                l.time.as_str(),
                l.level.as_str(),
                l.scope.as_str(),
                l.message.as_str()
            ),
            (
                "2026-12-04T04:05:06.123456Z",
                "info",
                "access",
                "connection complete"
            )
        );
        let keys: Vec<&str> = l.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "src.addr",
                "src.workload",
                "src.identity",
                "dst.addr",
                "dst.hbone_addr",
                "direction",
                "bytes_sent",
                "bytes_recv",
                "duration",
                "error"
            ]
        );
        assert_eq!(l.get("src.addr"), Some("10.0.1.5:40000"));
        assert_eq!(
            l.get("src.identity"),
            Some("spiffe://cluster.local/ns/a/sa/client")
        );
        assert_eq!(l.get("direction"), Some("inbound"));
        assert_eq!(l.get("bytes_sent"), Some("490"));
        assert_eq!(l.get("error"), Some("a \"quoted\"\tthing"));
        assert!(l.has_all(&[
            "access",
            "INFO",
            "connection complete",
            "direction=inbound",
            "src.identity=",
            "dst.hbone_addr^=10.0.2.7:",
            "error*=quoted",
            "!dst.service"
        ]));
        assert!(!l.has("direction=outbound"));
        assert!(!l.has("dst.service="));
    }

    #[test]
    fn json_line_same_fields() {
        let json = "{\"level\":\"error\",\"time\":\"2026-12-04T04:05:06.123456Z\",\"scope\":\"access\",\
            \"message\":\"connection complete\",\"src.addr\":\"10.0.1.5:40000\",\"direction\":\"outbound\",\
            \"bytes_sent\":67,\"bytes_recv\":490,\"error\":\"refused\"}";
        let l = LogLine::parse(json).unwrap();
        assert_eq!(l.level, "error");
        assert!(l.is_access());
        assert_eq!(
            l.fields,
            [
                ("src.addr".to_string(), "10.0.1.5:40000".to_string()),
                ("direction".into(), "outbound".into()),
                ("bytes_sent".into(), "67".into()),
                ("bytes_recv".into(), "490".into()),
                ("error".into(), "refused".into()),
            ]
        );
    }

    #[test]
    fn message_only_fields_only_and_bare_values_with_spaces() {
        let l = LogLine::parse("T\tinfo\txds\tconnected\t").unwrap();
        assert_eq!((l.message.as_str(), l.fields.len()), ("connected", 0));
        let l =
            LogLine::parse("T\twarn\tproxy\tattempt=2 err=no route to host next=\"x\"").unwrap();
        assert_eq!(l.message, "");
        assert_eq!(l.get("err"), Some("no route to host"));
        assert_eq!(l.get("next"), Some("x"));
        assert!(LogLine::parse("not a log line").is_none());
        let text = format!("{TEXT}\ngarbage\nT\tinfo\tproxy\tlistening\t\n");
        assert_eq!(access_lines(&text, &["direction=inbound"]).len(), 1);
        assert_eq!(lines(&text).count(), 2);
    }
}
