//! Across servers, one streamed answer: the lease holder appends the pieces it gets from the
//! model to a Redis Stream (`XADD ... MAXLEN ~ n`, expiring), and the servers waiting on the
//! same question read it (`XREAD BLOCK` on a connection of their own) into their local
//! [`Fanout`], from the first entry, so their learners see the words as the holder's do.
//!
//! Each entry carries the piece's byte offset in the answer, so a reader can tell a restart
//! (a new holder after the old one died asks the model again from the start) from new text.

use super::fanout::Fanout;
use crate::redis_link::RedisLink;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Field of an entry: the piece's byte offset in the answer.
const OFFSET: &str = "o";
/// Field of an entry: the piece's text.
const TEXT: &str = "t";
/// Field of the last entry: the holder is done (the answer or outcome is published).
const END: &str = "e";
/// Most entries read by one `XREAD`.
const READ_COUNT: u32 = 256;

/// Bounds of the per-question Redis Stream.
#[derive(Debug, Clone, Copy)]
pub struct RelayBounds {
    /// `MAXLEN ~` of each stream: a longer answer loses its oldest pieces (readers then get the
    /// rest with the final answer).
    pub max_entries: u64,
    /// Expiry of each stream after its last write, in milliseconds.
    pub ttl_ms: u64,
}

/// Appends a holder's pieces to the question's stream in order, off the model's path.
pub struct RelayPublisher {
    tx: mpsc::UnboundedSender<(usize, String)>,
    task: JoinHandle<()>,
}

impl RelayPublisher {
    /// Starts publishing to `stream_key`.
    pub fn start(link: RedisLink, stream_key: String, bounds: RelayBounds) -> RelayPublisher {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
        let task = tokio::spawn(crate::trace::in_current_context(async move {
            while let Some(first) = rx.recv().await {
                // Pieces that queued while the last write was out go in one round trip.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let key = stream_key.clone();
                let _ = link
                    .run("stream_publish", |mut conn| async move {
                        let mut pipe = ::redis::pipe();
                        for (offset, text) in batch {
                            pipe.cmd("XADD")
                                .arg(&key)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(bounds.max_entries)
                                .arg("*")
                                .arg(OFFSET)
                                .arg(offset)
                                .arg(TEXT)
                                .arg(text)
                                .ignore();
                        }
                        pipe.cmd("PEXPIRE").arg(&key).arg(bounds.ttl_ms).ignore();
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await;
            }
        }));
        RelayPublisher { tx, task }
    }

    /// Queues a piece that starts at byte `offset` of the answer.
    pub fn push(&self, offset: usize, text: &str) {
        let _ = self.tx.send((offset, text.to_owned()));
    }

    /// Waits until every queued piece is written (or failed).
    pub async fn flush(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Marks the stream ended, so readers blocked on it look for the published result at once.
pub async fn publish_end(link: &RedisLink, stream_key: String, bounds: RelayBounds) {
    let _ = link
        .run("stream_end", |mut conn| async move {
            ::redis::pipe()
                .cmd("XADD")
                .arg(&stream_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(bounds.max_entries)
                .arg("*")
                .arg(END)
                .arg(1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&stream_key)
                .arg(bounds.ttl_ms)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
}

/// A waiting server's position in the holder's stream.
pub struct RelayReader {
    stream_key: String,
    last_id: String,
    /// `None` until first needed; stays `None` where blocking reads are not possible (Redis
    /// Cluster), and the reader polls instead.
    conn: Option<::redis::aio::MultiplexedConnection>,
    tried_dedicated: bool,
    fanout: Arc<Fanout>,
}

/// `XREAD` reply: per stream, its entries as (id, flat field/value list).
type XreadReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

impl RelayReader {
    /// A reader of `stream_key` from its first entry into `fanout`.
    pub fn new(stream_key: String, fanout: Arc<Fanout>) -> RelayReader {
        RelayReader {
            stream_key,
            last_id: "0-0".to_owned(),
            conn: None,
            tried_dedicated: false,
            fanout,
        }
    }

    /// Moves the entries written since the last read into the fan-out, waiting up to `wait` for
    /// some to appear.
    pub async fn read(&mut self, link: &RedisLink, wait: Duration) {
        if !self.tried_dedicated {
            self.tried_dedicated = true;
            self.conn = link.dedicated().await;
        }
        let wait_ms = wait.as_millis().max(1) as u64;
        let reply: Option<XreadReply> = match &mut self.conn {
            Some(conn) => {
                let mut cmd = ::redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(wait_ms)
                    .arg("STREAMS")
                    .arg(&self.stream_key)
                    .arg(&self.last_id);
                // Bounded even if the connection hangs: the block plus a command's time.
                let read = tokio::time::timeout(
                    wait + Duration::from_millis(500),
                    cmd.query_async::<XreadReply>(conn),
                )
                .await;
                match read {
                    Ok(Ok(reply)) => Some(reply),
                    _ => {
                        // A broken dedicated connection: poll over the shared one from now on.
                        self.conn = None;
                        None
                    }
                }
            }
            None => {
                let (key, id) = (self.stream_key.clone(), self.last_id.clone());
                let reply = link
                    .run("stream_read", |mut conn| async move {
                        ::redis::cmd("XREAD")
                            .arg("COUNT")
                            .arg(READ_COUNT)
                            .arg("STREAMS")
                            .arg(key)
                            .arg(id)
                            .query_async::<XreadReply>(&mut conn)
                            .await
                    })
                    .await
                    .ok();
                if !matches!(&reply, Some(Some(streams)) if !streams.is_empty()) {
                    tokio::time::sleep(wait).await;
                }
                reply
            }
        };
        let Some(Some(streams)) = reply else {
            return;
        };
        for (_, entries) in streams {
            for (id, fields) in entries {
                self.last_id = id;
                let mut offset = None;
                let mut text = None;
                for pair in fields.chunks(2) {
                    if let [field, value] = pair {
                        match field.as_str() {
                            OFFSET => offset = value.parse::<usize>().ok(),
                            TEXT => text = Some(value),
                            _ => {}
                        }
                    }
                }
                if let (Some(offset), Some(text)) = (offset, text) {
                    self.fanout.mark_relayed();
                    self.fanout.push_at(offset, text);
                }
            }
        }
    }
}
