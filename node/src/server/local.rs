//! Connections that live inside the node process: how the RESP gateway ([`crate::resp`]) hands
//! client requests to the core loop without a socket or an encoding in between.
//!
//! A [`LocalConn`] is to the core what a client's TCP connection is: it opens with an
//! `Input::Open` carrying the channel its answers come back on, sends `Input::Request`s with ids
//! of its own, each taking its share of the input budget (BOUNDS in the server's essay), and
//! closes with `Input::Close` when dropped. Its answers obey group commit like every other
//! answer: an acknowledged write is durable here before the caller hears of it. Requests are
//! checked against the node's [`Limits`] before they cost the core anything, as the server's
//! reader checks a socket's.

use super::Input;
use crate::message::{Envelope, Request, RequestId, Response};
use crate::rpc::ConnId;
use crate::wire::Limits;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Most requests one local connection has in flight at once (an `MGET`'s reads go together).
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// What a request costs of the input budget: its key and value and a little for the rest,
/// about what its frame would take.
fn cost_of(request: &Request) -> u32 {
    let bytes = match request {
        Request::Get { key, .. } | Request::Delete { key, .. } | Request::Lookup { key } => {
            key.len()
        }
        Request::Put { key, value, .. } => key.len() + value.len(),
        _ => 0,
    };
    u32::try_from(bytes + 256).unwrap_or(u32::MAX)
}

/// A handle on the core loop, from which local connections are opened. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Core {
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) input_bytes: Arc<Semaphore>,
    pub(super) conn_ids: Arc<AtomicU64>,
    pub(super) limits: Limits,
    /// How long a request may take before the caller gives up on its answer: the node's client
    /// deadline, and a little more (the core answers every request by its deadline).
    pub(super) timeout: Duration,
}

impl Core {
    /// Open a connection to the core.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the core has stopped.
    pub(crate) async fn open(&self) -> Result<LocalConn> {
        let conn = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        self.inputs
            .send(Input::Open { conn, tx })
            .await
            .map_err(|_| stopped())?;
        Ok(LocalConn {
            core: self.clone(),
            conn,
            answers: rx,
            next_id: 1,
        })
    }

    /// The node's bounds on keys and values.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }
}

fn stopped() -> Error {
    Error::Unavailable("the node is stopping".into())
}

/// One connection to the core loop, open until dropped. Its calls take `&mut self`: a
/// connection's requests are sent by one task, and [`LocalConn::call_all`] sends several at
/// once.
pub(crate) struct LocalConn {
    core: Core,
    conn: ConnId,
    answers: mpsc::Receiver<Envelope>,
    next_id: RequestId,
}

impl LocalConn {
    /// Send `request` and wait for its answer.
    ///
    /// # Errors
    /// The request's own error; [`Error::TooLarge`] for a key or value over the node's bounds;
    /// [`Error::Unavailable`] if the core stopped; [`Error::Timeout`] if no answer came.
    pub(crate) async fn call(&mut self, request: Request) -> Result<Response> {
        let mut answers = self.call_all(vec![request]).await;
        answers.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Send every request at once (at most [`MAX_IN_FLIGHT`] in flight) and return their
    /// answers in the order of the requests.
    pub(crate) async fn call_all(&mut self, requests: Vec<Request>) -> Vec<Result<Response>> {
        let total = requests.len();
        let mut results: Vec<Option<Result<Response>>> = (0..total).map(|_| None).collect();
        let mut waiting: HashMap<RequestId, usize> = HashMap::new();
        let mut pending = requests.into_iter().enumerate();
        let mut done = 0;
        let deadline = tokio::time::Instant::now() + self.core.timeout;
        while done < total {
            // Fill the window.
            while waiting.len() < MAX_IN_FLIGHT {
                let Some((i, request)) = pending.next() else {
                    break;
                };
                match self.send(request).await {
                    Ok(id) => {
                        waiting.insert(id, i);
                    }
                    Err(e) => {
                        results[i] = Some(Err(e));
                        done += 1;
                    }
                }
            }
            if waiting.is_empty() {
                continue;
            }
            let answer = tokio::time::timeout_at(deadline, self.answers.recv()).await;
            match answer {
                Ok(Some(Envelope::Response { id, body })) => {
                    if let Some(i) = waiting.remove(&id) {
                        results[i] = Some(body);
                        done += 1;
                    }
                }
                Ok(Some(Envelope::Request { .. })) => {}
                Ok(None) => break,
                Err(_) => {
                    for (_, i) in waiting.drain() {
                        results[i] = Some(Err(Error::Timeout(format!(
                            "the node did not answer within {:?}",
                            self.core.timeout
                        ))));
                        done += 1;
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(stopped())))
            .collect()
    }

    /// Check `request`, take its share of the input budget and hand it to the core.
    async fn send(&mut self, request: Request) -> Result<RequestId> {
        self.core.limits.check_request(&request)?;
        let cost = Arc::clone(&self.core.input_bytes)
            .acquire_many_owned(cost_of(&request))
            .await
            .map_err(|_| stopped())?;
        let id = self.next_id;
        self.next_id += 1;
        let input = Input::Request {
            conn: self.conn,
            id,
            request,
            cost,
        };
        self.core.inputs.send(input).await.map_err(|_| stopped())?;
        Ok(id)
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        let inputs = self.core.inputs.clone();
        let conn = self.conn;
        // The core forgets the connection; if it has stopped there is nothing to forget.
        if inputs.try_send(Input::Close { conn }).is_err() {
            tokio::spawn(async move {
                let _ = inputs.send(Input::Close { conn }).await;
            });
        }
    }
}
