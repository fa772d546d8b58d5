mod common;
use common::*;

#[test]
fn echo_runs() {
    let out = run(&shell("echo hello; echo err >&2; echo made > /f1"));
    out.upper();
    assert_eq!(out.stdout, vec!["hello"]);
    assert_eq!(out.stderr, vec!["err"]);
    assert_eq!(out.layer_entries(), vec!["f1"]);
}
