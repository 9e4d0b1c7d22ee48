//! The service's log lines captured in memory, for the tests that read what it logs.

use learning_chat::telemetry;
use learning_chat::Settings;
use std::sync::{Arc, Mutex};

/// A log sink shared with the test.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Sends this process's logs (at `info`, in the format of `settings`) to a [`Captured`] sink.
/// Once per process: nextest runs each test in a process of its own.
pub fn capture_logs(settings: &Settings) -> Captured {
    let captured = Captured::default();
    let sink = captured.clone();
    let mut telemetry = settings.telemetry.clone();
    // The simulator runs in this process too; its lines are not the service's.
    telemetry.log_level = "info,gemini_sim=off".to_owned();
    telemetry::init_logging_to(&telemetry, move || sink.clone());
    captured
}
