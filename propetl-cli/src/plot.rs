//! Figures a reader can put in a paper: axes with readable ticks (integer epochs, log axes
//! labelled 10k / 100k / 1M with 1-2-5 steps when the data spans less than a decade), legends
//! in their own strip clear of the data, mean ± std error bars, and every figure written as a
//! PNG and an SVG side by side.
//!
//! [`draw_metric_vs_storage`] (or the [`StoragePlot`] figure) draws a metric against storage
//! (float32-equivalents, log scale) from `(method, storage, values)` points: one line per
//! method, reference points (unshared baselines, full fine-tuning) as distinct markers.
//! [`SettingPlot`] draws a metric against one swept setting (a keep sweep), the reference runs
//! as dashed horizontal lines.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;

/// DejaVu Sans Mono (free license in `src/fonts/DejaVu-LICENSE.txt`), embedded so that text
/// renders without system fonts. It is registered under the generic family name
/// `sans-serif`: the PNG is rendered (and every figure laid out) with it, and the SVG names
/// the generic family, which every viewer has.
const FONT: &[u8] = include_bytes!("fonts/DejaVuSansMono.ttf");

/// The family every text of a figure uses.
pub const FAMILY: &str = "sans-serif";

/// Tableau 10: distinguishable colours, also in print.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4E, 0x79, 0xA7),
    RGBColor(0xF2, 0x8E, 0x2B),
    RGBColor(0xE1, 0x57, 0x59),
    RGBColor(0x76, 0xB7, 0xB2),
    RGBColor(0x59, 0xA1, 0x4F),
    RGBColor(0xED, 0xC9, 0x48),
    RGBColor(0xB0, 0x7A, 0xA1),
    RGBColor(0xFF, 0x9D, 0xA7),
    RGBColor(0x9C, 0x75, 0x5F),
    RGBColor(0x79, 0x70, 0x6E),
];

/// The `i`-th colour of the palette (cycling).
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Register the embedded font (idempotent).
pub fn register_font() -> Result<()> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("cannot load the embedded font"))
}

// ---------------------------------------------------------------------------------------------
// ticks
// ---------------------------------------------------------------------------------------------

/// `v` rounded to `digits` significant digits.
fn round_sig(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// `x` with at most `decimals` decimals and no trailing zeros (`1.50` → `1.5`, `2.00` → `2`).
fn trim(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// A number with an SI suffix and at most three significant digits: `12_000` → `12k`,
/// `1_500_000` → `1.5M`, `500` → `500`, `0.05` → `0.05`.
pub fn si_label(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let r = round_sig(v, 3);
    let a = r.abs();
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if a >= scale {
            return format!("{}{suffix}", trim(r / scale, 2));
        }
    }
    trim(r, 6)
}

/// Whether `v` lies in `[lo, hi]` up to rounding.
fn within(v: f64, lo: f64, hi: f64) -> bool {
    let eps = 1e-9 * (hi - lo).abs().max(hi.abs()).max(1e-300);
    v >= lo - eps && v <= hi + eps
}

/// Nice linear ticks: multiples of a 1-2-5 step, about `target` of them, inside `[lo, hi]`.
/// Returns the ticks and the step.
fn linear_ticks_n(lo: f64, hi: f64, target: f64) -> (Vec<f64>, f64) {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return (vec![lo], 1.0);
    }
    let raw = (hi - lo) / target;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last)
        .map(|k| round_sig(k as f64 * step, 12))
        .filter(|v| within(*v, lo, hi))
        .collect();
    (ticks, step)
}

/// Integer ticks for `1..=n` (epochs): every integer up to 10, then steps of 2, 5, 10, 20, …
/// so that there are at most 10 ticks.
pub fn integer_ticks(n: usize) -> Vec<f64> {
    let n = n.max(1);
    let mut step = 1usize;
    let mut k = 0;
    while n / step > 10 {
        step = [2, 5, 10][k % 3] * 10usize.pow((k / 3) as u32);
        k += 1;
    }
    let mut ticks: Vec<f64> = (1..=n)
        .filter(|e| *e == 1 || e % step == 0)
        .map(|e| e as f64)
        .collect();
    // with a step above 1, the tick at 1 is kept only when it is not crowded by the next one
    if step > 2 && ticks.len() > 1 && ticks[1] - ticks[0] < step as f64 / 2.0 {
        ticks.remove(1);
    }
    ticks
}

/// Major and minor ticks of a log axis over `[lo, hi]` (both > 0): powers of ten when the
/// range holds at least three of them (every other one, or fewer, when there are more than
/// eight), else 1-2-5 steps (`50k, 100k, 200k`), else a nice linear step (`100k, 150k,
/// 200k`), so that a range narrower than a decade still gets at least three labelled ticks.
pub fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    if lo <= 0.0 || hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return (vec![lo], vec![]);
    }
    let e0 = lo.log10().floor() as i32;
    let e1 = hi.log10().ceil() as i32;
    let in_range = |v: &f64| within(*v, lo, hi);
    let with = |mantissas: &[f64]| -> Vec<f64> {
        (e0..=e1)
            .flat_map(|e| {
                mantissas
                    .iter()
                    .map(move |m| round_sig(m * 10f64.powi(e), 12))
            })
            .filter(in_range)
            .collect()
    };
    let all = with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let minor_of = |major: &[f64]| -> Vec<f64> {
        all.iter()
            .copied()
            .filter(|v| !major.iter().any(|m| (m - v).abs() <= 1e-9 * v))
            .collect()
    };
    let decades = with(&[1.0]);
    if decades.len() >= 3 {
        let every = decades.len().div_ceil(8);
        let major: Vec<f64> = decades.iter().copied().step_by(every).collect();
        let minor = if every == 1 {
            minor_of(&major)
        } else {
            minor_of(&major)
                .into_iter()
                .filter(|v| decades.contains(v))
                .collect()
        };
        return (major, minor);
    }
    let one_two_five = with(&[1.0, 2.0, 5.0]);
    if one_two_five.len() >= 3 {
        let minor = minor_of(&one_two_five);
        return (one_two_five, minor);
    }
    // less than about half a decade: the largest nice linear step with at least three ticks
    let mut target = 2.0;
    loop {
        let (ticks, step) = linear_ticks_n(lo, hi, target);
        if ticks.len() >= 3 || target > 20.0 {
            let (minor, _) = linear_ticks_n(lo, hi, (hi - lo) / (step / 2.0));
            let minor = minor
                .into_iter()
                .filter(|v| !ticks.iter().any(|m| (m - v).abs() <= 1e-9 * v.abs()))
                .collect();
            return (ticks, minor);
        }
        target += 1.0;
    }
}

/// How an axis labels its ticks.
#[derive(Debug, Clone, Copy)]
enum Labels {
    /// SI suffixes (`10k`, `1.5M`).
    Si,
    /// Fixed decimals.
    Decimals(usize),
}

/// A one-dimensional axis with chosen ticks: linear, integer (epochs) or log.
#[derive(Debug, Clone)]
pub struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    major: Vec<f64>,
    minor: Vec<f64>,
    labels: Labels,
}

/// Decimals that show every multiple of `step` exactly (`0.25` → 2, `5` → 0).
fn decimals_for(step: f64) -> usize {
    (0..8)
        .find(|d| {
            let s = step * 10f64.powi(*d);
            (s - s.round()).abs() < 1e-6 * s.abs().max(1.0)
        })
        .unwrap_or(8) as usize
}

impl Axis {
    /// A linear axis over `[lo, hi]` with 1-2-5 ticks.
    pub fn linear(lo: f64, hi: f64) -> Self {
        let (major, step) = linear_ticks_n(lo, hi, 6.0);
        let (minor, _) = linear_ticks_n(lo, hi, (hi - lo) / (step / 2.0));
        Self {
            lo,
            hi,
            log: false,
            minor: minor
                .into_iter()
                .filter(|v| !major.iter().any(|m| (m - v).abs() <= 1e-9 * step))
                .collect(),
            major,
            labels: Labels::Decimals(decimals_for(step)),
        }
    }

    /// An axis for `1..=n` (epochs): integer ticks only, half a unit of room either side.
    pub fn integer(n: usize) -> Self {
        let n = n.max(1);
        Self {
            lo: 0.5,
            hi: n as f64 + 0.5,
            log: false,
            major: integer_ticks(n),
            minor: vec![],
            labels: Labels::Decimals(0),
        }
    }

    /// A log axis over `[lo, hi]` (both > 0) labelled with SI suffixes.
    pub fn log(lo: f64, hi: f64) -> Self {
        let (major, minor) = log_ticks(lo, hi);
        Self {
            lo,
            hi,
            log: true,
            major,
            minor,
            labels: Labels::Si,
        }
    }

    /// A log axis around data in `[min, max]` (both > 0): a margin of a tenth of the span in
    /// log space, at least ×/÷ 1.25, and about a decade around a single value.
    pub fn log_around(min: f64, max: f64) -> Self {
        let (min, max) = (min.max(1e-12), max.max(min.max(1e-12)));
        let span = (max / min).log10();
        let pad = if span < 1e-9 {
            0.5
        } else {
            (0.1 * span).max(1.25f64.log10())
        };
        Self::log(min / 10f64.powf(pad), max * 10f64.powf(pad))
    }

    /// A linear axis around data in `[min, max]` with 5% of room either side (a unit either
    /// side of a single value; `0..1` without finite data).
    pub fn linear_around(min: f64, max: f64) -> Self {
        let (lo, hi) = if !min.is_finite() || !max.is_finite() {
            (0.0, 1.0)
        } else if (max - min).abs() < 1e-9 {
            (min - 1.0, max + 1.0)
        } else {
            (min - 0.05 * (max - min), max + 0.05 * (max - min))
        };
        Self::linear(lo, hi)
    }

    /// The labelled ticks.
    #[cfg(test)]
    pub fn ticks(&self) -> &[f64] {
        &self.major
    }

    /// The label of a tick.
    pub fn label(&self, v: f64) -> String {
        match self.labels {
            Labels::Si => si_label(v),
            Labels::Decimals(d) => {
                let s = format!("{v:.d$}");
                if s.trim_start_matches('-')
                    .chars()
                    .all(|c| c == '0' || c == '.')
                {
                    format!("{:.d$}", 0.0)
                } else {
                    s
                }
            }
        }
    }

    fn frac(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo * 1e-3);
            (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let f = self.frac(*value).clamp(-10.0, 10.0);
        (limit.0 as f64 + f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            let mut all: Vec<f64> = self.major.iter().chain(&self.minor).copied().collect();
            all.sort_by(f64::total_cmp);
            all
        } else {
            self.major.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        self.label(*value)
    }
}

// ---------------------------------------------------------------------------------------------
// statistics
// ---------------------------------------------------------------------------------------------

/// Mean, sample standard deviation (0 for one value) and count of the finite values; `None`
/// without any.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64, usize)> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some((mean, std, n))
}

/// `81.20 ± 1.10` for several values, `81.20` for one, `n/a` for none.
pub fn mean_pm_std(values: &[f64], decimals: usize) -> String {
    match mean_std(values) {
        Some((m, s, n)) if n > 1 => format!("{m:.decimals$} ± {s:.decimals$}"),
        Some((m, _, _)) => format!("{m:.decimals$}"),
        None => "n/a".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// markers and legends
// ---------------------------------------------------------------------------------------------

/// The shape of a point marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Filled circle (methods).
    Circle,
    /// Filled diamond (reference points).
    Diamond,
    /// Filled square (reference points).
    Square,
    /// Filled triangle (reference points).
    Triangle,
    /// Filled downward triangle (reference points).
    TriangleDown,
}

impl Marker {
    /// The markers of reference points, in order.
    pub const REFERENCE: [Marker; 4] = [
        Marker::Diamond,
        Marker::Square,
        Marker::Triangle,
        Marker::TriangleDown,
    ];

    /// The outline of the marker around (0, 0) in pixels, `r` its half-size.
    pub(crate) fn outline(self, r: i32) -> Vec<(i32, i32)> {
        match self {
            Marker::Circle => (0..16)
                .map(|k| {
                    let a = k as f64 * std::f64::consts::TAU / 16.0;
                    (
                        (r as f64 * a.cos()).round() as i32,
                        (r as f64 * a.sin()).round() as i32,
                    )
                })
                .collect(),
            Marker::Diamond => {
                let r = r + r / 3;
                vec![(0, -r), (r, 0), (0, r), (-r, 0)]
            }
            Marker::Square => vec![(-r, -r), (r, -r), (r, r), (-r, r)],
            Marker::Triangle => {
                let r = r + r / 4;
                vec![(0, -r), (r, r * 3 / 4), (-r, r * 3 / 4)]
            }
            Marker::TriangleDown => {
                let r = r + r / 4;
                vec![(0, r), (r, -r * 3 / 4), (-r, -r * 3 / 4)]
            }
        }
    }
}

/// A marker (filled, with a darker edge) at `pos` of a chart or drawing area, `r` pixels in
/// half-size.
macro_rules! marker_element {
    ($marker:expr, $pos:expr, $r:expr, $color:expr) => {{
        let pts = $marker.outline($r);
        let mut closed = pts.clone();
        closed.push(pts[0]);
        ::plotters::element::EmptyElement::at($pos)
            + ::plotters::element::Polygon::new(pts, $color.filled())
            + ::plotters::element::PathElement::new(
                closed,
                $crate::plot::darker($color).stroke_width(1),
            )
    }};
}

pub(crate) use marker_element;

/// The `k`-th shade of a colour: the colour itself, then alternately darker and lighter
/// (configurations of one method in one colour family).
pub fn shade(c: RGBColor, k: usize) -> RGBColor {
    if k == 0 {
        return c;
    }
    let t = (0.3 * k.div_ceil(2) as f64).min(0.75);
    let target = if k % 2 == 1 { 0.0 } else { 255.0 };
    let mix = |v: u8| (v as f64 + (target - v as f64) * t).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// A darker shade of a colour (marker edges).
pub(crate) fn darker(c: RGBColor) -> RGBColor {
    RGBColor(
        (c.0 as f64 * 0.6) as u8,
        (c.1 as f64 * 0.6) as u8,
        (c.2 as f64 * 0.6) as u8,
    )
}

/// One entry of a legend.
#[derive(Debug, Clone)]
pub struct LegendEntry {
    /// The text.
    pub label: String,
    /// Colour of the line and marker.
    pub color: RGBColor,
    /// Marker, if any.
    pub marker: Option<Marker>,
    /// Whether a line sample is drawn.
    pub line: bool,
}

const LEGEND_FONT: u32 = 15;
const LEGEND_ROW: i32 = 22;
const LEGEND_SAMPLE: i32 = 30;
const LEGEND_PAD: i32 = 10;

/// The width in pixels a legend with these entries and notes needs.
pub fn legend_width<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
    notes: &[String],
) -> u32
where
    DB::ErrorType: 'static,
{
    let font = TextStyle::from((FAMILY, LEGEND_FONT).into_font());
    let note_font = TextStyle::from((FAMILY, LEGEND_FONT - 2).into_font());
    let text = |s: &str, f: &TextStyle| {
        area.estimate_text_size(s, f)
            .map(|(w, _)| w)
            .unwrap_or(s.chars().count() as u32 * LEGEND_FONT * 6 / 10)
    };
    let entries_w = entries
        .iter()
        .map(|e| text(&e.label, &font) as i32 + LEGEND_SAMPLE + 8)
        .max()
        .unwrap_or(0);
    let notes_w = notes
        .iter()
        .map(|n| text(n, &note_font) as i32)
        .max()
        .unwrap_or(0);
    (entries_w.max(notes_w) + 3 * LEGEND_PAD) as u32
}

/// Draw a legend in `area` (its own strip, beside the plots it explains) from `top` pixels
/// down: one row per entry, then the notes in a smaller grey font; rows shrink (to half
/// size at most) when there are more than the strip's height holds.
pub fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    top: i32,
    entries: &[LegendEntry],
    notes: &[String],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // many entries: rows (and fonts) shrink so that the legend fits its strip
    let (_, h) = area.dim_in_pixel();
    let lines = entries.len() as f64 + 0.33 + notes.len() as f64 * 0.86;
    let scale = ((h as f64 - top as f64 - 4.0) / (lines * LEGEND_ROW as f64)).clamp(0.5, 1.0);
    let row = (LEGEND_ROW as f64 * scale).round() as i32;
    let size = |s: u32| (s as f64 * scale).round().max(8.0);
    let left_center = text_anchor::Pos::new(text_anchor::HPos::Left, text_anchor::VPos::Center);
    let font = (FAMILY, size(LEGEND_FONT))
        .into_font()
        .color(&BLACK)
        .pos(left_center);
    let note_font = (FAMILY, size(LEGEND_FONT - 2))
        .into_font()
        .color(&RGBColor(90, 90, 90))
        .pos(left_center);
    let x0 = LEGEND_PAD;
    let mut y = top + row / 2;
    for e in entries {
        if e.line {
            area.draw(&PathElement::new(
                vec![(x0, y), (x0 + LEGEND_SAMPLE - 4, y)],
                e.color.stroke_width(2),
            ))?;
        }
        if let Some(m) = e.marker {
            let r = (5.0 * scale).round().max(3.0) as i32;
            area.draw(&marker_element!(
                m,
                (x0 + (LEGEND_SAMPLE - 4) / 2, y),
                r,
                e.color
            ))?;
        }
        area.draw_text(&e.label, &font, (x0 + LEGEND_SAMPLE + 4, y))?;
        y += row;
    }
    y += row / 3;
    for n in notes {
        area.draw_text(n, &note_font, (x0, y))?;
        y += row * 86 / 100;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// figures
// ---------------------------------------------------------------------------------------------

/// A figure that can be drawn on any backend (PNG, SVG).
pub trait Figure {
    /// Size in pixels.
    fn size(&self) -> (u32, u32);
    /// Draw on a white root area of [`Figure::size`].
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Write `figure` as a PNG at `out` (or at `out` with a `.png` extension when `out` ends in
/// `.svg`) and as an SVG next to it. Returns the paths of both.
pub fn save(figure: &impl Figure, out: &Path) -> Result<(PathBuf, PathBuf)> {
    register_font()?;
    let is_svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let png = if is_svg {
        out.with_extension("png")
    } else {
        out.to_path_buf()
    };
    let svg = png.with_extension("svg");
    let size = figure.size();
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok((png, svg))
}

/// One point of a metric-vs-storage plot: the values of one configuration (one per seed).
#[derive(Debug, Clone)]
pub struct StoragePoint {
    /// The method (one line, or one reference marker, per method).
    pub method: String,
    /// Storage in float32-equivalents (> 0; log axis).
    pub storage: f64,
    /// The metric of each seed (non-finite values are ignored).
    pub values: Vec<f64>,
    /// A reference point (unshared baseline, full fine-tuning): a distinct marker, no line.
    pub reference: bool,
    /// A short note written beside the point (`keep=0.1`), if any.
    pub note: Option<String>,
}

/// A metric-vs-storage figure (for [`save`]).
#[derive(Debug, Clone)]
pub struct StoragePlot<'a> {
    /// Caption.
    pub title: &'a str,
    /// The y-axis description.
    pub y_desc: &'a str,
    /// The points.
    pub points: &'a [StoragePoint],
    /// Size in pixels.
    pub size: (u32, u32),
}

impl Figure for StoragePlot<'_> {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_metric_vs_storage(root, self.title, self.y_desc, self.points)
    }
}

/// The methods of `points` in order of first appearance, non-reference methods first, each
/// with whether it is a reference, its colour and its marker (what
/// [`draw_metric_vs_storage`] draws them with: other plots of the same methods can match).
pub fn methods(points: &[StoragePoint]) -> Vec<(String, bool, RGBColor, Marker)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for reference in [false, true] {
        for p in points.iter().filter(|p| p.reference == reference) {
            if !out.iter().any(|(m, _)| *m == p.method) {
                out.push((p.method.clone(), reference));
            }
        }
    }
    let mut refs = 0;
    out.into_iter()
        .enumerate()
        .map(|(i, (m, reference))| {
            let marker = if reference {
                refs += 1;
                Marker::REFERENCE[(refs - 1) % Marker::REFERENCE.len()]
            } else {
                Marker::Circle
            };
            (m, reference, color(i), marker)
        })
        .collect()
}

/// `n=3`, `n=2–3` or nothing (single runs).
pub fn n_note(ns: &[usize]) -> Option<String> {
    let lo = *ns.iter().min()?;
    let hi = *ns.iter().max()?;
    match (lo, hi) {
        (_, 0 | 1) => None,
        (a, b) if a == b => Some(format!("n={a}")),
        (a, b) => Some(format!("n={a}–{b}")),
    }
}

/// Draw a metric against storage (log x axis) on `area`: each point at the mean of its
/// values with a ± std error bar when it has several, one line per method through its points
/// (sorted by storage), reference points as distinct markers without a line, and the legend
/// in a strip on the right, clear of the data.
pub fn draw_metric_vs_storage<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    points: &[StoragePoint],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let stats: Vec<Option<(f64, f64, usize)>> =
        points.iter().map(|p| mean_std(&p.values)).collect();
    let methods = methods(points);
    let entries: Vec<LegendEntry> = methods
        .iter()
        .map(|(m, reference, c, marker)| {
            let ns: Vec<usize> = points
                .iter()
                .zip(&stats)
                .filter(|(p, _)| p.method == *m)
                .filter_map(|(_, s)| s.map(|s| s.2))
                .collect();
            LegendEntry {
                label: match n_note(&ns) {
                    Some(n) => format!("{m}, {n}"),
                    None => m.clone(),
                },
                color: *c,
                marker: Some(*marker),
                line: !reference,
            }
        })
        .collect();
    let mut notes = Vec::new();
    if stats.iter().flatten().any(|s| s.2 > 1) {
        notes.push("mean ± std over seeds".to_string());
    }
    if methods.iter().any(|m| m.1) {
        notes.push("reference points: no line".to_string());
    }
    let (w, _) = area.dim_in_pixel();
    let lw = legend_width(area, &entries, &notes).min(w / 2);
    let (plot_area, legend_area) = area.split_horizontally(w - lw);

    let xs: Vec<f64> = points
        .iter()
        .zip(&stats)
        .filter(|(p, s)| s.is_some() && p.storage.is_finite() && p.storage > 0.0)
        .map(|(p, _)| p.storage)
        .collect();
    let x_axis = if xs.is_empty() {
        Axis::log(1.0, 10.0)
    } else {
        Axis::log_around(
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let (ylo, yhi) = stats
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (m, s, _)| {
            (a.min(m - s), b.max(m + s))
        });
    let y_axis = Axis::linear_around(ylo, yhi);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(x_axis, y_axis)?;
    chart
        .configure_mesh()
        .x_desc("storage (float32-equivalents, log scale)")
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let mut notes_at: Vec<((i32, i32), String)> = Vec::new();
    for (m, reference, c, marker) in &methods {
        let mut pts: Vec<(f64, f64, f64, &StoragePoint)> = points
            .iter()
            .zip(&stats)
            .filter(|(p, _)| p.method == *m && p.storage > 0.0 && p.storage.is_finite())
            .filter_map(|(p, s)| s.map(|(mean, std, _)| (p.storage, mean, std, p)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !reference && pts.len() > 1 {
            chart.draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?;
        }
        for &(x, y, s, _) in &pts {
            draw_error_bar(&mut chart, (x, y, s), *c)?;
        }
        let r = if *reference { 7 } else { 5 };
        for &(x, y, _, _) in &pts {
            chart.draw_series(std::iter::once(marker_element!(marker, (x, y), r, *c)))?;
        }
        for &(x, y, _, p) in &pts {
            if let Some(note) = &p.note {
                notes_at.push((chart.backend_coord(&(x, y)), note.clone()));
            }
        }
    }
    // point notes beside their points, never over one another: up-right, down-right, up-left
    // or down-left of the point, whichever is free first; a note with no free place is left
    // out (the legend still names the method)
    let note_font = TextStyle::from((FAMILY, 12).into_font()).color(&RGBColor(70, 70, 70));
    let (bx, by) = plot_area.get_base_pixel();
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for ((px, py), note) in notes_at {
        let (w, h) = plot_area
            .estimate_text_size(&note, &note_font)
            .map(|(w, h)| (w as i32, h as i32))
            .unwrap_or((note.chars().count() as i32 * 7, 12));
        let spot = [(8, -h - 4), (8, 4), (-8 - w, -h - 4), (-8 - w, 4)]
            .into_iter()
            .map(|(dx, dy)| (px + dx, py + dy, px + dx + w, py + dy + h))
            .find(|b| {
                !placed
                    .iter()
                    .any(|o| b.0 < o.2 && o.0 < b.2 && b.1 < o.3 && o.1 < b.3)
            });
        if let Some(b) = spot {
            plot_area.draw_text(&note, &note_font, (b.0 - bx, b.1 - by))?;
            placed.push(b);
        }
    }
    draw_legend(&legend_area, 50, &entries, &notes)?;
    Ok(())
}

/// One point of a metric-vs-setting plot: a method's values (one per seed) at a value of the
/// swept setting (`keep = 0.1`).
#[derive(Debug, Clone)]
pub struct SettingPoint {
    /// The method (one line per method).
    pub method: String,
    /// The setting's value.
    pub x: f64,
    /// The metric of each seed (non-finite values are ignored).
    pub values: Vec<f64>,
}

/// A metric against one swept setting (linear x axis): one line per method with ± std error
/// bars, and the reference runs (unshared baselines, full fine-tuning), which have no such
/// setting, as dashed horizontal lines at their mean. Drawn for a keep sweep, where every
/// keep of a method has the same storage (a mask costs 1 bit per entry whatever it keeps), so
/// the metric-vs-storage figure collapses each method to a vertical line.
#[derive(Debug, Clone)]
pub struct SettingPlot<'a> {
    /// Caption.
    pub title: &'a str,
    /// The x-axis description (`keep ratio`).
    pub x_desc: &'a str,
    /// The y-axis description.
    pub y_desc: &'a str,
    /// The swept methods' points.
    pub points: &'a [SettingPoint],
    /// Reference runs: (method, values).
    pub references: &'a [(String, Vec<f64>)],
    /// Size in pixels.
    pub size: (u32, u32),
}

/// A vertical ± `s` error bar with caps at `(x, y)`.
fn draw_error_bar<DB: DrawingBackend, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    (x, y, s): (f64, f64, f64),
    c: RGBColor,
) -> Result<()>
where
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    if s <= 0.0 {
        return Ok(());
    }
    let style = c.stroke_width(2);
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(x, y - s), (x, y + s)],
        style,
    )))?;
    for yy in [y - s, y + s] {
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, yy)) + PathElement::new(vec![(-5, 0), (5, 0)], style),
        ))?;
    }
    Ok(())
}

impl Figure for SettingPlot<'_> {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        // the same colours and markers as the storage figure of the same methods
        let as_storage: Vec<StoragePoint> = self
            .points
            .iter()
            .map(|p| (p.method.clone(), false))
            .chain(self.references.iter().map(|(m, _)| (m.clone(), true)))
            .map(|(method, reference)| StoragePoint {
                method,
                storage: 1.0,
                values: Vec::new(),
                reference,
                note: None,
            })
            .collect();
        let methods = methods(&as_storage);
        let stats: Vec<Option<(f64, f64, usize)>> =
            self.points.iter().map(|p| mean_std(&p.values)).collect();
        let ref_stats: Vec<Option<(f64, f64, usize)>> =
            self.references.iter().map(|(_, v)| mean_std(v)).collect();
        let entries: Vec<LegendEntry> = methods
            .iter()
            .map(|(m, reference, c, marker)| {
                let ns: Vec<usize> = if *reference {
                    self.references
                        .iter()
                        .zip(&ref_stats)
                        .filter(|((r, _), _)| r == m)
                        .filter_map(|(_, s)| s.map(|s| s.2))
                        .collect()
                } else {
                    self.points
                        .iter()
                        .zip(&stats)
                        .filter(|(p, _)| p.method == *m)
                        .filter_map(|(_, s)| s.map(|s| s.2))
                        .collect()
                };
                LegendEntry {
                    label: match n_note(&ns) {
                        Some(n) => format!("{m}, {n}"),
                        None => m.clone(),
                    },
                    color: *c,
                    marker: (!reference).then_some(*marker),
                    line: true,
                }
            })
            .collect();
        let mut notes = Vec::new();
        if stats.iter().chain(&ref_stats).flatten().any(|s| s.2 > 1) {
            notes.push("mean ± std over seeds".to_string());
        }
        if !self.references.is_empty() {
            notes.push("dashed: reference runs".to_string());
            notes.push("(no such setting)".to_string());
        }
        let (w, _) = area.dim_in_pixel();
        let lw = legend_width(area, &entries, &notes).min(w / 2);
        let (plot_area, legend_area) = area.split_horizontally(w - lw);
        let xs: Vec<f64> = self
            .points
            .iter()
            .zip(&stats)
            .filter(|(p, s)| s.is_some() && p.x.is_finite())
            .map(|(p, _)| p.x)
            .collect();
        let (xlo, xhi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(*x), b.max(*x))
            });
        let x_axis = if xs.is_empty() {
            Axis::linear(0.0, 1.0)
        } else {
            Axis::linear_around(xlo, xhi)
        };
        let (ylo, yhi) = stats
            .iter()
            .chain(&ref_stats)
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (m, s, _)| {
                (a.min(m - s), b.max(m + s))
            });
        let y_axis = Axis::linear_around(ylo, yhi);
        let (x0, x1) = (x_axis.lo, x_axis.hi);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(self.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(x_axis, y_axis)?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        for (m, reference, c, marker) in &methods {
            if *reference {
                for ((r, _), s) in self.references.iter().zip(&ref_stats) {
                    if r != m {
                        continue;
                    }
                    if let Some((mean, _, _)) = s {
                        chart.draw_series(DashedLineSeries::new(
                            [(x0, *mean), (x1, *mean)],
                            8,
                            5,
                            c.stroke_width(2),
                        ))?;
                    }
                }
                continue;
            }
            let mut pts: Vec<(f64, f64, f64)> = self
                .points
                .iter()
                .zip(&stats)
                .filter(|(p, _)| p.method == *m && p.x.is_finite())
                .filter_map(|(p, s)| s.map(|(mean, std, _)| (p.x, mean, std)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.len() > 1 {
                chart.draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(2),
                ))?;
            }
            for &p in &pts {
                draw_error_bar(&mut chart, p, *c)?;
            }
            for &(x, y, _) in &pts {
                chart.draw_series(std::iter::once(marker_element!(marker, (x, y), 5, *c)))?;
            }
        }
        draw_legend(&legend_area, 50, &entries, &notes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ticks: &[f64]) -> Vec<String> {
        ticks.iter().map(|v| si_label(*v)).collect()
    }

    #[test]
    fn si_labels_are_short_and_exact() {
        assert_eq!(si_label(12_000.0), "12k");
        assert_eq!(si_label(1_500_000.0), "1.5M");
        assert_eq!(si_label(100_000.0), "100k");
        assert_eq!(si_label(1_000.0), "1k");
        assert_eq!(si_label(500.0), "500");
        assert_eq!(si_label(136_000.0), "136k");
        assert_eq!(si_label(1_189_632.0), "1.19M");
        assert_eq!(si_label(999_999.0), "1M");
        assert_eq!(si_label(2.5e9), "2.5G");
        assert_eq!(si_label(0.05), "0.05");
        assert_eq!(si_label(0.0), "0");
    }

    #[test]
    fn log_ticks_of_less_than_a_decade_are_enough_and_readable() {
        let (major, minor) = log_ticks(90_000.0, 210_000.0);
        assert_eq!(labels(&major), ["100k", "150k", "200k"]);
        assert!(minor.iter().all(|v| (90_000.0..=210_000.0).contains(v)));
        // a bit more than half a decade: 1-2-5 steps
        let (major, _) = log_ticks(40_000.0, 600_000.0);
        assert_eq!(labels(&major), ["50k", "100k", "200k", "500k"]);
        // narrow ranges still get three ticks
        let (major, _) = log_ticks(120_000.0, 140_000.0);
        assert!(major.len() >= 3, "{major:?}");
        assert!(major.iter().all(|v| (120_000.0..=140_000.0).contains(v)));
    }

    #[test]
    fn log_ticks_over_decades_are_powers_of_ten() {
        let (major, minor) = log_ticks(5_000.0, 3_000_000.0);
        assert_eq!(labels(&major), ["10k", "100k", "1M"]);
        assert_eq!(si_label(minor[0]), "5k");
        assert!(minor.contains(&2_000_000.0));
        // many decades: at most eight labels
        let (major, _) = log_ticks(1.0, 1e12);
        assert!(major.len() <= 8 && major.len() >= 3, "{major:?}");
        assert_eq!(labels(&major)[..2], ["1", "100"]);
    }

    #[test]
    fn epoch_ticks_are_integers() {
        assert_eq!(integer_ticks(1), [1.0]);
        assert_eq!(integer_ticks(3), [1.0, 2.0, 3.0]);
        assert_eq!(integer_ticks(10).len(), 10);
        let t = integer_ticks(20);
        assert!(t.len() <= 11 && t.iter().all(|v| v.fract() == 0.0), "{t:?}");
        let t = integer_ticks(100);
        assert!(t.len() <= 11 && t.iter().all(|v| v.fract() == 0.0), "{t:?}");
        let a = Axis::integer(3);
        let labels: Vec<String> = a.ticks().iter().map(|v| a.label(*v)).collect();
        assert_eq!(labels, ["1", "2", "3"]);
    }

    #[test]
    fn linear_ticks_are_one_two_five_steps() {
        assert_eq!(
            linear_ticks_n(0.0, 1.0, 6.0).0,
            [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        );
        let a = Axis::linear(48.3, 81.7);
        let labels: Vec<String> = a.ticks().iter().map(|v| a.label(*v)).collect();
        assert_eq!(labels, ["50", "60", "70", "80"]);
        let a = Axis::linear(0.31, 0.52);
        let labels: Vec<String> = a.ticks().iter().map(|v| a.label(*v)).collect();
        assert_eq!(labels, ["0.35", "0.40", "0.45", "0.50"]);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s, n) = mean_std(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((m, n), (2.0, 3));
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), Some((5.0, 0.0, 1)));
        assert_eq!(mean_std(&[f64::NAN]), None);
        assert_eq!(mean_pm_std(&[80.0, 82.0], 2), "81.00 ± 1.41");
        assert_eq!(n_note(&[3, 3]).as_deref(), Some("n=3"));
        assert_eq!(n_note(&[1, 1]), None);
    }
}
