//! Counts the heap bytes (with dhat's allocator) the frontend holds for a generated Dockerfile, by
//! phase: `cargo run --release -p kiln-frontend --example memory_profile --
//! 1000000 [flat]` (the benchmark's Dockerfile, or with `flat` the same
//! in one stage). Unlike RSS these figures do not depend on the allocator's
//! caching or the machine's load, so they show what a change to the
//! frontend's types saves. The sizes of the per-instruction types are printed
//! too.

use kiln_frontend::{compile, parse, CompileOptions, NoImages};

use kiln_testsupport::dockerfiles;

// dhat's allocator counts every byte requested (and needs no unsafe code).
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Bytes in use now and their peak since the profiler started.
fn heap() -> (usize, usize) {
    let stats = dhat::HeapStats::get();
    (stats.curr_bytes, stats.max_bytes)
}

fn mib(bytes: usize) -> usize {
    bytes >> 20
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    eprintln!(
        "sizes: Instruction {} B, Span {} B, Flag {} B, Step {} B, RunStep {} B, CopyStep {} B",
        std::mem::size_of::<kiln_frontend::Instruction>(),
        std::mem::size_of::<kiln_frontend::Span>(),
        std::mem::size_of::<kiln_frontend::Flag>(),
        std::mem::size_of::<kiln_frontend::Step>(),
        std::mem::size_of::<kiln_frontend::RunStep>(),
        std::mem::size_of::<kiln_frontend::CopyStep>(),
    );
    let text = if std::env::args().nth(2).as_deref() == Some("flat") {
        dockerfiles::generate_flat(size)
    } else {
        dockerfiles::generate(size)
    };
    let options = CompileOptions {
        target_platform: "linux/amd64".into(),
        build_platform: "linux/amd64".into(),
        ..CompileOptions::default()
    };
    // Counting starts here, so the peak is the frontend's, the text's not.
    let _profiler = if std::env::var_os("DHAT_FILE").is_some() {
        dhat::Profiler::builder()
            .trim_backtraces(None)
            .file_name(std::env::var_os("DHAT_FILE").unwrap())
            .build()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let dockerfile = parse(&text, "Dockerfile")?;
    let (parsed, parse_peak) = heap();
    let graph = compile(&dockerfile, &options, &NoImages)?;
    let (total, peak) = heap();
    let per = |bytes: usize| bytes / size.max(1);
    eprintln!(
        "{} instructions, text {} MiB; parsed {} MiB held ({} B/instruction, peak {} B), \
         compiled +{} MiB ({} B/instruction); peak beyond the text {} MiB ({} B/instruction)",
        dockerfile.instructions.len(),
        mib(text.len()),
        mib(parsed),
        per(parsed),
        per(parse_peak),
        mib(total - parsed),
        per(total - parsed),
        mib(peak),
        per(peak),
    );
    drop(graph);
    Ok(())
}
