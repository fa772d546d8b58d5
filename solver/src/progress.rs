//! What the solver tells its caller while it works. The solver never prints:
//! it hands [`Event`]s to a callback, and the `kiln` binary renders them (a
//! live view, plain lines or JSON).

use serde::Serialize;

/// One thing that happened during a build.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step of the build is known; sent for every step before anything runs.
    Step {
        /// The step's number in this build, from 1.
        id: usize,
        /// `[stage k/n]`-style position: the stage's name or index.
        stage: String,
        /// Position of the step in its stage, from 1.
        index: usize,
        /// Number of steps of the stage.
        count: usize,
        /// The instruction, on one line.
        text: String,
        /// The Dockerfile line.
        line: usize,
    },
    /// The step's result came from the cache.
    Cached {
        /// The step's number, as in [`Event::Step`].
        id: usize,
    },
    /// The step started running.
    Started {
        /// The step's number, as in [`Event::Step`].
        id: usize,
    },
    /// One line of the step's output.
    Output {
        /// The step's number, as in [`Event::Step`].
        id: usize,
        /// The line, without its end.
        line: String,
    },
    /// The step finished.
    Done {
        /// The step's number, as in [`Event::Step`].
        id: usize,
        /// How long it ran.
        seconds: f64,
    },
    /// The step failed.
    Failed {
        /// The step's number, as in [`Event::Step`].
        id: usize,
        /// The error and its causes on one line (see
        /// [`Error::chain_text`](crate::Error::chain_text)).
        error: String,
    },
    /// The image is being written (or exported).
    Exporting {
        /// What is being written.
        what: String,
    },
}

/// Receives events; called from several threads at once.
pub trait Progress: Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

impl<F: Fn(Event) + Sync> Progress for F {
    fn event(&self, event: Event) {
        self(event)
    }
}
