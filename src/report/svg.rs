//! Inline SVG charts, written by hand: a frame with axes and grid, polylines,
//! bars and shaded spans over a time axis. Nothing to load, nothing to run.

use std::fmt::Write;

/// A chart's drawing area: data ranges mapped onto pixels.
pub struct Frame {
    pub width: f64,
    pub height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    /// Seconds from the start of the timeline.
    t1: f64,
    y1: f64,
}

pub const TOP: f64 = 22.0;

impl Frame {
    /// A frame of `width` × `height` pixels, time from 0 to `t1` seconds, values
    /// from 0 to at least `y_max` (rounded up to a tick).
    pub fn new(width: f64, height: f64, t1: f64, y_max: f64) -> Frame {
        let step = nice_step(y_max.max(1e-9), 5);
        let y1 = ((y_max / step).ceil() * step).max(step);
        Frame {
            width,
            height,
            left: 64.0,
            right: 16.0,
            top: TOP,
            bottom: 28.0,
            t1: t1.max(1.0),
            y1,
        }
    }

    pub fn x(&self, t: f64) -> f64 {
        self.left + (t / self.t1).clamp(0.0, 1.0) * (self.width - self.left - self.right)
    }

    pub fn y(&self, v: f64) -> f64 {
        let inner = self.height - self.top - self.bottom;
        self.height - self.bottom - (v / self.y1).clamp(0.0, 1.05) * inner
    }

    pub fn plot_top(&self) -> f64 {
        self.top
    }

    pub fn plot_bottom(&self) -> f64 {
        self.height - self.bottom
    }

    /// Opens the `<svg>` element.
    pub fn open(&self, out: &mut String, label: &str) {
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label}">"#,
            w = self.width,
            h = self.height,
            label = escape(label)
        );
    }

    /// Grid lines and ticks: values on the left (through `fmt`), time below.
    pub fn axes(&self, out: &mut String, fmt: impl Fn(f64) -> String) {
        let step = nice_step(self.y1, 5);
        let mut v = 0.0;
        while v <= self.y1 + step * 1e-6 {
            let y = self.y(v);
            let _ = write!(
                out,
                r##"<line x1="{l}" x2="{r}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{label}</text>"##,
                l = self.left,
                r = self.width - self.right,
                tx = self.left - 6.0,
                ty = y + 4.0,
                label = fmt(v)
            );
            v += step;
        }
        let tstep = time_step(self.t1);
        let mut t = 0.0;
        while t <= self.t1 + 1e-6 {
            let x = self.x(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{b}" y2="{b2}" stroke="#9aa3ad"/><text x="{x:.1}" y="{ty}" class="tick" text-anchor="middle">{label}</text>"##,
                b = self.plot_bottom(),
                b2 = self.plot_bottom() + 4.0,
                ty = self.plot_bottom() + 17.0,
                label = time_label(t)
            );
            t += tstep;
        }
        let _ = write!(
            out,
            r##"<line x1="{l}" x2="{r}" y1="{b}" y2="{b}" stroke="#9aa3ad"/><line x1="{l}" x2="{l}" y1="{t}" y2="{b}" stroke="#9aa3ad"/>"##,
            l = self.left,
            r = self.width - self.right,
            b = self.plot_bottom(),
            t = self.top
        );
    }

    /// A shaded band over the time `from..to`, the plot's full height.
    pub fn span(&self, out: &mut String, from: f64, to: f64, fill: &str) {
        let (x0, x1) = (self.x(from), self.x(to));
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{t}" width="{w:.1}" height="{h}" fill="{fill}"/>"#,
            w = (x1 - x0).max(1.5),
            t = self.top,
            h = self.plot_bottom() - self.top
        );
    }

    /// A bar from 0 to `v` over the time `from..to`.
    pub fn bar(&self, out: &mut String, from: f64, to: f64, v: f64, fill: &str) {
        self.stacked_bar(out, from, to, 0.0, v, fill);
    }

    /// A bar from `base` to `base + v` over the time `from..to`.
    pub fn stacked_bar(&self, out: &mut String, from: f64, to: f64, base: f64, v: f64, fill: &str) {
        if v <= 0.0 {
            return;
        }
        let (x0, x1) = (self.x(from), self.x(to));
        let (y0, y1) = (self.y(base + v), self.y(base));
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#,
            w = (x1 - x0).max(1.0),
            h = (y1 - y0).max(1.0)
        );
    }

    /// A line through `(time, value)` points; each inner list is drawn apart (gaps
    /// between the processes that worked on a run stay gaps).
    pub fn line(&self, out: &mut String, segments: &[Vec<(f64, f64)>], stroke: &str, style: &str) {
        for points in segments.iter().filter(|p| !p.is_empty()) {
            let mut d = String::with_capacity(points.len() * 14);
            for (i, (t, v)) in points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { " L" },
                    self.x(*t),
                    self.y(*v)
                );
            }
            let _ = write!(
                out,
                r#"<path d="{d}" fill="none" stroke="{stroke}" {style} stroke-linejoin="round"/>"#
            );
        }
    }

    /// A horizontal line at `v` across the plot, labelled at its right end.
    pub fn level(&self, out: &mut String, v: f64, stroke: &str, label: &str) {
        let y = self.y(v);
        let _ = write!(
            out,
            r##"<line x1="{l}" x2="{r}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{tx}" y="{ty:.1}" class="note" text-anchor="end" fill="{stroke}">{label}</text>"##,
            l = self.left,
            r = self.width - self.right,
            tx = self.width - self.right - 4.0,
            ty = y - 5.0,
            label = escape(label)
        );
    }
}

/// A round step (1, 2 or 5 × 10^n) that cuts `range` into at most `ticks` parts.
pub fn nice_step(range: f64, ticks: usize) -> f64 {
    let raw = range / ticks.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A step for a time axis of `span` seconds: at most about 10 ticks.
fn time_step(span: f64) -> f64 {
    const STEPS: [f64; 20] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
    ];
    STEPS
        .into_iter()
        .find(|s| span / s <= 10.0)
        .unwrap_or(span / 10.0)
}

/// `0s`, `45s`, `2m`, `2m30s`, `3h`, `3h20m`, `2d4h`.
pub fn time_label(secs: f64) -> String {
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m, s) {
        (0, 0, 0, s) => format!("{s}s"),
        (0, 0, m, 0) => format!("{m}m"),
        (0, 0, m, s) => format!("{m}m{s:02}s"),
        (0, h, 0, _) => format!("{h}h"),
        (0, h, m, _) => format!("{h}h{m:02}m"),
        (d, 0, _, _) => format!("{d}d"),
        (d, h, _, _) => format!("{d}d{h}h"),
    }
}

/// Text made safe for XML and HTML: element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(200.0, 5), 50.0);
        assert_eq!(nice_step(32.0, 5), 10.0);
        assert_eq!(nice_step(7.0, 5), 2.0);
        assert_eq!(time_step(40.0), 5.0);
        assert_eq!(time_step(3600.0), 600.0);
    }

    #[test]
    fn time_labels_read_as_durations() {
        assert_eq!(time_label(0.0), "0s");
        assert_eq!(time_label(90.0), "1m30s");
        assert_eq!(time_label(120.0), "2m");
        assert_eq!(time_label(3600.0 * 3.0 + 1200.0), "3h20m");
        assert_eq!(time_label(86400.0 * 2.0 + 3600.0 * 4.0), "2d4h");
    }
}
