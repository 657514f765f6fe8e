//! Cancelling running statements: on a cancel request, or past `statement_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gannet_query::system::RunningQuery;
use pgwire::api::ClientInfo;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::results::{QueryResponse, Response};
use pgwire::messages::cancel::CancelRequest;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::user_error;

/// The statement running on each connection, by the (pid, secret key) pair that a cancel
/// request names. pgwire cancels a statement while it is planned; rows are computed while
/// they are sent, after that, so Gannet stops the row stream itself: on a cancel request,
/// or when the connection's `statement_timeout` passes. Either way the client gets 57014,
/// as from PostgreSQL, and the connection stays usable.
#[derive(Debug, Default)]
pub(super) struct Running {
    next_id: std::sync::atomic::AtomicU64,
    by_connection: Mutex<HashMap<(i32, bytes::Bytes), (u64, CancellationToken)>>,
}

impl Running {
    pub(super) fn start(
        self: &Arc<Self>,
        client: &(impl ClientInfo + ?Sized),
        logged: RunningQuery,
        turn: OwnedSemaphorePermit,
    ) -> Arc<Control> {
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        self.by_connection
            .lock()
            .expect("running lock")
            .insert(key.clone(), (id, token.clone()));
        let timeout = client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|ms| ms.parse().ok())
            .filter(|&ms: &u64| ms > 0)
            .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
        Arc::new(Control {
            running: self.clone(),
            key,
            id,
            token,
            deadline: timeout,
            logged: Mutex::new(Some(logged)),
            rows: AtomicU64::new(0),
            failed: Mutex::new(None),
            _turn: turn,
        })
    }

    fn cancel(&self, pid: i32, secret: &pgwire::messages::startup::SecretKey) {
        let key = (pid, secret.to_bytes());
        if let Some((_, token)) = self.by_connection.lock().expect("running lock").get(&key) {
            token.cancel();
        }
    }
}

/// One statement's cancellation (a token a cancel request fires, and a deadline), and its
/// entry in `system.queries`, written once its rows are sent.
#[derive(Debug)]
pub(super) struct Control {
    running: Arc<Running>,
    key: (i32, bytes::Bytes),
    id: u64,
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    logged: Mutex<Option<RunningQuery>>,
    rows: AtomicU64,
    failed: Mutex<Option<String>>,
    /// The statement's turn among the queries running at once, until its rows are sent.
    _turn: OwnedSemaphorePermit,
}

impl Drop for Control {
    fn drop(&mut self) {
        {
            let mut running = self.running.by_connection.lock().expect("running lock");
            if running.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
                running.remove(&self.key);
            }
        }
        if let Some(logged) = self.logged.lock().expect("log lock").take() {
            let outcome = match self.failed.lock().expect("log lock").take() {
                Some(error) => Err(error),
                None => Ok(self.rows.load(Ordering::Relaxed) as usize),
            };
            logged.finish(outcome);
        }
    }
}

impl Control {
    /// Notes that the statement failed before it produced rows.
    pub(super) fn fail(&self, error: &impl std::fmt::Display) {
        *self.failed.lock().expect("log lock") = Some(error.to_string());
    }

    /// The response with its rows ending in 57014 once cancelled or past the deadline.
    pub(super) fn watch(self: &Arc<Self>, response: Response) -> Response {
        let Response::Query(query) = response else {
            return response;
        };
        let control = self.clone();
        let tag = query.command_tag().to_owned();
        let mut rows = query.data_rows;
        let mut cancelled = Box::pin(control.token.clone().cancelled_owned());
        let mut timeout = control
            .deadline
            .map(|d| Box::pin(tokio::time::sleep_until(d)));
        let mut done = false;
        let rows = futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            if done {
                return Poll::Ready(None);
            }
            let message = if cancelled.as_mut().poll(cx).is_ready() {
                Some("canceling statement due to user request")
            } else if timeout
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
            {
                Some("canceling statement due to statement timeout")
            } else {
                None
            };
            if let Some(message) = message {
                done = true;
                *control.failed.lock().expect("log lock") = Some(message.to_owned());
                return Poll::Ready(Some(Err(user_error("ERROR", "57014", message.to_owned()))));
            }
            let next = rows.as_mut().poll_next(cx);
            match &next {
                Poll::Ready(Some(Ok(_))) => {
                    control.rows.fetch_add(1, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e))) => {
                    *control.failed.lock().expect("log lock") = Some(e.to_string());
                }
                _ => {}
            }
            next
        });
        let mut watched = QueryResponse::new(query.row_schema, rows);
        watched.set_command_tag(&tag);
        Response::Query(watched)
    }
}

/// Cancels a connection's statement while it is planned (pgwire) or while its rows are
/// computed (Gannet).
#[derive(Debug)]
pub(super) struct Canceller {
    pub(super) planning: DefaultCancelHandler,
    pub(super) running: Arc<Running>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.running.cancel(request.pid, &request.secret_key);
        self.planning.on_cancel_request(request).await;
    }
}
