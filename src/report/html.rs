//! The report as one HTML page: inline CSS and SVG, no script, nothing fetched,
//! so it opens from disk, in a mail attachment or on a machine without network.
//! Every text from the database (reasons, keys, the selection) is escaped.

use std::fmt::Write;

use super::Report;
use super::svg::{Frame, escape};
use crate::state::RunStatus;
use crate::store::Sample;

const WIDTH: f64 = 1100.0;
const BLUE: &str = "#1f6feb";
const RED: &str = "#d1242f";
const ORANGE: &str = "#e16f24";
const GRAY: &str = "#6e7781";
const PURPLE: &str = "#8250df";
const GREEN: &str = "#1a7f37";
const PAUSE_FILL: &str = "rgba(212,167,44,0.28)";
const OUTAGE_FILL: &str = "rgba(209,36,47,0.16)";

/// `1234567` as `1,234,567`.
pub fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn num(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        int(v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// A sample placed on the time axis: seconds from the timeline's start.
struct Placed<'a> {
    s: &'a Sample,
    start: f64,
    end: f64,
    /// The first sample after a gap (another process resumed the run).
    after_gap: bool,
}

fn place(samples: &[Sample]) -> Vec<Placed<'_>> {
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    let t0 = first.at_ms - first.interval_ms;
    let mut prev_end = f64::NEG_INFINITY;
    samples
        .iter()
        .map(|s| {
            let start = (s.at_ms - s.interval_ms - t0) as f64 / 1000.0;
            let end = (s.at_ms - t0) as f64 / 1000.0;
            let slack = (2.0 * s.interval_ms as f64 / 1000.0).max(2.0);
            let after_gap = prev_end.is_finite() && start > prev_end + slack;
            prev_end = end;
            Placed {
                s,
                start,
                end,
                after_gap,
            }
        })
        .collect()
}

/// Points of one value per sample, split at gaps.
fn segments(
    placed: &[Placed],
    mut value: impl FnMut(&Placed) -> Vec<(f64, f64)>,
) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    for p in placed {
        if p.after_gap || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().expect("pushed").extend(value(p));
    }
    out
}

/// Time spans where `flag` holds, consecutive samples merged.
fn spans(placed: &[Placed], flag: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in placed.iter().filter(|p| flag(p.s)) {
        match out.last_mut() {
            Some(last) if !p.after_gap && p.start <= last.1 + 1e-3 => last.1 = p.end,
            _ => out.push((p.start, p.end)),
        }
    }
    out
}

/// A sample shorter than this (the last one of a process, cut short by its end)
/// holds too few calls for a rate of its own: 16 answers landing in its 122 ms
/// would plot as 131/s. It is folded into the sample before it, over their joint
/// length, for the chart and the header's peak alike, so the two agree.
const SHORTEST_RATE_MS: i64 = 500;

/// Calls answered per second over a stretch of the timeline.
#[derive(Debug, Clone, PartialEq)]
struct RatePoint {
    start: f64,
    end: f64,
    rate: f64,
    after_gap: bool,
}

/// The rate of calls answered, one point per sample, short samples folded into
/// the one before them.
fn rate_points(placed: &[Placed]) -> Vec<RatePoint> {
    let mut out: Vec<(RatePoint, i64)> = Vec::new();
    for p in placed {
        let calls = p.s.calls.total();
        match out.last_mut() {
            Some((last, sum)) if p.s.interval_ms < SHORTEST_RATE_MS && !p.after_gap => {
                last.end = p.end;
                *sum += calls;
            }
            _ => out.push((
                RatePoint {
                    start: p.start,
                    end: p.end,
                    rate: 0.0,
                    after_gap: p.after_gap,
                },
                calls,
            )),
        }
    }
    out.into_iter()
        .map(|(mut point, calls)| {
            point.rate = calls as f64 / (point.end - point.start).max(1e-3);
            point
        })
        .collect()
}

fn status_color(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Complete => GREEN,
        RunStatus::Budget | RunStatus::OutOfCredits | RunStatus::Quota => "#9a6700",
        RunStatus::Outage | RunStatus::Error => RED,
        RunStatus::Running | RunStatus::Planned => BLUE,
        RunStatus::Stopped | RunStatus::Interrupted | RunStatus::Superseded => GRAY,
    }
}

pub fn page(r: &Report) -> String {
    let placed = place(&r.samples);
    let mut h = String::with_capacity(64 * 1024 + r.samples.len() * 200);
    let title = format!("freshen report: run {} of {}", r.run, r.table);
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }}
main {{ max-width: {WIDTH}px; margin: 0 auto; padding: 20px 24px 40px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 16px; margin: 26px 0 6px; }}
.sub {{ color: #59636e; margin: 0 0 14px; }}
.badge {{ display: inline-block; color: #fff; border-radius: 12px; padding: 1px 10px; font-size: 13px; vertical-align: 3px; margin-left: 8px; }}
.cards {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }}
.card {{ background: #fff; border: 1px solid #d1d9e0; border-radius: 8px; padding: 10px 14px; }}
.card .k {{ color: #59636e; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }}
.card .v {{ font-size: 24px; font-weight: 600; }}
.card .d {{ color: #59636e; font-size: 13px; }}
.panel {{ background: #fff; border: 1px solid #d1d9e0; border-radius: 8px; padding: 8px 10px 4px; }}
.legend {{ color: #59636e; font-size: 13px; margin: 0 0 4px 54px; }}
.legend span {{ margin-right: 16px; white-space: nowrap; }}
.sw {{ display: inline-block; width: 14px; height: 10px; margin-right: 5px; vertical-align: 0; border-radius: 2px; }}
.ln {{ display: inline-block; width: 18px; height: 0; margin-right: 5px; vertical-align: 4px; border-top: 2px solid; }}
svg {{ display: block; max-width: 100%; height: auto; }}
svg .tick {{ font-size: 11px; fill: #59636e; }}
svg .note {{ font-size: 11px; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #d1d9e0; }}
th, td {{ text-align: left; padding: 6px 10px; border-bottom: 1px solid #eaeef2; vertical-align: top; }}
th {{ background: #f6f8fa; font-weight: 600; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; width: 70px; }}
td.keys {{ font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; color: #59636e; width: 38%; word-break: break-all; }}
.empty {{ color: #59636e; padding: 12px; }}
footer {{ color: #8c959f; font-size: 12px; margin-top: 24px; }}
</style></head><body><main>
<h1>Run {run} <span style="color:#59636e;font-weight:400">of table <code>{table}</code></span><span class="badge" style="background:{color}">{status}</span></h1>
<p class="sub">Selection: {selection} · created {created} · {ended}</p>
"#,
        title = escape(&title),
        run = r.run,
        table = escape(&r.table),
        color = status_color(r.status),
        status = r.status,
        selection = match &r.selection {
            serde_json::Value::Object(m) if m.is_empty() => "all records".to_owned(),
            v => escape(&v.to_string()),
        },
        created = escape(&r.created_at),
        ended = match &r.finished_at {
            Some(f) => format!("finished {}", escape(f)),
            None => format!("last update {}", escape(&r.updated_at)),
        },
    );
    cards(&mut h, r, &placed);

    h.push_str("<h2>Calls per second</h2>\n");
    if placed.is_empty() {
        h.push_str(
            r#"<div class="panel empty">No timeline was recorded for this run (it ran before freshen kept one, or its samples could not be written).</div>"#,
        );
    } else {
        rate_chart(&mut h, r, &placed);
        h.push_str("<h2>Concurrency</h2>\n");
        concurrency_chart(&mut h, r, &placed);
    }
    h.push_str("<h2>Credits</h2>\n");
    credits_panel(&mut h, r, &placed);
    failures_table(&mut h, r);

    let _ = write!(
        h,
        "<footer>freshen {} · report made {} · {} samples{}</footer>\n</main></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        int(r.samples.len() as i64),
        match placed.iter().filter(|p| p.after_gap).count() {
            0 => String::new(),
            n => format!(" · resumed {n} time{}", if n == 1 { "" } else { "s" }),
        }
    );
    h
}

fn cards(h: &mut String, r: &Report, placed: &[Placed]) {
    let n = &r.records;
    let c = &r.calls.by_outcome;
    let active: f64 = placed.iter().map(|p| p.end - p.start).sum();
    let sampled_calls: i64 = placed.iter().map(|p| p.s.calls.total()).sum();
    let paused: f64 = placed
        .iter()
        .filter(|p| p.s.paused)
        .map(|p| p.end - p.start)
        .sum();
    let outage: f64 = placed
        .iter()
        .filter(|p| p.s.outage)
        .map(|p| p.end - p.start)
        .sum();
    let peak = rate_points(placed)
        .iter()
        .map(|p| p.rate)
        .fold(0.0, f64::max);
    let ceiling = placed.last().map_or(r.limits.rate, |p| p.s.ceiling);
    let pct = |part: i64| {
        if n.total == 0 {
            0.0
        } else {
            part as f64 * 100.0 / n.total as f64
        }
    };
    h.push_str(r#"<div class="cards">"#);
    let _ = write!(
        h,
        r#"<div class="card"><div class="k">Records</div><div class="v">{done} <span style="font-size:14px;color:#59636e">of {total} done</span></div>
<div style="display:flex;height:8px;border-radius:4px;overflow:hidden;background:#eaeef2;margin:4px 0"><div style="width:{pd:.2}%;background:{GREEN}"></div><div style="width:{pf:.2}%;background:{RED}"></div></div>
<div class="d">{failed} failed · {pending} pending</div></div>"#,
        done = int(n.done),
        total = int(n.total),
        failed = int(n.failed),
        pending = int(n.pending),
        pd = pct(n.done),
        pf = pct(n.failed),
    );
    let _ = write!(
        h,
        r#"<div class="card"><div class="k">Calls</div><div class="v">{total}</div><div class="d">{ok} ok · <span style="color:{thr_color}">{thr} throttled</span><br>{tra} transient · {per} permanent</div></div>"#,
        total = int(r.calls.total),
        ok = int(c.ok),
        thr = int(c.throttled),
        thr_color = if c.throttled > 0 { RED } else { "inherit" },
        tra = int(c.transient),
        per = int(c.permanent),
    );
    let _ = write!(
        h,
        r#"<div class="card"><div class="k">Credits</div><div class="v">{spent}</div><div class="d">spent by this run<br>{left} left in period {period}</div></div>"#,
        spent = int(r.credits.spent),
        left = int(r.credits.remaining),
        period = escape(&r.credits.period),
    );
    let mean = if active > 0.0 {
        sampled_calls as f64 / active
    } else {
        0.0
    };
    let _ = write!(
        h,
        r#"<div class="card"><div class="k">Pace</div><div class="v">{mean} <span style="font-size:14px;color:#59636e">calls/s</span></div><div class="d">peak {peak}/s · ceiling {ceiling}/s<br>{active} working · paused {paused} · outage {outage}</div></div>"#,
        mean = num(mean),
        peak = num(peak),
        ceiling = num(ceiling),
        active = super::svg::time_label(active),
        paused = super::svg::time_label(paused),
        outage = super::svg::time_label(outage),
    );
    h.push_str("</div>\n");
}

fn legend(h: &mut String, items: &[(&str, &str, bool)]) {
    h.push_str(r#"<div class="legend">"#);
    for (color, label, is_line) in items {
        if *is_line {
            let _ = write!(
                h,
                r#"<span><i class="ln" style="border-color:{color}"></i>{label}</span>"#
            );
        } else {
            let _ = write!(
                h,
                r#"<span><i class="sw" style="background:{color}"></i>{label}</span>"#
            );
        }
    }
    h.push_str("</div>");
}

fn rate_chart(h: &mut String, r: &Report, placed: &[Placed]) {
    let t1 = placed.last().map_or(1.0, |p| p.end);
    let recorded = placed.iter().map(|p| p.s.ceiling).fold(0.0, f64::max);
    let ceiling = if recorded > 0.0 {
        recorded
    } else {
        r.limits.rate
    };
    let points = rate_points(placed);
    let top = placed
        .iter()
        .map(|p| p.s.paced_rate)
        .chain(points.iter().map(|p| p.rate))
        .fold(ceiling, f64::max);
    let f = Frame::new(WIDTH - 22.0, 280.0, t1, top * 1.05);
    h.push_str(r#"<div class="panel">"#);
    legend(
        h,
        &[
            (BLUE, "calls answered per second", true),
            (GRAY, "pacer's rate", true),
            (RED, "configured ceiling (limits.rate)", true),
            (RED, "throttled (429) per second", false),
            (ORANGE, "transient errors per second", false),
            (PAUSE_FILL, "throttle pause", false),
            (OUTAGE_FILL, "vendor down (breaker open)", false),
        ],
    );
    f.open(h, "calls per second over time");
    for (a, b) in spans(placed, |s| s.outage) {
        f.span(h, a, b, OUTAGE_FILL);
    }
    for (a, b) in spans(placed, |s| s.paused) {
        f.span(h, a, b, PAUSE_FILL);
    }
    f.axes(h, num);
    for p in placed {
        let secs = (p.end - p.start).max(1e-3);
        let thr = p.s.calls.throttled as f64 / secs;
        let tra = p.s.calls.transient as f64 / secs;
        f.bar(h, p.start, p.end, thr, RED);
        f.stacked_bar(h, p.start, p.end, thr, tra, ORANGE);
        if p.s.calls.throttled > 0 {
            // A mark above the plot, so a throttle shows however small its bar.
            let x = f.x((p.start + p.end) / 2.0);
            let y = f.plot_top() - 3.0;
            let _ = write!(
                h,
                r#"<path d="M{:.1},{:.1} l-4,-7 h8 z" fill="{RED}"><title>{} throttled</title></path>"#,
                x, y, p.s.calls.throttled
            );
        }
    }
    if ceiling > 0.0 {
        f.level(h, ceiling, RED, &format!("ceiling {}/s", num(ceiling)));
    }
    let paced = segments(placed, |p| {
        vec![(p.start, p.s.paced_rate), (p.end, p.s.paced_rate)]
    });
    f.line(
        h,
        &paced,
        GRAY,
        r#"stroke-width="1.5" stroke-dasharray="4 3""#,
    );
    let mut rate: Vec<Vec<(f64, f64)>> = Vec::new();
    for p in &points {
        if p.after_gap || rate.is_empty() {
            rate.push(Vec::new());
        }
        let line = rate.last_mut().expect("pushed");
        line.push(((p.start + p.end) / 2.0, p.rate));
    }
    f.line(h, &rate, BLUE, r#"stroke-width="2.2""#);
    h.push_str("</svg></div>\n");
}

fn concurrency_chart(h: &mut String, r: &Report, placed: &[Placed]) {
    let t1 = placed.last().map_or(1.0, |p| p.end);
    let max = f64::from(r.limits.max_concurrency);
    let top = placed
        .iter()
        .map(|p| (p.s.concurrency as f64).max(p.s.in_flight))
        .fold(max, f64::max);
    let f = Frame::new(WIDTH - 22.0, 180.0, t1, top * 1.05);
    h.push_str(r#"<div class="panel">"#);
    legend(
        h,
        &[
            (PURPLE, "concurrency limit", true),
            (GREEN, "calls in flight (mean)", true),
            (GRAY, "limits.max_concurrency", true),
            (OUTAGE_FILL, "vendor down", false),
        ],
    );
    f.open(h, "concurrency over time");
    for (a, b) in spans(placed, |s| s.outage) {
        f.span(h, a, b, OUTAGE_FILL);
    }
    f.axes(h, num);
    f.level(h, max, GRAY, &format!("max {}", num(max)));
    let limit = segments(placed, |p| {
        let c = p.s.concurrency as f64;
        vec![(p.start, c), (p.end, c)]
    });
    f.line(h, &limit, PURPLE, r#"stroke-width="2""#);
    let flight = segments(placed, |p| vec![((p.start + p.end) / 2.0, p.s.in_flight)]);
    f.line(h, &flight, GREEN, r#"stroke-width="1.5""#);
    h.push_str("</svg></div>\n");
}

fn credits_panel(h: &mut String, r: &Report, placed: &[Placed]) {
    let c = &r.credits;
    let reserve = c.reserve;
    let before = (c.period_spent - c.spent).max(0);
    let this = c.spent.min(c.period_spent);
    let free = (c.allowance - reserve - c.period_spent).max(0);
    let reserve_shown = reserve.min((c.allowance - c.period_spent).max(0));
    let total = c.allowance.max(1) as f64;
    let pct = |v: i64| v as f64 * 100.0 / total;
    h.push_str(r#"<div class="panel" style="padding:12px 14px">"#);
    let _ = write!(
        h,
        r#"<div style="margin-bottom:6px">Period from <b>{period}</b>: <b>{spent}</b> of <b>{allowance}</b> credits spent ({share:.1}%), {this} of them by this run; {left} left{reserve_note}.</div>
<div style="display:flex;height:22px;border-radius:4px;overflow:hidden;background:#eaeef2;border:1px solid #d1d9e0">
<div title="spent by other runs" style="width:{p_before:.3}%;background:#8c959f"></div><div title="spent by this run" style="width:{p_this:.3}%;background:{BLUE}"></div><div title="free" style="width:{p_free:.3}%;background:#eaeef2"></div><div title="reserve" style="width:{p_res:.3}%;background:repeating-linear-gradient(45deg,#d4a72c55,#d4a72c55 4px,#fff 4px,#fff 8px)"></div></div>"#,
        period = escape(&c.period),
        spent = int(c.period_spent),
        allowance = int(c.allowance),
        share = c.period_spent as f64 * 100.0 / total,
        this = int(this),
        left = int(c.remaining),
        reserve_note = if reserve > 0 {
            format!(" (credits.reserve keeps {} of them unspent)", int(reserve))
        } else {
            String::new()
        },
        p_before = pct(before),
        p_this = pct(this),
        p_free = pct(free),
        p_res = pct(reserve_shown),
    );
    legend(
        h,
        &[
            ("#8c959f", "spent before or by other runs", false),
            (BLUE, "spent by this run", false),
            ("#eaeef2", "free", false),
            ("#d4a72c", "reserve", false),
        ],
    );
    if !placed.is_empty() {
        let mut total_run = 0i64;
        let cumulative = segments(placed, |p| {
            total_run += p.s.credits;
            vec![(p.end, total_run as f64)]
        });
        // What the period still allowed when the run began, if the run came near it.
        let available = c.allowance - reserve - before;
        let t1 = placed.last().map_or(1.0, |p| p.end);
        let near = available > 0 && (available as f64) <= 1.5 * total_run.max(1) as f64;
        let top = if near {
            available as f64
        } else {
            total_run as f64
        };
        let f = Frame::new(WIDTH - 50.0, 140.0, t1, top.max(1.0) * 1.05);
        h.push_str(r#"<div style="margin-top:8px;color:#59636e;font-size:13px">Credits spent by this run over time</div>"#);
        f.open(h, "credits spent by this run over time");
        f.axes(h, |v| int(v.round() as i64));
        if near {
            f.level(
                h,
                available as f64,
                RED,
                &format!("budget {}", int(available)),
            );
        }
        // Start the line at zero where the run's timeline starts.
        let mut cumulative = cumulative;
        if let (Some(first), Some(p)) = (cumulative.first_mut(), placed.first()) {
            first.insert(0, (p.start, 0.0));
        }
        f.line(h, &cumulative, BLUE, r#"stroke-width="2""#);
        h.push_str("</svg>");
    }
    h.push_str("</div>\n");
}

fn failures_table(h: &mut String, r: &Report) {
    let _ = writeln!(
        h,
        "<h2>Failures <span style=\"color:#59636e;font-weight:400\">({} record{})</span></h2>",
        int(r.records.failed),
        if r.records.failed == 1 { "" } else { "s" }
    );
    if r.failures.is_empty() {
        h.push_str(r#"<div class="panel empty">No record failed.</div>"#);
        return;
    }
    h.push_str("<table><tr><th>Reason</th><th style=\"text-align:right\">Records</th><th>Example keys</th></tr>\n");
    for g in &r.failures {
        let more = if g.count > g.examples.len() as i64 {
            ", …"
        } else {
            ""
        };
        let keys: Vec<String> = g.examples.iter().map(|k| escape(k)).collect();
        let _ = writeln!(
            h,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="keys">{}{more}</td></tr>"#,
            escape(&g.reason),
            int(g.count),
            keys.join(", ")
        );
    }
    let listed: i64 = r.failures.iter().map(|g| g.count).sum();
    if listed < r.records.failed {
        let _ = writeln!(
            h,
            r#"<tr><td colspan="3" style="color:#59636e">and {} more records with other reasons (`freshen report --json` lists the first 50 reasons)</td></tr>"#,
            int(r.records.failed - listed)
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn integers_have_separators() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(-1234567), "-1,234,567");
    }

    #[test]
    fn gaps_split_lines_and_spans_merge() {
        let s = |at_ms, paused| Sample {
            at_ms,
            interval_ms: 1000,
            paused,
            ..Sample::default()
        };
        let samples = [
            s(1000, true),
            s(2000, true),
            s(3000, false),
            s(60_000, true),
        ];
        let placed = place(&samples);
        assert!(!placed[0].after_gap && !placed[1].after_gap);
        assert!(placed[3].after_gap);
        assert_eq!(segments(&placed, |p| vec![(p.end, 0.0)]).len(), 2);
        assert_eq!(spans(&placed, |s| s.paused), vec![(0.0, 2.0), (59.0, 60.0)]);
    }

    #[test]
    fn a_short_last_sample_is_a_rate_over_its_own_length_with_the_one_before() {
        let s = |at_ms, interval_ms, ok| Sample {
            at_ms,
            interval_ms,
            calls: crate::store::CallCounts {
                ok,
                ..Default::default()
            },
            ..Sample::default()
        };
        // The issue's run: 8 calls a second, then 16 answers in a last 122 ms.
        let samples = [s(1000, 1000, 8), s(2000, 1000, 8), s(2122, 122, 16)];
        let placed = place(&samples);
        let points = rate_points(&placed);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].rate, 8.0);
        assert!((points[1].rate - 24.0 / 1.122).abs() < 1e-9, "{points:?}");
        assert_eq!((points[1].start, points[1].end), (1.0, 2.122));
        // The header's peak is the chart's highest point.
        let page = page(&Report {
            samples: samples.to_vec(),
            ..Report::default()
        });
        assert!(
            page.contains("peak 21.4/s"),
            "{}",
            &page[..page.len().min(4000)]
        );
    }
}
