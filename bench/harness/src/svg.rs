//! The charts, as plain SVG text (no plotting dependency): a grouped bar chart of throughput and
//! a latency-distribution chart (µs on a log axis against percentiles on a "nines" axis, so
//! the tail is as wide as the median). Invariant: the output is a complete, standalone SVG
//! document whatever the data (empty data gives an empty frame, never a NaN coordinate).

use std::fmt::Write;

use crate::report::{LatRow, TputRow};

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac",
];

fn head(title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn legend(s: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 18.0;
        let x = W - RIGHT + 15.0;
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            x + 18.0,
            y,
            esc(n)
        );
    }
}

/// Throughput: one group per stream count, one bar per path (and proxy).
pub fn throughput(rows: &[TputRow]) -> String {
    let mut s = head("Throughput, node 1 → node 2 (iperf3, Gbit/s)");
    let mut series: Vec<String> = Vec::new();
    let mut groups: Vec<u32> = Vec::new();
    for r in rows {
        let name = series_name(r.path.name(), r.proxy.as_deref());
        if !series.contains(&name) {
            series.push(name);
        }
        if !groups.contains(&r.streams) {
            groups.push(r.streams);
        }
    }
    let max = rows.iter().map(|r| r.gbps).fold(0.0, f64::max);
    let top = nice_ceiling(max);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    axis_frame(&mut s, pw, ph);
    for k in 0..=4 {
        let v = top * f64::from(k) / 4.0;
        let y = TOP + ph - ph * v / top;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v:.1}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64 + gw * 0.1;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{g} stream{}</text>"#,
            gx + gw * 0.4,
            TOP + ph + 20.0,
            if *g == 1 { "" } else { "s" }
        );
        for r in rows.iter().filter(|r| r.streams == *g) {
            let name = series_name(r.path.name(), r.proxy.as_deref());
            let si = series.iter().position(|n| *n == name).unwrap_or(0);
            let h = if top > 0.0 { ph * r.gbps / top } else { 0.0 };
            let x = gx + bw * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {:.2}</title></rect><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.1}</text>"#,
                TOP + ph - h,
                bw * 0.9,
                COLORS[si % COLORS.len()],
                esc(&name),
                r.gbps,
                x + bw * 0.45,
                TOP + ph - h - 3.0,
                r.gbps
            );
        }
    }
    legend(&mut s, &series);
    s.push_str("</svg>\n");
    s
}

fn series_name(path: &str, proxy: Option<&str>) -> String {
    match proxy {
        Some(p) => format!("{path} ({p})"),
        None => path.to_string(),
    }
}

fn axis_frame(s: &mut String, pw: f64, ph: f64) {
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// "Nines" of a percentile: 90 → 1, 99 → 2, 99.9 → 3 (100 is drawn at 4.5).
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        4.5
    } else {
        -(1.0 - p / 100.0).log10()
    }
}

/// The latency distribution of one scenario: one line per path.
pub fn latency(scenario: &str, rows: &[&LatRow]) -> String {
    let mut s = head(&format!("Latency distribution: {scenario} (µs, log scale)"));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    axis_frame(&mut s, pw, ph);
    let all = rows.iter().flat_map(|r| r.curve.iter().map(|c| c.1));
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo.is_finite() && lo > 0.0 {
        10f64.powf(lo.log10().floor())
    } else {
        1.0
    };
    let hi = nice_ceiling(hi.max(lo * 10.0));
    let (llo, lhi) = (lo.log10(), hi.log10());
    let y_of = |v: f64| TOP + ph - ph * (v.max(lo).log10() - llo) / (lhi - llo).max(1e-9);
    let x_of = |p: f64| LEFT + pw * nines(p) / 4.5;
    let mut d = lo;
    while d <= hi * 1.0001 {
        let y = y_of(d);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{d}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
        d *= 10.0;
    }
    for (p, label) in [
        (0.0, "p0"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
        (100.0, "max"),
    ] {
        let x = x_of(p);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let mut names = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let pts: Vec<String> = r
            .curve
            .iter()
            .map(|&(p, v)| format!("{:.1},{:.1}", x_of(p), y_of(v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLORS[i % COLORS.len()],
            pts.join(" ")
        );
        names.push(series_name(r.path.name(), r.proxy.as_deref()));
    }
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        let empty = throughput(&[]);
        assert!(empty.starts_with("<svg") && empty.ends_with("</svg>\n"));
        assert!(!latency("x", &[]).contains("NaN"));
    }
}
