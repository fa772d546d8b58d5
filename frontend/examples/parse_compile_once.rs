//! Parses and compiles the benchmark's generated 10,000-instruction
//! Dockerfile once, for instruction counts that do not depend on machine load:
//! `valgrind --tool=callgrind target/release/examples/parse_compile_once`.
//! An optional argument changes the number of instructions; a second one,
//! `flat`, makes the file one stage (the default chains a stage every 1000
//! instructions, each inheriting the labels of all before it).
//!
//! It also prints how much memory each phase holds (from /proc), so the
//! memory of a large file can be measured:
//! `/usr/bin/time -v target/release/examples/parse_compile_once 1000000`.

use kiln_frontend::{compile, parse, CompileOptions, NoImages};

// The allocator the kiln binary runs the frontend with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kiln_testsupport::dockerfiles;

/// The process's resident memory now and at its peak, in MiB, from
/// /proc/self/status (zeros where it cannot be read).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10_000,
    };
    let flat = std::env::args().nth(2).as_deref() == Some("flat");
    let text = if flat {
        dockerfiles::generate_flat(size)
    } else {
        dockerfiles::generate(size)
    };
    let options = CompileOptions {
        target_platform: "linux/amd64".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    };
    let (before, _) = memory();
    let dockerfile = parse(&text, "Dockerfile")?;
    let (parsed, _) = memory();
    let graph = compile(&dockerfile, &options, &NoImages)?;
    let (compiled, peak) = memory();
    let steps: usize = graph.stages.iter().map(|s| s.steps.len()).sum();
    let per = |mib: u64| (mib << 20) / size.max(1) as u64;
    eprintln!(
        "{} instructions, {steps} steps; text {} MiB; RSS {before} MiB with the text, +{} MiB parsed ({} B/instruction), +{} MiB compiled ({} B/instruction), peak {peak} MiB",
        dockerfile.instructions.len(),
        text.len() >> 20,
        parsed.saturating_sub(before),
        per(parsed.saturating_sub(before)),
        compiled.saturating_sub(parsed),
        per(compiled.saturating_sub(parsed)),
    );
    Ok(())
}
