//! Parses and compiles the benchmark's generated 10,000-instruction
//! Dockerfile once, for instruction counts that do not depend on machine load:
//! `valgrind --tool=callgrind target/release/examples/parse_compile_once`.
//! An optional argument changes the number of instructions.

use kiln_frontend::{compile, parse, CompileOptions, NoImages};

// The allocator the kiln binary runs the frontend with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "../benches/common/mod.rs"]
mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10_000,
    };
    let text = common::generate(size);
    let options = CompileOptions {
        target_platform: "linux/amd64".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    };
    let dockerfile = parse(&text, "Dockerfile")?;
    let graph = compile(&dockerfile, &options, &NoImages)?;
    let steps: usize = graph.stages.iter().map(|s| s.steps.len()).sum();
    eprintln!(
        "{} instructions, {steps} steps",
        dockerfile.instructions.len()
    );
    Ok(())
}
