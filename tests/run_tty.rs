//! `kiln run -it` driven through tmux as a person would use it: a shell
//! with a real terminal, its window size following tmux's, Ctrl-C reaching
//! the process, and the exit status of what ran.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one command, killed when dropped.
pub struct Tmux {
    pub name: String,
}

impl Tmux {
    pub fn start(name: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "100",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("tmux is installed");
        assert!(status.success());
        Tmux {
            name: name.to_string(),
        }
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never showed:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a line that is exactly `line`.
    pub fn wait_for_line(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if screen.lines().any(|l| l.trim_end() == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{line:?} never showed:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn resize(&self, x: u32, y: u32) {
        let (x, y) = (x.to_string(), y.to_string());
        Command::new("tmux")
            .args(["resize-window", "-t", &self.name, "-x", &x, "-y", &y])
            .status()
            .unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

pub fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_it_gives_a_terminal_with_size_ctrl_c_and_exit_status() {
    let store = kiln_testsupport::store::Store::new();
    let tar = kiln_testsupport::store::fixture("busybox-amd64.tar");
    store.ok(&["import", &tar.to_string_lossy(), "busybox"]);
    let status = store.path("status");
    let command = format!(
        "{} --root {} run -it --rm busybox sh; echo $? > {}",
        env!("CARGO_BIN_EXE_kiln"),
        store.root().display(),
        status.display()
    );
    let tmux = Tmux::start(&format!("kiln-run-it-{}", std::process::id()), &command);
    tmux.keys(&[
        "[ -t 0 ] && [ -t 1 ] && echo terminal product=$((6*7))",
        "Enter",
    ]);
    tmux.wait_for("terminal product=42");
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("30 100");
    tmux.resize(120, 40);
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("40 120");
    // Ctrl-C interrupts the sleep, not kiln (nor the shell).
    tmux.keys(&["sleep 1000; echo slept", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo still-here", "Enter"]);
    tmux.wait_for_line("still-here");
    let screen = tmux.screen();
    assert!(!screen.lines().any(|l| l.trim_end() == "slept"), "{screen}");
    tmux.keys(&["exit 5", "Enter"]);
    assert_eq!(wait_for_file(&status), "5\n");
}

#[test]
fn build_debug_shell_opens_a_shell_in_the_failed_step() {
    let store = kiln_testsupport::store::Store::new();
    let tar = kiln_testsupport::store::fixture("busybox-amd64.tar");
    store.ok(&["import", &tar.to_string_lossy(), "busybox"]);
    let context = store.path("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM busybox\nENV STEP_VAR=from-env\nWORKDIR /work\nRUN echo partial > made && exit 3\n",
    )
    .unwrap();
    // Without a terminal the flag is an error that says why.
    let out = store.kiln(&["build", "--debug-shell", &context.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));

    let status = store.path("status");
    let command = format!(
        "{} --root {} build --debug-shell {} 2>&1; echo $? > {}; sleep 30",
        env!("CARGO_BIN_EXE_kiln"),
        store.root().display(),
        context.display(),
        status.display()
    );
    let tmux = Tmux::start(
        &format!("kiln-debug-shell-{}", std::process::id()),
        &command,
    );
    tmux.wait_for("the step ran: /bin/sh -c \"echo partial > made && exit 3\"");
    tmux.keys(&["echo seen: $STEP_VAR $(pwd) $(cat made)", "Enter"]);
    tmux.wait_for("seen: from-env /work partial");
    tmux.keys(&["exit", "Enter"]);
    assert_eq!(wait_for_file(&status), "1\n");
    tmux.wait_for("exited with code 3");
}
