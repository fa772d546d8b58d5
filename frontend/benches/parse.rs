//! Parse + compile of a generated 10,000-instruction Dockerfile (target: < 20 ms),
//! and how parse time scales: each input at 1x, 10x and 100x its size, so
//! linear growth shows as a constant throughput (elements/s) across sizes.
//! (Timing lives here, never in pass/fail tests.) For counts that do not
//! depend on machine load, run `examples/parse_compile_once.rs` (the same
//! input) under `valgrind --tool=callgrind`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_frontend::{compile, parse, CompileOptions, NoImages};

// The allocator the kiln binary runs the frontend with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kiln_testsupport::dockerfiles::{
    continuation_file, generate, heredoc_file, heredoc_markers_file,
};

fn options() -> CompileOptions {
    CompileOptions {
        target_platform: "linux/amd64".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    }
}

fn bench(c: &mut Criterion) {
    let options = options();
    let text = generate(10_000);
    c.bench_function("parse+compile 10k instructions", |b| {
        b.iter(|| {
            let dockerfile = parse(&text, "Dockerfile").expect("generated dockerfile parses");
            compile(&dockerfile, &options, &NoImages).expect("generated dockerfile compiles")
        })
    });
    c.bench_function("parse 10k instructions", |b| {
        b.iter(|| parse(&text, "Dockerfile").expect("generated dockerfile parses"))
    });
}

/// The same shapes at 1k, 10k and 100k: with linear growth, each group's
/// throughput stays the same from size to size.
fn scaling(c: &mut Criterion) {
    let options = options();
    let mut group = c.benchmark_group("scaling");
    group.sample_size(10);
    for size in [1_000, 10_000, 100_000] {
        group.throughput(Throughput::Elements(size as u64));
        let text = generate(size);
        group.bench_with_input(BenchmarkId::new("parse+compile", size), &text, |b, text| {
            b.iter(|| {
                let dockerfile = parse(text, "Dockerfile").expect("generated dockerfile parses");
                compile(&dockerfile, &options, &NoImages).expect("generated dockerfile compiles")
            })
        });
        for (name, make) in [
            ("continuations", continuation_file as fn(usize) -> String),
            ("heredoc lines", heredoc_file),
            ("heredoc markers", heredoc_markers_file),
        ] {
            let text = make(size);
            group.bench_with_input(BenchmarkId::new(name, size), &text, |b, text| {
                b.iter(|| parse(text, "Dockerfile"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, scaling);
criterion_main!(benches);
