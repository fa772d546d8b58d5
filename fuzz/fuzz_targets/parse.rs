//! Feeds arbitrary bytes to the Dockerfile parser and compiler: neither may
//! panic, whatever the input (run: `cargo +nightly fuzz run parse`).
#![no_main]

use kiln_frontend::{compile, parse, CompileOptions, NoImages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, "Dockerfile") {
        Ok(dockerfile) => {
            // Formatting and compiling exercise every path a parsed file takes.
            let _ = debug_len(&dockerfile);
            let options = CompileOptions {
                target_platform: "linux/amd64".into(),
                build_platform: "linux/amd64".into(),
                ..CompileOptions::default()
            };
            if let Ok(graph) = compile(&dockerfile, &options, &NoImages) {
                let _ = graph.to_text();
                let _ = graph.to_dot();
            }
        }
        Err(error) => {
            // Rendering reads the source at the error's position.
            let _ = error.render(text);
        }
    }
});

fn debug_len(dockerfile: &kiln_frontend::Dockerfile) -> usize {
    format!("{dockerfile:?}").len()
}
