//! `brokk passwd` as a person uses it: at a terminal (a pseudo-terminal here) the password is
//! asked twice and a mismatch changes nothing; its `--help` lists only its own options.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::WAIT;
use common::process::{self, BIN};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// `brokk passwd FILE USER` with a pseudo-terminal as its controlling terminal and stdio.
struct Terminal {
    master: File,
    output: Arc<Mutex<String>>,
    /// Signalled when the reader has seen the end of the terminal's output.
    drained: std::sync::mpsc::Receiver<()>,
    child: std::process::Child,
}

impl Terminal {
    fn passwd(file: &Path, user: &str) -> Terminal {
        let master: OwnedFd = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("utf-8 name"))
            .expect("open the terminal");
        let mut command = Command::new(BIN);
        command
            .arg("passwd")
            .arg(file)
            .arg(user)
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A new session whose controlling terminal is the pty, so /dev/tty is it.
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        let child = command.spawn().expect("brokk passwd starts");
        drop(command);
        let master = File::from(master);
        let output = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().expect("dup");
        let sink = output.clone();
        let (done, drained) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            // Ends with EIO once the child has exited and the terminal has no other user.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if let Ok(mut out) = sink.lock() {
                    out.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
            let _ = done.send(());
        });
        Terminal {
            master,
            output,
            drained,
            child,
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .map(|out| out.clone())
            .unwrap_or_default()
    }

    /// Waits until the terminal has shown `text` (`count` times in all).
    fn expect(&self, text: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.output().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "{text:?} never shown; the terminal shows {:?}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn type_line(&self, line: &str) {
        (&self.master)
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
    }

    /// The exit status and everything the terminal showed, its last lines included.
    fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        let _ = self.drained.recv_timeout(WAIT);
        (status, self.output())
    }
}

#[test]
fn at_a_terminal_the_password_is_asked_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");

    let terminal = Terminal::passwd(&file, "alice");
    terminal.expect("Password for alice: ", 1);
    terminal.type_line("one");
    terminal.expect("Repeat the password: ", 1);
    terminal.type_line("two");
    let (status, shown) = terminal.wait();
    assert_eq!(status.code(), Some(1), "{shown}");
    assert!(shown.contains("the passwords do not match"), "{shown}");
    assert!(!file.exists(), "nothing written on a mismatch");

    let terminal = Terminal::passwd(&file, "alice");
    terminal.expect("Password for alice: ", 1);
    terminal.type_line("s3cret");
    terminal.expect("Repeat the password: ", 1);
    terminal.type_line("s3cret");
    let (status, shown) = terminal.wait();
    assert!(status.success(), "{shown}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
}

#[test]
fn passwd_help_lists_only_its_own_options() {
    let out = process::run(["passwd", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(help.contains("--delete"), "{help}");
    assert!(!help.contains("--config"), "{help}");
    assert!(!help.contains("--check-config"), "{help}");
}
