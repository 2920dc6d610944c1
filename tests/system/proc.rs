//! Worker processes: the test binary `celeriac-testapp` run as a real worker, for tests
//! that kill, signal or mix processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_celeriac-testapp");

/// A running `celeriac-testapp worker`; killed on drop.
pub(crate) struct WorkerProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl WorkerProcess {
    /// Starts a celeriac worker on `broker` with extra worker `args` and `env`, and waits
    /// until it is ready. Logs at `info` unless `args` set `-l`.
    pub(crate) fn spawn(broker: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let quiet = args.contains(&"-l");
        let mut cmd = Command::new(BIN);
        cmd.args(["--broker", broker, "worker"])
            .args(if quiet { &[][..] } else { &["-l", "info"][..] })
            .args(args)
            .env_remove("CELERIAC_BROKER_URL")
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERIAC_RESULT_BACKEND")
            .env_remove("CELERY_RESULT_BACKEND")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // At `info` the worker logs "<name> ready."; quieter, the banner's end shows it started.
        Self::spawn_command(cmd, if quiet { "[tasks]" } else { " ready." })
    }

    /// Starts any worker command (a Python Celery worker, say) and waits until its log
    /// (stderr) contains `ready`.
    pub(crate) fn spawn_command(mut cmd: Command, ready: &str) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("worker process starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = sink.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let w = Self { child, log };
        w.wait_for_log(ready, Duration::from_secs(60));
        w
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker's log so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `text`.
    pub(crate) fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "worker never logged {text:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the worker to exit on its own (a remote `shutdown`, say);
    /// `None` if it is still running then.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("worker status") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the worker dies without cleaning up.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("worker exits")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-alone `celeriac` binary (crates/celeriac-cli), next to the test app; the
/// test app's own command line (the same `celeriac::cli`) when it has not been built.
pub(crate) fn celeriac_bin() -> std::path::PathBuf {
    let tool = std::path::Path::new(BIN).with_file_name("celeriac");
    if tool.exists() {
        return tool;
    }
    let _ = writeln!(
        std::io::stderr(),
        "NOTE: {} not built (cargo build -p celeriac-cli); using the test app's command line",
        tool.display()
    );
    std::path::PathBuf::from(BIN)
}
