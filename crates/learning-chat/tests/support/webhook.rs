//! A webhook receiver for the safety flags' tests: real HTTP on a loopback port, which can be
//! stopped (the port is then really down) or made to hold deliveries unanswered.

use learning_chat::safety::webhook::{FLAG_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use learning_chat_testkit::net::free_port;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One delivery as the receiver got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its `x-learning-chat-signature`.
    pub signature: String,
    /// Its `x-learning-chat-timestamp`.
    pub timestamp: String,
    /// Its `x-learning-chat-flag-id`.
    pub flag_id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 receiver on a fixed port that answers 200 to every POST and closes the
/// connection (or, while holding, reads each POST and never answers); stopping it ends every
/// connection too, so the port is really down.
pub struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
    holding: Arc<AtomicBool>,
    tasks: Option<JoinSet<()>>,
}

impl Receiver {
    /// A receiver on a free port, not started.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Receiver {
        Receiver {
            port: free_port(),
            got: Arc::default(),
            holding: Arc::default(),
            tasks: None,
        }
    }

    /// While `hold` is true, every POST is read (and counted) but never answered: the sender
    /// is left mid-delivery.
    pub fn hold(&self, hold: bool) {
        self.holding.store(hold, Ordering::SeqCst);
    }

    /// Where it listens.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Starts listening (again).
    pub async fn start(&mut self) {
        // A listener just stopped goes away when its aborted task is dropped: try for a moment.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(e) if std::time::Instant::now() < until => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the receiver cannot listen again: {e}"),
            }
        };
        let got = self.got.clone();
        let holding = self.holding.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let got = got.clone();
                let holding = holding.clone();
                connections.spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length = header(&head, "content-length")
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                    };
                    while buffer.len() < head_end + length {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    got.lock().unwrap().push(Delivery {
                        signature: header(&head, SIGNATURE_HEADER).unwrap_or_default(),
                        timestamp: header(&head, TIMESTAMP_HEADER).unwrap_or_default(),
                        flag_id: header(&head, FLAG_ID_HEADER).unwrap_or_default(),
                        body: buffer[head_end..head_end + length].to_vec(),
                    });
                    if holding.load(Ordering::SeqCst) {
                        // Mid-delivery for as long as the sender waits.
                        std::future::pending::<()>().await;
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Stops listening and ends every connection.
    pub fn stop(&mut self) {
        // Dropping the set aborts the accept loop, which drops its connections' set.
        self.tasks = None;
    }

    /// Every POST received so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}
