//! Progress renderers for `kiln build`, all on stderr: a live view on a TTY
//! (indicatif: one line per running step with its elapsed time and last
//! output line), plain `#N` lines (the default off a TTY and in CI), one JSON
//! event per line, or nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_solver::{Event, Progress};

struct StepInfo {
    label: String,
    started: Option<Instant>,
}

enum Mode {
    Plain,
    Json,
    Quiet,
    Tty {
        multi: MultiProgress,
        bars: HashMap<usize, ProgressBar>,
    },
}

pub struct Renderer {
    state: Mutex<(Mode, HashMap<usize, StepInfo>)>,
    start: Instant,
    color: bool,
}

/// ANSI colours for the live view's status words, unless NO_COLOR is set or
/// stderr is not a terminal.
fn paint(color: bool, code: &str, word: &str) -> String {
    if color {
        format!("\x1b[{code}m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}

/// Output lines of a failed step kept for plain mode's error report are the
/// executor's business; the renderers show what arrives.
const TAIL_WIDTH: usize = 100;

impl Renderer {
    pub fn new(mode: &str) -> anyhow::Result<Renderer> {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        let mode = match mode {
            "auto" if std::io::stderr().is_terminal() && !ci => tty_mode(),
            "auto" | "plain" => Mode::Plain,
            "tty" => tty_mode(),
            "json" | "rawjson" => Mode::Json,
            "quiet" => Mode::Quiet,
            other => bail!("--progress {other}: expected auto, tty, plain, quiet or json"),
        };
        Ok(Renderer {
            state: Mutex::new((mode, HashMap::new())),
            start: Instant::now(),
            color: super::super::stderr_color(),
        })
    }

    /// A line about work that is not a step (pulling a base image, pushing
    /// the result): `#0 ...` in plain mode, above the live view on a TTY, a
    /// `{"Message": ...}` object in JSON mode.
    pub fn message(&self, text: &str) {
        let Ok(state) = self.state.lock() else {
            return;
        };
        match &state.0 {
            Mode::Quiet => {}
            Mode::Json => {
                let line = serde_json::json!({ "Message": { "text": text } });
                eprintln!("{line}");
            }
            Mode::Plain => eprintln!("#0 {text}"),
            Mode::Tty { multi, .. } => {
                if multi.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
        }
    }

    /// Clears the live view.
    pub fn finish(&self) {
        if let Ok(mut state) = self.state.lock() {
            if let Mode::Tty { multi, bars } = &mut state.0 {
                for (_, bar) in bars.drain() {
                    bar.finish_and_clear();
                }
                let _ = multi.clear();
            }
        }
    }
}

fn tty_mode() -> Mode {
    Mode::Tty {
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        bars: HashMap::new(),
    }
}

fn tail(line: &str) -> String {
    let line = line.trim_end();
    let count = line.chars().count();
    if count <= TAIL_WIDTH {
        line.to_string()
    } else {
        line.chars().skip(count - TAIL_WIDTH).collect()
    }
}

impl Progress for Renderer {
    fn event(&self, event: Event) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (mode, steps) = &mut *guard;
        if let Event::Step {
            id,
            stage,
            index,
            count,
            text,
            ..
        } = &event
        {
            steps.insert(
                *id,
                StepInfo {
                    label: format!("[{stage} {index}/{count}] {text}"),
                    started: None,
                },
            );
        }
        let mut err = std::io::stderr().lock();
        match mode {
            Mode::Quiet => {}
            Mode::Json => {
                if let Ok(line) = serde_json::to_string(&event) {
                    let _ = writeln!(err, "{line}");
                }
            }
            Mode::Plain => {
                if let Event::Started { id } = &event {
                    if let Some(step) = steps.get_mut(id) {
                        step.started = Some(Instant::now());
                    }
                }
                let label = |id: &usize| steps.get(id).map(|s| s.label.clone()).unwrap_or_default();
                let _ = match &event {
                    Event::Step { .. } => Ok(()),
                    Event::Cached { id } => writeln!(err, "#{id} {}\n#{id} CACHED", label(id)),
                    Event::Started { id } => writeln!(err, "#{id} {}", label(id)),
                    Event::Output { id, line } => {
                        let at = steps
                            .get(id)
                            .and_then(|s| s.started)
                            .map(|t| t.elapsed().as_secs_f64())
                            .unwrap_or(0.0);
                        writeln!(err, "#{id} {at:.3} {}", line.trim_end())
                    }
                    Event::Done { id, seconds } => writeln!(err, "#{id} DONE {seconds:.1}s"),
                    Event::Failed { id, error } => writeln!(err, "#{id} ERROR: {error}"),
                    Event::Exporting { what } => writeln!(
                        err,
                        "#0 {what} ({:.1}s)",
                        self.start.elapsed().as_secs_f64()
                    ),
                };
            }
            Mode::Tty { multi, bars } => {
                drop(err);
                let label = |id: &usize| steps.get(id).map(|s| s.label.clone()).unwrap_or_default();
                match &event {
                    Event::Cached { id } => {
                        let _ = multi.println(format!(
                            "{} {}",
                            paint(self.color, "34", "CACHED"),
                            label(id)
                        ));
                    }
                    Event::Started { id } => {
                        let bar = multi.add(ProgressBar::new_spinner());
                        if let Ok(style) =
                            ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix} {msg}")
                        {
                            bar.set_style(style);
                        }
                        bar.set_prefix(label(id));
                        bar.enable_steady_tick(Duration::from_millis(100));
                        bars.insert(*id, bar);
                    }
                    Event::Output { id, line } => {
                        if let Some(bar) = bars.get(id) {
                            bar.set_message(format!("| {}", tail(line)));
                        }
                    }
                    Event::Done { id, seconds } => {
                        if let Some(bar) = bars.remove(id) {
                            bar.finish_and_clear();
                            multi.remove(&bar);
                        }
                        let _ = multi.println(format!(
                            "{} {seconds:>5.1}s {}",
                            paint(self.color, "32", "DONE"),
                            label(id)
                        ));
                    }
                    Event::Failed { id, error } => {
                        if let Some(bar) = bars.remove(id) {
                            bar.finish_and_clear();
                            multi.remove(&bar);
                        }
                        let _ = multi.println(format!(
                            "{} {}: {error}",
                            paint(self.color, "31", "ERROR"),
                            label(id)
                        ));
                    }
                    Event::Exporting { what } => {
                        let _ = multi.println(what.clone());
                    }
                    Event::Step { .. } => {}
                }
            }
        }
    }
}
