//! Per-step cost of a RUN step over the busybox fixture: sandbox start, running
//! `echo N > /fN`, teardown, and writing the layer tar. Prints milliseconds per
//! step (the target is at most 15 ms; BuildKit takes ~300 ms, buildah
//! ~200 ms). Needs root. `cargo bench -p kiln-executor --bench step [-- STEPS]`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_executor::{remove_tree, run, CancelToken, DiffOptions, RunSpec, Snapshotter};
use kiln_testsupport::fixtures::fixtures_dir;

/// A sink that counts bytes, standing in for the store's layer writer.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Totals {
    run: Duration,
    diff: Duration,
    cleanup: Duration,
}

fn main() {
    let steps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let tar = fixtures_dir().join("busybox-amd64.tar");
    if !tar.is_file() {
        eprintln!(
            "missing fixture {}: run scripts/make-fixtures.sh",
            tar.display()
        );
        std::process::exit(1);
    }
    // KILN_BENCH_DIR puts snapshots and scratch dirs elsewhere (e.g. a tmpfs, to
    // separate kiln's own cost from the disk's metadata speed).
    let work = match std::env::var_os("KILN_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir).join("kiln-executor-bench"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/executor-bench"),
    };
    let _ = remove_tree(&work);
    let snapshots = Snapshotter::new(work.join("snapshots")).expect("snapshot dir");
    let lower = snapshots
        .prepare("sha256:bench-busybox-amd64", || File::open(&tar))
        .expect("unpack the fixture");

    let cancel = CancelToken::new();
    let one_step = |i: usize, totals: &mut Totals| {
        let spec = RunSpec {
            lowers: vec![lower.clone()],
            argv: vec!["/bin/sh".into(), "-c".into(), format!("echo {i} > /f{i}")],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            ..RunSpec::default()
        };
        let scratch = work.join(format!("step-{i}"));
        let started = Instant::now();
        let upper = run(&spec, &scratch, &cancel, &mut |_| {}).expect("step runs");
        let ran = Instant::now();
        let mut sink = Counter(0);
        let summary = upper
            .write_layer(
                &mut sink,
                &DiffOptions {
                    source_date_epoch: Some(0),
                    ..DiffOptions::default()
                },
            )
            .expect("layer");
        assert_eq!(summary.entries, 1);
        let diffed = Instant::now();
        remove_tree(&scratch).expect("cleanup");
        let cleaned = Instant::now();
        totals.run += ran - started;
        totals.diff += diffed - ran;
        totals.cleanup += cleaned - diffed;
    };

    let mut warmup = Totals::default();
    for i in 0..5 {
        one_step(i, &mut warmup);
    }
    let mut totals = Totals::default();
    let started = Instant::now();
    for i in 0..steps {
        one_step(i, &mut totals);
    }
    let wall = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    let step = per(totals.run) + per(totals.diff);
    eprintln!(
        "kiln executor, {steps} steps of `RUN echo N > /fN` over busybox in {}:\n  \
         sandbox start + run + teardown {:.2} ms, layer diff {:.2} ms => {step:.2} ms per step (target <= 15 ms)\n  \
         removing the scratch dir {:.2} ms more (can happen off the critical path)",
        work.display(),
        per(totals.run),
        per(totals.diff),
        per(totals.cleanup)
    );
    // What scripts/bench-run.sh reads.
    println!("step_ms {step:.2}");
    println!("cleanup_ms {:.2}", per(totals.cleanup));
    println!("per_step_ms {:.2}", per(wall));
    let _ = remove_tree(&work);
}
