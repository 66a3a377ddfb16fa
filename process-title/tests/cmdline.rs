//! Checks the process title from outside, where `ps` reads it: a child
//! process sets titles, and the parent reads `/proc/<child>/cmdline` and
//! `/proc/<child>/comm`.
//!
//! The child is this test binary itself, re-executed with [`ROLE`] set
//! (`harness = false`, so `main` is ours and the child has one thread when it
//! calls `init`). Child protocol, one line each way:
//! - child → parent, after init: `ready argv_bytes=N capacity=C again=C`
//!   (`again` is the capacity a second `init` returned);
//! - parent → child: a title; the child sets it from a worker thread and
//!   answers `env <value of PROBE>`, read with `std::env::var` after the set;
//! - the parent closes stdin and the child exits.

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("process titles are only shown on Linux; nothing to test");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{ChildStdin, Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;
    use std::{env, fs, process, thread};

    use process_title::ProcessTitle;

    /// Tells the re-executed binary which child to play.
    const ROLE: &str = "PROCESS_TITLE_TEST_ROLE";
    /// Set before the child's `init`; must stay readable after every `set`.
    const PROBE: &str = "PROCESS_TITLE_TEST_PROBE";
    const PROBE_VALUE: &str = "set-before-init-and-still-readable";
    /// The child's argument after its program path, recognisable in cmdline.
    const MARKER: &str = "--original-argument";
    /// Environment padding that leaves room for titles longer than argv,
    /// with all of the environment inside the span.
    const SMALL_ENVIRONMENT: usize = 1024;
    /// Environment padding past the page of a title the kernel shows.
    const LARGE_ENVIRONMENT: usize = 16 * 1024;
    /// How long any one answer from a child may take.
    const DEADLINE: Duration = Duration::from_secs(10);

    pub(super) fn main() {
        match env::var(ROLE).as_deref() {
            Ok("title") => title_child(),
            Ok("threaded") => threaded_child(),
            Ok(role) => panic!("unknown {ROLE}={role}"),
            Err(_) => run_tests(),
        }
    }

    /// Pairs each test function with its name.
    macro_rules! named {
        ($($test:ident),* $(,)?) => { [$((stringify!($test), $test as fn())),*] };
    }

    fn run_tests() {
        let tests = named![
            a_title_longer_than_argv_shows_in_cmdline_and_comm,
            a_shorter_title_clears_the_longer_one,
            a_title_over_capacity_is_truncated,
            a_title_past_the_arguments_is_cut_to_one_page,
            truncation_never_splits_a_character,
            init_refuses_once_a_second_thread_exists,
        ];
        println!("\nrunning {} tests", tests.len());
        for (name, test) in tests {
            test();
            println!("test {name} ... ok");
        }
        println!("\ntest result: ok. {} passed\n", tests.len());
    }

    // The tests.

    fn a_title_longer_than_argv_shows_in_cmdline_and_comm() {
        let mut child = Child::spawn("title", SMALL_ENVIRONMENT);
        let ready = child.ready();
        assert_eq!(ready.again, ready.capacity, "a second init returns the same area");
        let title = live_title(ready.argv_bytes + 200);
        assert!(
            title.len() <= ready.capacity,
            "the padded environment makes room: {ready:?}"
        );

        assert_eq!(child.set_title(&title), PROBE_VALUE);
        assert_shows(&child.cmdline(), &title);
        // Set from a worker thread, yet the process (main thread) is renamed.
        assert_eq!(child.comm(), &title[..15]);
    }

    fn a_shorter_title_clears_the_longer_one() {
        let mut child = Child::spawn("title", SMALL_ENVIRONMENT);
        let ready = child.ready();
        child.set_title(&live_title(ready.argv_bytes + 200));

        assert_eq!(child.set_title("driver idle"), PROBE_VALUE);
        assert_shows(&child.cmdline(), "driver idle");
        assert_eq!(child.comm(), "driver idle");
    }

    fn a_title_over_capacity_is_truncated() {
        let mut child = Child::spawn("title", SMALL_ENVIRONMENT);
        let ready = child.ready();
        let title = live_title(ready.capacity + 50);

        assert_eq!(child.set_title(&title), PROBE_VALUE);
        assert_shows(&child.cmdline(), &title[..ready.capacity]);
    }

    fn a_title_past_the_arguments_is_cut_to_one_page() {
        let mut child = Child::spawn("title", LARGE_ENVIRONMENT);
        let ready = child.ready();
        // The kernel shows at most 4096 bytes past the arguments, NUL included.
        assert_eq!(ready.capacity, 4095, "{ready:?}");
        let title = live_title(LARGE_ENVIRONMENT);

        assert_eq!(child.set_title(&title), PROBE_VALUE);
        assert_shows(&child.cmdline(), &title[..ready.capacity]);
    }

    fn truncation_never_splits_a_character() {
        let mut child = Child::spawn("title", SMALL_ENVIRONMENT);
        let ready = child.ready();
        // "é" is two bytes; its second byte would be the first one too many.
        let fits = "a".repeat(ready.capacity - 1);
        let title = format!("{fits}é and more");

        assert_eq!(child.set_title(&title), PROBE_VALUE);
        assert_shows(&child.cmdline(), &fits);
    }

    fn init_refuses_once_a_second_thread_exists() {
        let child = Child::spawn("threaded", SMALL_ENVIRONMENT);
        let answer = child.next_line();
        assert!(answer.starts_with("refused "), "init must refuse: {answer}");
        assert!(answer.contains("2 threads"), "{answer}");
        let original = format!("{}\0{MARKER}\0", current_exe());
        assert_eq!(
            String::from_utf8_lossy(&child.cmdline()),
            original,
            "a refused init changes nothing"
        );
    }

    // The children.

    /// Inits, then sets each title read from stdin from a worker thread.
    fn title_child() {
        // The crate's contract: arguments are read before init.
        let argv_bytes: usize = env::args_os().map(|argument| argument.len() + 1).sum();
        let title = ProcessTitle::init().expect("the child is single-threaded here");
        let again = ProcessTitle::init().expect("init is idempotent");
        println!(
            "ready argv_bytes={argv_bytes} capacity={} again={}",
            title.capacity(),
            again.capacity()
        );
        let worker = thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                title.set(&line.expect("the parent writes UTF-8 lines"));
                let probe = env::var(PROBE).unwrap_or_else(|error| format!("<{error}>"));
                println!("env {probe}");
            }
        });
        worker.join().expect("the worker does not panic");
    }

    /// Starts a second thread, then tries to init.
    fn threaded_child() {
        let (release, parked) = mpsc::channel::<()>();
        let other = thread::spawn(move || parked.recv());
        match ProcessTitle::init() {
            Ok(_) => println!("initialised despite a second thread"),
            Err(error) => println!("refused {error}"),
        }
        // Wait for the parent to read cmdline and close stdin.
        let _ = std::io::stdin().lock().lines().count();
        drop(release);
        let _ = other.join();
    }

    // Support.

    /// A title in the format, padded with event digits to `len` bytes.
    fn live_title(len: usize) -> String {
        let mut title = String::from("driver v0.1.0 port: 5001 controllers: 3 [CTRL-1 CTRL-2 CTRL-3] events: ");
        while title.len() < len {
            title.push(char::from(b'0' + (title.len() % 10) as u8));
        }
        title.truncate(len);
        title
    }

    /// `cmdline` is `title` followed by nothing but NULs: what `ps` prints
    /// once it turns NULs into spaces and trims them.
    #[track_caller]
    fn assert_shows(cmdline: &[u8], title: &str) {
        let (shown, padding) = cmdline.split_at(title.len().min(cmdline.len()));
        assert_eq!(String::from_utf8_lossy(shown), title);
        assert!(
            padding.iter().all(|&byte| byte == 0),
            "only NULs after the title, got {:?}",
            String::from_utf8_lossy(padding)
        );
    }

    fn current_exe() -> String {
        env::current_exe()
            .expect("the test binary has a path")
            .display()
            .to_string()
    }

    #[derive(Debug)]
    struct Ready {
        argv_bytes: usize,
        capacity: usize,
        again: usize,
    }

    /// A child process, killed when dropped so a failed test leaves none.
    struct Child {
        process: process::Child,
        /// Closed (dropped) to tell the child to exit.
        stdin: Option<ChildStdin>,
        /// The child's stdout, line by line, from a reader thread, so every
        /// wait has a deadline.
        lines: mpsc::Receiver<String>,
    }

    impl Child {
        /// Starts the child `role` with `environment_padding` bytes of
        /// environment besides its own variables.
        fn spawn(role: &str, environment_padding: usize) -> Child {
            let mut process = Command::new(current_exe())
                .arg(MARKER)
                // Only these variables, so the test knows where the probe
                // is: inside the span, overwritten by a long enough title.
                .env_clear()
                .env(ROLE, role)
                .env(PROBE, PROBE_VALUE)
                .env("PROCESS_TITLE_TEST_PADDING", "p".repeat(environment_padding))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("re-executing the test binary");
            let stdout = process.stdout.take().expect("stdout is piped");
            let (sender, lines) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
            Child {
                stdin: process.stdin.take(),
                process,
                lines,
            }
        }

        fn next_line(&self) -> String {
            self.lines
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|error| panic!("no line from the child within {DEADLINE:?}: {error}"))
        }

        fn ready(&self) -> Ready {
            let line = self.next_line();
            let value = |key: &str| -> usize {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            };
            assert!(line.starts_with("ready "), "{line}");
            Ready {
                argv_bytes: value("argv_bytes"),
                capacity: value("capacity"),
                again: value("again"),
            }
        }

        /// Sets `title` in the child; returns the probe it read afterwards.
        fn set_title(&mut self, title: &str) -> String {
            let stdin = self.stdin.as_mut().expect("stdin is open until drop");
            writeln!(stdin, "{title}")
                .and_then(|()| stdin.flush())
                .expect("writing to the child");
            let answer = self.next_line();
            answer
                .strip_prefix("env ")
                .unwrap_or_else(|| panic!("unexpected answer {answer:?}"))
                .to_owned()
        }

        fn cmdline(&self) -> Vec<u8> {
            fs::read(format!("/proc/{}/cmdline", self.process.id())).expect("the child is alive")
        }

        fn comm(&self) -> String {
            let comm = fs::read_to_string(format!("/proc/{}/comm", self.process.id())).expect("the child is alive");
            comm.trim_end_matches('\n').to_owned()
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            drop(self.stdin.take());
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}
