//! `--ssh` and `RUN --mount=type=ssh` with the real ssh-agent: the step asks
//! the agent for its keys (tests/ssh/agent_list.c, built static here), as
//! root and as another user; key files go into an agent of kiln's own; the
//! socket never reaches the image.

mod build_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use build_common::{run_ok, Env};

/// An ssh-agent on `socket`, killed when dropped.
struct Agent(Child);

impl Agent {
    fn start(socket: &Path) -> Agent {
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &Path, comment: &str) {
    run_ok(Command::new("ssh-keygen").args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        &path.to_string_lossy(),
    ]));
}

#[test]
fn steps_reach_the_forwarded_agents_and_nothing_of_them_stays() {
    let env = Env::new();
    let keys = env.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("user"), "kiln-user-key");
    keygen(&keys.join("deploy"), "kiln-deploy-key");
    let socket = keys.join("agent.sock");
    let _agent = Agent::start(&socket);
    run_ok(
        Command::new("ssh-add")
            .arg(keys.join("user"))
            .env("SSH_AUTH_SOCK", &socket),
    );

    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             COPY agent-list /agent-list\n\
             RUN --mount=type=ssh /agent-list > /keys-root && echo $SSH_AUTH_SOCK > /sock\n\
             USER nobody\n\
             RUN --mount=type=ssh,uid=65534 /agent-list > /tmp/keys-nobody\n\
             RUN --mount=type=ssh,id=deploy,target=/tmp/deploy.sock,uid=65534 SSH_AUTH_SOCK=/tmp/deploy.sock /agent-list > /tmp/keys-deploy\n\
             RUN ! /agent-list 2>/dev/null && echo none > /tmp/keys-none\n\
             RUN --mount=type=ssh ! /agent-list 2>/dev/null && echo denied > /tmp/root-only\n",
        )],
    );
    run_ok(Command::new("gcc").args([
        "-static",
        "-O2",
        "-o",
        &ctx.join("agent-list").to_string_lossy(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ssh/agent_list.c"),
    ]));
    let deploy = format!("deploy={}", keys.join("deploy").display());
    let fs = {
        let dest = env.dir.path().join("out");
        let output = format!("type=local,dest={}", dest.display());
        run_ok(
            env.command(&[
                "build",
                "--progress",
                "plain",
                "--ssh",
                "default",
                "--ssh",
                &deploy,
                "--output",
                &output,
                &ctx.to_string_lossy(),
            ])
            .env("SSH_AUTH_SOCK", &socket),
        );
        dest
    };
    let read = |p: &str| std::fs::read_to_string(fs.join(p)).unwrap();
    assert_eq!(read("keys-root"), "1\nkiln-user-key\n");
    assert_eq!(read("sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read("tmp/keys-nobody"), "1\nkiln-user-key\n");
    assert_eq!(read("tmp/keys-deploy"), "1\nkiln-deploy-key\n");
    assert_eq!(read("tmp/keys-none"), "none\n");
    // The socket is root's with mode 0600 unless the mount says otherwise.
    assert_eq!(read("tmp/root-only"), "denied\n");
    // No socket or mountpoint of an agent is left in the image.
    assert!(!fs.join("run/buildkit").exists());
    assert!(!fs.join("tmp/deploy.sock").exists());
    // The agent kiln started for the key file is gone with the build.
    let ps = run_ok(Command::new("ps").args(["-eo", "args"])).stdout;
    let store = env.root().to_string_lossy().into_owned();
    assert!(
        !String::from_utf8_lossy(&ps).contains(&store),
        "a process of the build is still running"
    );
}

#[test]
fn a_required_agent_that_is_not_forwarded_says_how() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,required=true true\n",
        )],
    );
    let out = env.try_build(&ctx, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ssh agent default is required") && stderr.contains("--ssh default"),
        "{stderr}"
    );
    // And --ssh default without an agent is an error before anything runs.
    let out = env
        .command(&["build", "--ssh", "default", &ctx.to_string_lossy()])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("SSH_AUTH_SOCK is not set"), "{stderr}");
}
