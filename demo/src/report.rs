//! The HTML report: one self-contained file (inline SVG, no script) with the network drawn as a
//! graph (sites, people, tallies and their debt), outstanding debt over time, and the lifts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::sim::chips;

/// Debt and lifts at one moment, `t` seconds after trading began.
#[derive(Clone, Default)]
pub struct Sample {
    pub t: f64,
    pub outstanding: i64,
    pub cleared_local: i64,
    pub cleared_cross: i64,
    pub lifts_local: i64,
    pub lifts_cross: i64,
    pub cleared_round: i64,
    pub lifts_round: i64,
}

/// A tally at the end: `from` owes `to` (people indexes).
pub struct TallyRow {
    pub from: usize,
    pub to: usize,
    pub debt: i64,
}

pub struct LiftRow {
    pub site: String,
    pub kind: String,
    pub status: String,
    pub units: i64,
    pub tallies: i32,
    /// epoch seconds
    pub at: f64,
}

pub struct Report {
    pub sites: Vec<String>,
    /// (site index, name)
    pub people: Vec<(usize, String)>,
    pub tallies: Vec<TallyRow>,
    pub samples: Vec<Sample>,
    pub lifts: Vec<LiftRow>,
    pub started_epoch: f64,
    pub summary: Vec<(String, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where each person is drawn: sites on a circle, each site's people on a small circle.
/// A point; a circle (centre and radius).
type Point = (f64, f64);
type Circle = (f64, f64, f64);

fn layout(r: &Report, w: f64, h: f64) -> (Vec<Point>, Vec<Circle>) {
    let (cx, cy) = (w / 2.0, h / 2.0);
    let n = r.sites.len().max(1) as f64;
    let big = if r.sites.len() > 1 {
        (w.min(h) / 2.0) * 0.58
    } else {
        0.0
    };
    let small = if r.sites.len() > 1 {
        // neighbouring sites do not overlap
        ((w.min(h) / 2.0) * 0.3).min(big * (std::f64::consts::PI / n).sin() * 0.95)
    } else {
        (w.min(h) / 2.0) * 0.75
    };
    let centers: Vec<Circle> = (0..r.sites.len())
        .map(|i| {
            let a = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (cx + big * a.cos(), cy + big * a.sin(), small)
        })
        .collect();
    let mut pos = vec![(0.0, 0.0); r.people.len()];
    for (s, c) in centers.iter().enumerate() {
        let mine: Vec<usize> = (0..r.people.len())
            .filter(|&p| r.people[p].0 == s)
            .collect();
        let m = mine.len().max(1) as f64;
        for (k, &p) in mine.iter().enumerate() {
            let a = std::f64::consts::TAU * k as f64 / m;
            pos[p] = (c.0 + c.2 * 0.8 * a.cos(), c.1 + c.2 * 0.8 * a.sin());
        }
    }
    (pos, centers)
}

fn graph_svg(r: &Report) -> String {
    let (w, h) = (900.0, 760.0);
    let (pos, centers) = layout(r, w, h);
    let max = r.tallies.iter().map(|t| t.debt).max().unwrap_or(0).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>
"##
    );
    for (i, c) in centers.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="{:.1}" fill="#f2f5fa" stroke="#c5d0e0"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="16" font-weight="bold" fill="#567">{}</text>"##,
            c.0,
            c.1,
            c.2,
            c.0,
            c.1 + 5.0,
            esc(&r.sites[i])
        );
    }
    for t in &r.tallies {
        let ((x1, y1), (x2, y2)) = (pos[t.from], pos[t.to]);
        // stop short of the creditor's dot so the arrow shows
        let (dx, dy) = (x2 - x1, y2 - y1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let (ex, ey) = (x2 - dx / len * 9.0, y2 - dy / len * 9.0);
        let cross = r.people[t.from].0 != r.people[t.to].0;
        let color = if cross { "#e67e22" } else { "#3a78c2" };
        let width = if t.debt == 0 {
            0.8
        } else {
            1.0 + 7.0 * (t.debt as f64 / max).sqrt()
        };
        let dash = if t.debt == 0 {
            r#" stroke-dasharray="4 4" opacity="0.5""#
        } else {
            r#" opacity="0.8""#
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{ex:.1}" y2="{ey:.1}" stroke="{color}" stroke-width="{width:.2}"{dash} marker-end="url(#arrow)"><title>{} owes {} {}</title></line>"##,
            esc(&r.people[t.from].1),
            esc(&r.people[t.to].1),
            chips(t.debt)
        );
    }
    for (p, (x, y)) in pos.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="7" fill="#fff" stroke="#333" stroke-width="1.5"><title>{}</title></circle><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#222">{}</text>"##,
            esc(&r.people[p].1),
            y - 11.0,
            esc(&r.people[p].1)
        );
    }
    s.push_str("</svg>");
    s
}

fn chart_svg(samples: &[Sample]) -> String {
    let (w, h, left, bottom, top, right) = (900.0, 320.0, 90.0, 40.0, 15.0, 20.0);
    let tmax = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let ymax = samples
        .iter()
        .map(|s| {
            s.outstanding
                .max(s.cleared_local + s.cleared_cross + s.cleared_round)
        })
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| left + (w - left - right) * t / tmax;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / ymax);
    let line = |f: &dyn Fn(&Sample) -> i64| -> String {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(f(s) as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-size="11">
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#888"/>
"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text><line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            left - 6.0,
            y(v) + 4.0,
            esc(&chips(v as i64)),
            w - right,
            y(v),
            y(v)
        );
        let t = tmax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0} s</text>"##,
            x(t),
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{}"/><polyline fill="none" stroke="#27ae60" stroke-width="2" points="{}"/>"##,
        line(&|s| s.outstanding),
        line(&|s| s.cleared_local + s.cleared_cross + s.cleared_round)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#c0392b">outstanding debt</text><text x="{}" y="{}" fill="#27ae60">cleared by lifts (cumulative)</text></svg>"##,
        left + 10.0,
        top + 12.0,
        left + 10.0,
        top + 26.0
    );
    s
}

/// Writes `dir/index.html`; returns its path.
pub fn write(dir: &Path, r: &Report) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut html = String::from(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>chips demo report</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}th{background:#f4f6f9}
.num{text-align:right;font-variant-numeric:tabular-nums}</style></head><body>
<h1>chips demo report</h1>"#,
    );
    html.push_str("<h2>Summary</h2><table>");
    for (k, v) in &r.summary {
        let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    html.push_str("</table>");
    html.push_str(
        "<h2>The network at the end</h2><p>Each arrow is a tally, from the person who owes to \
         the person owed; its width grows with the debt (dashed: none). Blue: both people on \
         one site; orange: across sites. Hover for names and amounts.</p>",
    );
    html.push_str(&graph_svg(r));
    html.push_str("<h2>Debt over time</h2>");
    html.push_str(&chart_svg(&r.samples));
    let good = r.lifts.iter().filter(|l| l.status == "good").count();
    let _ = write!(
        html,
        "<h2>Lifts</h2><p>{} lifts started, {good} good (local: one site clears a circle of its \
         own tallies; round: a clearing round over the whole federation, one row per site with \
         the tallies it moved there; circular: a circle across sites found by route discovery, \
         listed at the site that started it; linear: a payment to a person on another site \
         through intermediaries). Latest 300:</p>\
         <table><tr><th>at (s)</th><th>site</th><th>kind</th><th>status</th>\
         <th class=num>units</th><th class=num>tallies here</th></tr>",
        r.lifts.len()
    );
    let mut lifts: Vec<&LiftRow> = r.lifts.iter().collect();
    lifts.sort_by(|a, b| b.at.total_cmp(&a.at));
    for l in lifts.iter().take(300) {
        let _ = write!(
            html,
            "<tr><td class=num>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            l.at - r.started_epoch,
            esc(&l.site),
            esc(&l.kind),
            esc(&l.status),
            esc(&chips(l.units)),
            l.tallies
        );
    }
    html.push_str("</table></body></html>\n");
    let path = dir.join("index.html");
    std::fs::write(&path, html)?;
    Ok(path)
}
