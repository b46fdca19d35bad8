//! Pictures of the benches' figures: each bench hands its measurements to one function
//! here after printing its summary line, and prints the path of the SVG it got back.
//!
//! * [`latency_svg`]: the distribution of round-trip samples (an empirical CDF: for each
//!   time, the share of samples at or below it), one curve per measured party;
//! * [`latency_and_throughput_svg`]: the same, beside throughput against the number of
//!   client processes;
//! * [`workloads_svg`]: one horizontal bar per (workload, party), ops per second.
//!
//! [`bdev_load`] holds what the `bdev` bench and the `load` example share, [`child`] the
//! benches' child processes, [`instance_files`] the check that a runtime left nothing,
//! [`Percentiles`] how every bench sums up its samples, [`sync_sample`] a round-trip
//! sample of the `ipc` and `inproc` benches.
//!
//! Files go to `<target dir>/bench-plots/<bench>.svg`, the target dir being
//! `CARGO_TARGET_DIR` when set, else `chimaera-bench/target`. plotters runs with its SVG
//! backend only (text is measured by its naive font metrics, so no font library or
//! system font is needed): the picture is exactly what the summary line says, drawn; a
//! plot that cannot be written fails the bench after its figures were printed.
pub mod bdev_load;
pub mod child;

/// The files of runtime `instance` in the runtime directory (`/dev/shm/chimaera-{user}`):
/// `{instance}.lock`, `{instance}.sock` and `{instance}@…`. A bench that started a runtime
/// fails if any is left once it stopped.
pub fn instance_files(instance: &str) -> Vec<PathBuf> {
    let (dot, at) = (format!("{instance}."), format!("{instance}@"));
    let Ok(entries) = std::fs::read_dir(chimaera::instance::user_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(&dot) || name.starts_with(&at)
        })
        .map(|entry| entry.path())
        .collect()
}

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// One round-trip sample of the `ipc` and `inproc` benches: `warm` untimed sync calls of
/// an empty MOD_NAME `custom` task, then `calls` timed ones; ns per timed call.
pub fn sync_sample(
    m: &chimaera::mod_name::ModNameClient,
    warm: u32,
    calls: u32,
) -> Result<f64, chimaera::TaskError> {
    use chimaera::PoolQuery;
    for i in 0..warm {
        m.custom(PoolQuery::local(), "", i)?;
    }
    let start = std::time::Instant::now();
    for i in 0..calls {
        let out = m.custom(PoolQuery::local(), "", i)?;
        debug_assert!(out.is_empty());
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(calls))
}

/// The median and the 10th and 90th percentiles of a set of samples (nearest rank on the
/// sorted samples; NaN for none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

impl Percentiles {
    /// Those of `samples`, in any order.
    pub fn of(samples: &[f64]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let last = sorted.len().saturating_sub(1) as f64;
            sorted
                .get((last * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Percentiles {
            p10: at(0.1),
            median: at(0.5),
            p90: at(0.9),
        }
    }

    /// The median of `samples`.
    pub fn median_of(samples: &[f64]) -> f64 {
        Percentiles::of(samples).median
    }
}

/// Why a picture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot create the plot directory {dir}: {source}; set CARGO_TARGET_DIR to a writable directory")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("nothing to plot in {path}: every series is empty")]
    NoData { path: PathBuf },
}

/// Samples of one party, each a time per round trip in nanoseconds.
pub struct Distribution<'a> {
    pub label: &'a str,
    pub samples_ns: &'a [f64],
}

/// One party's figure for each workload of a [`workloads_svg`] picture, ops per second
/// (`None`: not measured in this run, e.g. fio missing).
pub struct Series<'a> {
    pub label: &'a str,
    pub ops_per_s: &'a [Option<f64>],
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 480;
const PALETTE: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Where the picture of bench `name` goes; creates the directory.
pub fn plot_path(name: &str) -> Result<PathBuf, PlotError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench-plots");
    std::fs::create_dir_all(&dir).map_err(|source| PlotError::CreateDir {
        dir: dir.clone(),
        source,
    })?;
    Ok(dir.join(format!("{name}.svg")))
}

/// The latency distributions of `parties` as one picture; returns its path.
pub fn latency_svg(
    name: &str,
    title: &str,
    sample_note: &str,
    parties: &[Distribution<'_>],
) -> Result<PathBuf, PlotError> {
    let path = plot_path(name)?;
    check_not_empty(&path, parties.iter().map(|p| p.samples_ns.len()))?;
    render(&path, (WIDTH / 2 + 100, HEIGHT), |root| {
        draw_cdf(root, title, sample_note, parties)
    })?;
    Ok(path)
}

/// The latency distributions of `parties` beside throughput (tasks/s) against the number
/// of client processes; returns the path.
pub fn latency_and_throughput_svg(
    name: &str,
    title: &str,
    sample_note: &str,
    parties: &[Distribution<'_>],
    tasks_per_s_by_clients: &[(u32, f64)],
) -> Result<PathBuf, PlotError> {
    let path = plot_path(name)?;
    check_not_empty(&path, parties.iter().map(|p| p.samples_ns.len()))?;
    check_not_empty(&path, [tasks_per_s_by_clients.len()])?;
    render(&path, (WIDTH, HEIGHT), |root| {
        let (left, right) = root.split_horizontally(WIDTH * 11 / 20);
        draw_cdf(&left, title, sample_note, parties)?;
        draw_throughput(&right, tasks_per_s_by_clients)
    })?;
    Ok(path)
}

/// Ops per second of each party on each workload, as horizontal bars; returns the path.
pub fn workloads_svg(
    name: &str,
    title: &str,
    workloads: &[&str],
    parties: &[Series<'_>],
) -> Result<PathBuf, PlotError> {
    let path = plot_path(name)?;
    let bars: Vec<(String, usize, f64)> = workloads
        .iter()
        .enumerate()
        .flat_map(|(w, workload)| {
            parties.iter().enumerate().filter_map(move |(p, party)| {
                let ops = party.ops_per_s.get(w).copied().flatten()?;
                Some((format!("{workload} · {}", party.label), p, ops))
            })
        })
        .collect();
    check_not_empty(&path, [bars.len()])?;
    let height = 80 + 26 * bars.len() as u32;
    render(&path, (WIDTH, height.max(240)), |root| {
        let most = bars.iter().map(|b| b.2).fold(0.0, f64::max) * 1.1;
        let count = bars.len() as u32;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(300)
            .build_cartesian_2d(0.0..most.max(1.0), (0..count).into_segmented())?;
        // The y axis counts upwards: the first bar goes at the top.
        let row = |index: usize| count - 1 - index as u32;
        let label_of = |value: &SegmentValue<u32>| match value {
            SegmentValue::CenterOf(i) if *i < count => bars[row(*i as usize) as usize].0.clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len())
            .y_label_formatter(&label_of)
            .x_label_formatter(&|ops| si(*ops))
            .x_desc("operations per second")
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(index, (_, party, ops))| {
            let at = row(index);
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(at)),
                    (*ops, SegmentValue::Exact(at + 1)),
                ],
                PALETTE[party % PALETTE.len()].filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        // Each bar's figure at its end: short bars stay readable beside long ones.
        chart.draw_series(bars.iter().enumerate().map(|(index, (_, _, ops))| {
            Text::new(
                format!(" {}", si(*ops)),
                (*ops, SegmentValue::CenterOf(row(index))),
                TextStyle::from(("sans-serif", 12).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        Ok(())
    })?;
    Ok(path)
}

fn draw_cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    sample_note: &str,
    parties: &[Distribution<'_>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = || parties.iter().flat_map(|p| p.samples_ns.iter().copied());
    let slowest = all().fold(1.0, f64::max);
    let fastest = all().filter(|ns| *ns > 0.0).fold(slowest, f64::min);
    // Logarithmic time, whole decades (so the axis has labels): the floor, our round trip
    // and the peer's differ by factors, and a busy machine's tail would squeeze a linear
    // axis's body into its first tenth.
    let decade_below = 10f64.powf(fastest.log10().floor());
    let decade_above = 10f64.powf(slowest.log10().ceil()).max(decade_below * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((decade_below..decade_above).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|ns| format!("{ns:.0}"))
        .x_desc(format!("ns per round trip, log scale ({sample_note})"))
        .y_desc("share of samples at or below")
        .draw()?;
    for (index, party) in parties.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let mut sorted = party.samples_ns.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let steps = sorted
            .iter()
            .enumerate()
            .flat_map(|(i, &ns)| [(ns, i as f64 / n), (ns, (i + 1) as f64 / n)]);
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(format!(
                "{} (median {:.0} ns)",
                party.label,
                Percentiles::median_of(&sorted)
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

fn draw_throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    tasks_per_s_by_clients: &[(u32, f64)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let most_clients = tasks_per_s_by_clients
        .iter()
        .map(|p| p.0)
        .max()
        .unwrap_or(1);
    let fastest = tasks_per_s_by_clients
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("pipelined throughput", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..f64::from(most_clients) + 0.5, 0.0..fastest * 1.15)?;
    chart
        .configure_mesh()
        .x_labels(most_clients as usize + 1)
        .x_label_formatter(&|clients| format!("{clients:.0}"))
        .y_label_formatter(&|tasks| si(*tasks))
        .x_desc("client processes")
        .y_desc("tasks per second (sum)")
        .draw()?;
    let points: Vec<(f64, f64)> = tasks_per_s_by_clients
        .iter()
        .map(|&(clients, tasks)| (f64::from(clients), tasks))
        .collect();
    let color = PALETTE[0];
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        color.stroke_width(2),
    ))?;
    chart.draw_series(
        points
            .iter()
            .map(|&point| Circle::new(point, 4, color.filled())),
    )?;
    Ok(())
}

fn check_not_empty(path: &Path, lengths: impl IntoIterator<Item = usize>) -> Result<(), PlotError> {
    let mut lengths = lengths.into_iter().peekable();
    if lengths.peek().is_none() || lengths.any(|n| n == 0) {
        return Err(PlotError::NoData {
            path: path.to_owned(),
        });
    }
    Ok(())
}

type SvgArea<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type SvgError = DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>;

/// Draws a white picture of `size` pixels with `paint` and writes it to `path`; an error
/// names the file.
fn render(
    path: &Path,
    size: (u32, u32),
    paint: impl FnOnce(&SvgArea<'_>) -> Result<(), SvgError>,
) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)
        .and_then(|()| paint(&root))
        .and_then(|()| root.present())
        .map_err(|error| PlotError::Draw {
            path: path.to_owned(),
            message: error.to_string(),
        })
}

/// `1234567.0` → `1.23 M`: axis labels a reader takes in at a glance.
fn si(value: f64) -> String {
    match value.abs() {
        v if v >= 1e6 => format!("{:.2} M", value / 1e6),
        v if v >= 1e3 => format!("{:.0} K", value / 1e3),
        _ => format!("{value:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_ranks_of_the_sorted_samples() {
        let samples: Vec<f64> = (0..31).rev().map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p10, p.median, p.p90), (3.0, 15.0, 27.0));
        assert_eq!(Percentiles::median_of(&[5.0, 1.0, 3.0]), 3.0);
        assert!(Percentiles::median_of(&[]).is_nan());
    }

    fn svg(path: &Path) -> String {
        let text = std::fs::read_to_string(path).expect("the picture was written");
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        text
    }

    /// Each picture renders from figures shaped like a bench's, with its labels, into
    /// `CARGO_TARGET_DIR` (set here to a directory of this test's own).
    #[test]
    fn every_picture_renders_with_its_labels() {
        let dir = std::env::temp_dir().join(format!("chimaera-bench-plots-{}", std::process::id()));
        // SAFETY: this is the only test that reads or writes the environment.
        unsafe { std::env::set_var("CARGO_TARGET_DIR", &dir) };
        let ours: Vec<f64> = (0..31).map(|i| 600.0 + f64::from(i)).collect();
        let theirs: Vec<f64> = (0..31).map(|i| 1100.0 + 3.0 * f64::from(i)).collect();
        let parties = [
            Distribution {
                label: "ours",
                samples_ns: &ours,
            },
            Distribution {
                label: "peer",
                samples_ns: &theirs,
            },
        ];

        let path = latency_and_throughput_svg(
            "ipc",
            "round trip",
            "31 samples",
            &parties,
            &[(1, 1.4e6), (2, 1.3e6), (4, 1.2e6)],
        )
        .unwrap();
        assert_eq!(path, dir.join("bench-plots/ipc.svg"));
        let text = svg(&path);
        for label in [
            "ours (median 615 ns)",
            "peer (median 1145 ns)",
            "client processes",
        ] {
            assert!(text.contains(label), "{label} missing");
        }

        let text = svg(&latency_svg("inproc", "in process", "31 samples", &parties[..1]).unwrap());
        assert!(text.contains("ours (median 615 ns)"));

        let text = svg(&workloads_svg(
            "bdev",
            "bdev",
            &["qd1 write", "qd1 read"],
            &[
                Series {
                    label: "ours",
                    ops_per_s: &[Some(15e3), Some(16e3)],
                },
                Series {
                    label: "fio",
                    ops_per_s: &[Some(18e3), None],
                },
            ],
        )
        .unwrap());
        for label in ["qd1 write · ours", "qd1 write · fio", "qd1 read · ours"] {
            assert!(text.contains(label), "{label} missing");
        }
        assert!(
            !text.contains("qd1 read · fio"),
            "an unmeasured bar is left out"
        );

        let empty = latency_svg("empty", "nothing", "no samples", &[]);
        assert!(matches!(empty, Err(PlotError::NoData { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
