//! The targets of issue 5, judged on the rows of one run.

use crate::config::Sizes;
use crate::report::{fmt_ratio, fmt_value, Report};
use crate::targets::Kind;

/// genfs/reference ratio of a row, against native or the best peer.
fn ratio(r: &Report, key: &str, reference: Option<Kind>) -> Option<(f64, String)> {
    let row = r.row(key)?;
    match reference {
        Some(k) => Some((row.ratio_to(k)?, k.name().to_string())),
        None => Some((row.ratio_to_best_peer()?, format!("best peer {}", row.best_peer()?.name()))),
    }
}

fn ratio_check(r: &mut Report, target: &str, key: &str, reference: Option<Kind>, min: f64) {
    match ratio(r, key, reference) {
        Some((x, against)) => r.check(target, format!("{} ({against})", fmt_ratio(x)), Some(x >= min)),
        None => r.check(target, "not measured", None),
    }
}

pub fn judge(r: &mut Report, sizes: &Sizes) {
    let native = Some(Kind::Native);
    ratio_check(r, "W1 write ≥ 0.8 × native (write+fsync)", "W1.write", native, 0.8);
    ratio_check(r, "W2 cold read ≥ 0.8 × native", "W2.cold", native, 0.8);
    ratio_check(r, "W2 warm read ≥ 0.9 × native", "W2.warm", native, 0.9);
    let copy = format!(
        "W2 cp --reflink=auto of the {} file < 50 ms",
        crate::workloads::size_name(sizes.big_file_bytes)
    );
    match r.genfs("W2.copy") {
        Some(ms) => r.check(copy, format!("{} ms", fmt_value(ms)), Some(ms < 50.0)),
        None => r.check(copy, "not measured", None),
    }
    for t in [1, 4] {
        ratio_check(
            r,
            &format!("W3 warm, {t} thread(s) ≥ 0.8 × native"),
            &format!("W3.warm.t{t}"),
            native,
            0.8,
        );
        ratio_check(
            r,
            &format!("W3 cold, {t} thread(s) ≥ 1.0 × best peer"),
            &format!("W3.cold.t{t}"),
            None,
            1.0,
        );
    }
    ratio_check(r, "W4 durable, 1 thread ≥ 1.0 × native safe pattern", "W4.safe.t1", native, 1.0);
    ratio_check(r, "W4 durable, 8 threads ≥ 2.0 × native safe pattern", "W4.safe.t8", native, 2.0);
    for t in [1, 8] {
        let target = format!(
            "W4 {t} thread(s) ≥ 1.0 × best peer without fsync (genfs has no relaxed mode: its durable close)"
        );
        ratio_check(r, &target, &format!("W4.nosync.t{t}"), None, 1.0);
    }
    for op in ["stat", "readdir", "find"] {
        for temp in ["cold", "warm"] {
            let key = format!("W5.{op}.{temp}");
            ratio_check(r, &format!("W5 {op} {temp} ≥ 1.0 × best peer"), &key, None, 1.0);
            ratio_check(r, &format!("W5 {op} {temp} ≥ 0.5 × native"), &key, native, 0.5);
        }
    }
    ratio_check(r, "W6 extract ≥ 1.0 × best peer", "W6.extract", None, 1.0);
    ratio_check(r, "W6 rm -rf ≥ 1.0 × best peer", "W6.rm", None, 1.0);
    judge_versions(r, sizes);
}

fn judge_versions(r: &mut Report, sizes: &Sizes) {
    let stages = &sizes.scale_stages;
    let files = |i: usize| fmt_value(stages[i] as f64);
    match (r.genfs("W7.snapshot.s0"), r.genfs("W7.snapshot.s1")) {
        (Some(a), Some(b)) => {
            let target = format!(
                "W7 snapshot create time independent of tree size (within 2×; {} vs {} files)",
                files(0),
                files(1)
            );
            r.check(
                target,
                format!("{} ms vs {} ms: {}", fmt_value(a), fmt_value(b), fmt_ratio(b / a)),
                Some(b / a <= 2.0),
            );
        }
        _ => r.check("W7 snapshot create time independent of tree size", "not measured", None),
    }
    let g = sizes.log_generations;
    match r.genfs("W7.log.cli") {
        Some(ms) => r.check(
            format!("W7 `genfs log` of {g} generations < 100 ms"),
            format!("{} ms", fmt_value(ms)),
            Some(ms < 100.0),
        ),
        None => r.check("W7 log of 10,000 generations < 100 ms", "not measured", None),
    }
    for temp in ["cold", "warm"] {
        let target = format!("W7 old-generation read ≥ 0.9 × current, {temp}");
        match (r.genfs(&format!("W7.read.old.{temp}")), r.genfs(&format!("W7.read.current.{temp}"))) {
            (Some(old), Some(cur)) => r.check(target, fmt_ratio(old / cur), Some(old / cur >= 0.9)),
            _ => r.check(target, "not measured", None),
        }
    }
    judge_listings(r, sizes);
    let last = stages.len() - 1;
    for p in ["p50", "p99"] {
        let target = format!("W8 commit latency {p} flat within 1.5× ({} → {} files)", files(0), files(last));
        match (r.genfs(&format!("W8.commit.{p}.s0")), r.genfs(&format!("W8.commit.{p}.s{last}"))) {
            (Some(a), Some(b)) => r.check(
                target,
                format!("{} → {} ms: {}", fmt_value(a), fmt_value(b), fmt_ratio(b / a)),
                Some(b / a <= 1.5),
            ),
            _ => r.check(target, "not measured", None),
        }
    }
    for (key, what) in [("W8.mount.clean", "after a clean unmount"), ("W8.mount.recovery", "after kill -9")] {
        let target = format!("W8 mount {what} < 2 s ({} files)", files(last));
        match r.genfs(key) {
            Some(s) => r.check(target, format!("{} s", fmt_value(s)), Some(s < 2.0)),
            None => r.check(target, "not measured", None),
        }
    }
    let rss = ["W8.rss.peak", "W8.rss.mount", "W8.rss.remount"]
        .iter()
        .filter_map(|k| r.genfs(k))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let target = format!("W8 daemon RSS < 300 MiB ({} files; largest of the RSS rows)", files(last));
    match rss {
        Some(mib) => r.check(target, format!("{} MiB", fmt_value(mib)), Some(mib < 300.0)),
        None => r.check(target, "not measured", None),
    }
}

/// W9 (issue 12): linear cost (the whole within 8× the quarter: 4× is linear, 16× quadratic,
/// 8× halfway between on a log scale, so load on the machine does not flip the verdict),
/// and 100,000 entries or generations under 1 s.
fn judge_listings(r: &mut Report, sizes: &Sizes) {
    let rows = [
        ("W9.view", "listing a .genfs/at view", sizes.view_entries, "entries"),
        ("W9.log.cli", "`genfs log`", sizes.view_log_generations, "generations"),
        ("W9.log.pages", "reading every log page", sizes.view_log_generations, "generations"),
    ];
    for (key, what, n, unit) in rows {
        let (quarter, whole) = (r.genfs(&format!("{key}.quarter")), r.genfs(&format!("{key}.whole")));
        let target = format!(
            "W9 {what}: linear ({} → {} {unit} within 8×)",
            fmt_value((n / 4) as f64),
            fmt_value(n as f64)
        );
        match (quarter, whole) {
            (Some(a), Some(b)) if a > 0.0 => r.check(
                target,
                format!("{} → {} ms: {}", fmt_value(a), fmt_value(b), fmt_ratio(b / a)),
                Some(b / a <= 8.0),
            ),
            _ => r.check(target, "not measured", None),
        }
        let target = format!("W9 {what} of {} {unit} < 1 s", fmt_value(n as f64));
        match whole {
            Some(ms) => r.check(target, format!("{} ms", fmt_value(ms)), Some(ms < 1000.0)),
            None => r.check(target, "not measured", None),
        }
    }
}
