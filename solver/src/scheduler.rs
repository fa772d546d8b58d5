//! Runs a DAG of vertices on a bounded number of threads: a vertex starts when
//! all its dependencies are done; the first failure cancels the rest (running
//! vertices see the cancel token, queued ones never start) and is the error
//! reported, not the cancellations it caused.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use kiln_executor::CancelToken;

use crate::error::{Error, Result};

struct State {
    ready: VecDeque<usize>,
    waiting_on: Vec<usize>,
    running: usize,
    done: usize,
    failure: Option<Error>,
}

/// Runs `work(v)` for every vertex `v` in `0..deps.len()` after all of
/// `deps[v]`, with at most `jobs` at once. Dependencies must point to lower
/// or higher indices without cycles; a cycle is reported as an error.
pub(crate) fn run_dag<F>(
    deps: &[Vec<usize>],
    jobs: usize,
    cancel: &CancelToken,
    work: F,
) -> Result<()>
where
    F: Fn(usize) -> Result<()> + Sync,
{
    let count = deps.len();
    let mut dependents = vec![Vec::new(); count];
    let mut waiting_on = vec![0; count];
    for (vertex, vertex_deps) in deps.iter().enumerate() {
        for &dep in vertex_deps {
            if dep >= count {
                return Err(Error::Invalid(format!(
                    "vertex {vertex} depends on unknown vertex {dep}"
                )));
            }
            dependents[dep].push(vertex);
            waiting_on[vertex] += 1;
        }
    }
    let ready = (0..count).filter(|&v| waiting_on[v] == 0).collect();
    let state = Mutex::new(State {
        ready,
        waiting_on,
        running: 0,
        done: 0,
        failure: None,
    });
    let wake = Condvar::new();
    let workers = jobs.clamp(1, count.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let vertex = {
                    let Ok(mut s) = state.lock() else { return };
                    loop {
                        if s.failure.is_some() || s.done == count {
                            wake.notify_all();
                            return;
                        }
                        if let Some(v) = s.ready.pop_front() {
                            s.running += 1;
                            break v;
                        }
                        if s.running == 0 {
                            // Nothing runs and nothing is ready: a cycle.
                            s.failure = Some(Error::Invalid("the build graph has a cycle".into()));
                            wake.notify_all();
                            return;
                        }
                        s = match wake.wait(s) {
                            Ok(s) => s,
                            Err(_) => return,
                        };
                    }
                };
                let outcome = if cancel.is_cancelled() {
                    Err(Error::Cancelled)
                } else {
                    work(vertex)
                };
                let Ok(mut s) = state.lock() else { return };
                s.running -= 1;
                match outcome {
                    Ok(()) => {
                        s.done += 1;
                        for &next in &dependents[vertex] {
                            s.waiting_on[next] -= 1;
                            if s.waiting_on[next] == 0 {
                                s.ready.push_back(next);
                            }
                        }
                    }
                    Err(err) => {
                        let is_cancellation = matches!(err, Error::Cancelled);
                        if s.failure.is_none()
                            || (!is_cancellation && matches!(s.failure, Some(Error::Cancelled)))
                        {
                            s.failure = Some(err);
                        }
                        cancel.cancel();
                    }
                }
                wake.notify_all();
            });
        }
    });
    let state = state
        .into_inner()
        .map_err(|_| Error::Invalid("a build thread panicked".into()))?;
    match state.failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn respects_dependencies_and_runs_each_once() {
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let order = Mutex::new(Vec::new());
        run_dag(&deps, 3, &CancelToken::new(), |v| {
            order.lock().unwrap().push(v);
            Ok(())
        })
        .unwrap();
        let order = order.into_inner().unwrap();
        assert_eq!(order.len(), 4);
        let pos = |v| order.iter().position(|&x| x == v).unwrap();
        assert!(pos(0) < pos(1) && pos(0) < pos(2) && pos(1) < pos(3) && pos(2) < pos(3));
    }

    #[test]
    fn bounded_parallelism() {
        let deps = vec![vec![]; 8];
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        run_dag(&deps, 2, &CancelToken::new(), |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn without_a_limit_every_ready_vertex_runs_at_once() {
        // Each vertex waits until all four are running: only possible when
        // none waits for a free worker.
        let deps = vec![vec![]; 4];
        let arrived = Mutex::new(0);
        let all_here = Condvar::new();
        run_dag(&deps, usize::MAX, &CancelToken::new(), |_| {
            let mut count = arrived.lock().unwrap();
            *count += 1;
            all_here.notify_all();
            let (count, timeout) = all_here
                .wait_timeout_while(count, Duration::from_secs(20), |c| *c < 4)
                .unwrap();
            if timeout.timed_out() {
                return Err(Error::Invalid(format!("only {} ran at once", *count)));
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn first_failure_cancels_the_rest_and_is_reported() {
        // 0 fails quickly; 1 runs long and watches the token; 2 depends on 0.
        let deps = vec![vec![], vec![], vec![0]];
        let cancel = CancelToken::new();
        let started_2 = AtomicUsize::new(0);
        let err = run_dag(&deps, 2, &cancel, |v| match v {
            0 => {
                std::thread::sleep(Duration::from_millis(10));
                Err(Error::Invalid("step 0 failed".into()))
            }
            1 => {
                for _ in 0..200 {
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }
            _ => {
                started_2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "step 0 failed");
        assert_eq!(started_2.load(Ordering::SeqCst), 0);
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn cycles_are_errors_not_hangs() {
        let deps = vec![vec![1], vec![0]];
        assert!(run_dag(&deps, 2, &CancelToken::new(), |_| Ok(())).is_err());
    }
}
