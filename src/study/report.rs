//! `oim study report`: the latency–throughput frontier — output tokens/s (x) against TTFT p50
//! (y), one line per candidate through its concurrency levels, winners ringed and named —
//! drawn with plotters' SVG backend, and an HTML page with that SVG inline and the numbers
//! beneath it. Both are self-contained files that open offline.

use plotters::prelude::*;

use super::CandidateResult;
use super::publish::{Rules, Winner, winners};
use crate::profile::oci::enum_str;
use crate::profile::schema::Profile;

/// The chart as an SVG document.
pub fn svg(title: &str, results: &[(&Profile, CandidateResult)], won: &[Winner]) -> Result<String, String> {
    let mut out = String::new();
    draw(&mut out, title, results, won).map_err(|e| format!("cannot draw the chart: {e}"))?;
    Ok(out)
}

fn points(r: &CandidateResult) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> =
        r.bench.levels.iter().filter(|l| l.completed > 0).map(|l| (l.output_tokens_per_sec, l.ttft_ms.p50)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

fn draw(
    out: &mut String,
    title: &str,
    results: &[(&Profile, CandidateResult)],
    won: &[Winner],
) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<(f64, f64)> = results.iter().flat_map(|(_, r)| points(r)).collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::with_string(out, (1000, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("output tokens/s (all devices)")
        .y_desc("TTFT p50 (ms)")
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, (p, r)) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = points(r);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(p.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|pt| Circle::new(*pt, 4, color.filled())))?;
        // Each point names its concurrency.
        let labels: Vec<(f64, f64, u32)> = r
            .bench
            .levels
            .iter()
            .filter(|l| l.completed > 0)
            .map(|l| (l.output_tokens_per_sec, l.ttft_ms.p50, l.concurrency))
            .collect();
        chart.draw_series(
            labels.into_iter().map(|(x, y, c)| Text::new(format!("c={c}"), (x, y), ("sans-serif", 11).into_font())),
        )?;
    }
    for w in won {
        let Some((_, r)) = results.iter().find(|(p, _)| p.name == w.candidate) else { continue };
        let Some(l) = r.bench.levels.iter().find(|l| l.concurrency == w.concurrency) else { continue };
        let at = (l.output_tokens_per_sec, l.ttft_ms.p50);
        let label = format!("{} winner", enum_str(&w.kpi));
        chart.draw_series(std::iter::once(
            EmptyElement::at(at)
                + Circle::new((0, 0), 11, BLACK.stroke_width(2))
                + Text::new(label, (14, -16), ("sans-serif", 14).into_font()),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The HTML page: title, the SVG inline, winners, rules and a row per candidate and level.
pub fn html(title: &str, results: &[(&Profile, CandidateResult)], rules: &Rules) -> Result<String, String> {
    let (won, none) = winners(results, rules);
    let chart = svg(title, results, &won)?;
    let mut h = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>\n<h1>{t}</h1>\n{chart}\n<h2>Winners</h2>\n<ul>\n",
        t = esc(title)
    );
    for w in &won {
        h += &format!(
            "<li class=\"winner\"><b>{}</b>: {} — {}</li>\n",
            enum_str(&w.kpi),
            esc(&w.candidate),
            esc(&w.reason)
        );
    }
    for n in &none {
        h += &format!("<li>{}</li>\n", esc(n));
    }
    h += &format!(
        "</ul>\n<p>Rules: latency needs ≥ {} tokens/s at concurrency 1; throughput counts levels with TTFT p50 ≤ {} ms; quantization: {}.</p>\n",
        rules.throughput_floor,
        rules.ttft_ceiling_ms,
        esc(&rules.quality_note)
    );
    h += "<h2>Measurements</h2>\n<table>\n<tr><th>candidate</th><th>concurrency</th><th>TTFT p50 ms</th><th>TTFT p99 ms</th><th>ITL p50 ms</th><th>E2E p50 ms</th><th>tokens/s</th><th>tokens/s/device</th><th>errors</th></tr>\n";
    for (p, r) in results {
        for l in &r.bench.levels {
            h += &format!(
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>\n",
                esc(&p.name),
                l.concurrency,
                l.ttft_ms.p50,
                l.ttft_ms.p99,
                l.itl_ms.p50,
                l.e2e_ms.p50,
                l.output_tokens_per_sec,
                l.output_tokens_per_sec / f64::from(p.accelerator.count.max(1)),
                l.failed()
            );
        }
    }
    h += "</table>\n</body></html>\n";
    Ok(h)
}
