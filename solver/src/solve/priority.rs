//! Which steps yield the CPU to others: in a build of several
//! platforms, a step under emulation (qemu-user) runs several times slower
//! than the same step on the host, so the emulated platforms' chains are the
//! build's critical path. Steps of the host's platform that no emulated step
//! waits for (the host platform's own image) run nicer, on a thread of their
//! own with their sandbox, layer and unpack threads inheriting it: on a
//! machine with fewer cores than runnable work they take the CPU the
//! emulated chain leaves idle instead of slowing it down. Measured with 20
//! RUN steps per platform on 2 cores, each chain ran 1.5-2.4x slower per
//! step while the other ran, though neither filled a core. A native step that an emulated one
//! depends on (a `FROM --platform=$BUILDPLATFORM` stage whose output every
//! platform copies) keeps full priority: it is on that path.

use std::collections::HashSet;

use crate::error::{Error, Result};

/// How much nicer a yielding step runs.
pub(super) const YIELD_NICE: u8 = 10;

/// One vertex as this module sees it.
pub(super) struct Node<'a> {
    /// Vertices it needs, by index.
    pub deps: &'a [usize],
    /// It runs a process under emulation.
    pub emulated: bool,
    /// It is a step of the host's own platform.
    pub native: bool,
}

/// The vertices (indices into `nodes`) that run nicer: native ones that no
/// emulated one needs, directly or through others; none when nothing is
/// emulated.
pub(super) fn yielding(nodes: &[Node<'_>]) -> HashSet<usize> {
    let mut needed: HashSet<usize> = HashSet::new();
    let mut pending: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].emulated).collect();
    if pending.is_empty() {
        return HashSet::new();
    }
    while let Some(index) = pending.pop() {
        for &dep in nodes[index].deps {
            if dep < nodes.len() && needed.insert(dep) {
                pending.push(dep);
            }
        }
    }
    (0..nodes.len())
        .filter(|i| nodes[*i].native && !needed.contains(i))
        .collect()
}

/// Runs `work` on a thread of its own made [`YIELD_NICE`] nicer, and
/// returns what it returns.
pub(super) fn on_nicer_thread<T: Send>(work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("kiln-step-nicer".to_owned())
            .spawn_scoped(scope, || {
                // Best effort: at kiln's own priority the work is still right.
                let _ = kiln_executor::make_this_thread_nicer(YIELD_NICE);
                work()
            })
            .map_err(|e| Error::Invalid(format!("cannot start a thread for a step: {e}")))?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(deps: &[usize], emulated: bool, native: bool) -> Node<'_> {
        Node {
            deps,
            emulated,
            native,
        }
    }

    #[test]
    fn the_host_platforms_own_chain_yields_to_an_emulated_one() {
        // 0 -> 1 -> 2 on amd64 (the host), 3 -> 4 -> 5 under qemu.
        let nodes = [
            node(&[], false, true),
            node(&[0], false, true),
            node(&[1], false, true),
            node(&[], true, false),
            node(&[3], true, false),
            node(&[4], true, false),
        ];
        assert_eq!(yielding(&nodes), HashSet::from([0, 1, 2]));
    }

    #[test]
    fn a_native_step_an_emulated_one_needs_keeps_its_priority() {
        // 0 -> 1: a $BUILDPLATFORM stage; 2 (host) and 3 -> 4 (qemu) copy
        // from it; 5 is the host platform's last step.
        let nodes = [
            node(&[], false, true),
            node(&[0], false, true),
            node(&[1], false, true),
            node(&[1], true, false),
            node(&[3], true, false),
            node(&[2], false, true),
        ];
        assert_eq!(yielding(&nodes), HashSet::from([2, 5]));
    }

    /// The calling thread's niceness, from /proc.
    fn niceness() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command's closing parenthesis; nice is field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn work_on_a_nicer_thread_runs_nicer_and_its_caller_does_not() {
        let before = niceness();
        let inside = on_nicer_thread(|| Ok(niceness())).unwrap();
        assert_eq!(inside, (before + i64::from(YIELD_NICE)).min(19));
        assert_eq!(niceness(), before);
        let failed: Result<()> = on_nicer_thread(|| Err(Error::Invalid("no".into())));
        assert!(failed.is_err());
    }

    #[test]
    fn nothing_yields_without_emulation() {
        let nodes = [node(&[], false, true), node(&[0], false, true)];
        assert!(yielding(&nodes).is_empty());
    }
}
