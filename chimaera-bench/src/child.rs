//! Child processes of a bench: the bench executable re-invoked in a *role* (a peer that
//! answers, a client that calls), driven by its coordinator one line at a time.
//!
//! Invariants:
//! * a child dies with its coordinator: [`die_with_parent`] sets `PR_SET_PDEATHSIG` and
//!   fails at once if the coordinator is already gone, and children that spin poll
//!   [`check_parent`] now and then;
//! * a [`ChildProc`] is killed and reaped when dropped (a panic or an early error in the
//!   coordinator included) unless it [`finish`](ChildProc::finish)ed with exit status 0;
//! * every wait for another process gives up after [`PATIENCE`].
//!
//! The protocol is lines: the coordinator writes to the child's stdin (`go` starts a
//! sample; the end of stdin ends the child), the child answers on its stdout, each line
//! starting with a word the coordinator expects ([`ChildProc::expect_line`]).
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the helpers here fail with.
pub type Res<T> = Result<T, Box<dyn Error>>;

/// Selects a child role; unset in the coordinator.
pub const ROLE_ENV: &str = "CHI_BENCH_ROLE";
/// The coordinator's pid, so a child can tell it has been orphaned.
const PARENT_ENV: &str = "CHI_BENCH_PARENT";

/// Any wait for another process to answer gives up after this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// This process's role: `None` in the coordinator.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// The bench executable re-invoked in `role`, its stdin and stdout piped.
pub fn command(role: &str) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, role)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// In a child: be killed when the coordinator dies, and fail at once if it already has.
pub fn die_with_parent() -> Res<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    check_parent()
}

/// In a child: the coordinator's pid.
pub fn parent_pid() -> Res<u32> {
    Ok(std::env::var(PARENT_ENV)?.parse()?)
}

/// In a child: fails if the coordinator is gone (this process was re-parented).
pub fn check_parent() -> Res<()> {
    if std::os::unix::process::parent_id() != parent_pid()? {
        return Err("the coordinator is gone".into());
    }
    Ok(())
}

/// In a child: one line to the coordinator.
pub fn say(line: &str) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// In a child: blocks for the next line on stdin; true on `go`, false at its end.
pub fn wait_for_go() -> Res<bool> {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line)? == 0 {
        return Ok(false);
    }
    match line.trim() {
        "go" => Ok(true),
        other => Err(format!("expected `go`, got `{other}`").into()),
    }
}

/// A child process of the bench, killed and reaped on drop unless it `finish`ed.
pub struct ChildProc {
    role: &'static str,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    /// Spawns `cmd` (made by [`command`]); a thread forwards its stdout's lines.
    pub fn spawn(mut cmd: Command, role: &'static str) -> Res<Self> {
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProc {
            role,
            child: Some(child),
            stdin,
            lines,
        })
    }

    /// Waits for the child's next line, which must start with `word`.
    pub fn expect_line(&mut self, word: &str) -> Res<String> {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) if line.split_whitespace().next() == Some(word) => Ok(line),
            Ok(line) => Err(format!("{} said `{line}`, expected `{word}`", self.role).into()),
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                Err(format!("{} did not say `{word}` (exit: {status:?})", self.role).into())
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("no child stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin and waits for it to exit by itself; it must exit 0.
    pub fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let mut child = self.child.take().ok_or("child already finished")?;
        let status = wait_timeout(&mut child, PATIENCE)?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("{} exited with {s}", self.role).into()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{} did not exit within {PATIENCE:?}", self.role).into())
            }
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to `limit` for `child` to exit; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Res<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
