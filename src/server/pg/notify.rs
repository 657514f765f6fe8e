//! `LISTEN`, `UNLISTEN` and `NOTIFY`, and the connection loop that delivers notifications.
//!
//! pgwire's own loop only answers what the client sends; a notification must reach an idle
//! client on its own. So each connection runs [`serve_connection`]: pgwire's message handling
//! (`process_message`), and, while the connection listens on a channel, the notification
//! feed, whichever comes first. Scoring alerts are notifications on channel
//! [`ALERTS_CHANNEL`] of their database.

use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, Sink, SinkExt, StreamExt};
use gannet_query::scoring::ScoringState;
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::NotificationResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio_util::codec::{Framed, FramedParts};

use super::cork::Corked;
use super::{PgHandlers, database_of};

/// The channel scoring alerts are notified on.
pub const ALERTS_CHANNEL: &str = "gannet_alerts";

/// Where a connection keeps the channels it listens on (one per line); under
/// `GANNET_METADATA`, so that no client sets it as a start-up parameter.
const LISTENING: &str = "gannet.listening";

/// How long a new connection has to finish its start-up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A notification on its way to listeners.
#[derive(Debug, Clone)]
pub struct Notification {
    pub database: String,
    pub channel: String,
    pub payload: String,
    /// The process id of the connection that sent it (0 for Gannet itself).
    pub pid: i32,
}

/// Every notification of the server, to every connection that listens.
#[derive(Debug, Clone)]
pub struct Notifications {
    tx: broadcast::Sender<Arc<Notification>>,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Notifications {
    pub fn publish(&self, notification: Notification) {
        // No listener is fine.
        let _ = self.tx.send(Arc::new(notification));
    }

    /// Notifies every scoring alert on [`ALERTS_CHANNEL`] of its database, its JSON as the
    /// payload, until `stopped`.
    pub async fn forward_alerts(
        self,
        scoring: Arc<ScoringState>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut alerts = scoring.subscribe();
        loop {
            tokio::select! {
                alert = alerts.recv() => match alert {
                    Ok(alert) => self.publish(Notification {
                        database: alert.database.clone(),
                        channel: ALERTS_CHANNEL.to_owned(),
                        payload: alert.to_json(),
                        pid: 0,
                    }),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "alert notifications fell behind; some were not sent");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// The channels a connection listens on.
pub fn listening(client: &(impl ClientInfo + ?Sized)) -> Vec<&str> {
    client
        .metadata()
        .get(LISTENING)
        .map(|channels| channels.lines().collect())
        .unwrap_or_default()
}

/// `LISTEN channel`: notifications on `channel` reach this connection from now on.
pub fn listen(client: &mut (impl ClientInfo + ?Sized), channel: &str) {
    let mut channels: Vec<String> = listening(client).into_iter().map(str::to_owned).collect();
    if !channels.iter().any(|c| c == channel) {
        channels.push(channel.to_owned());
    }
    client
        .metadata_mut()
        .insert(LISTENING.to_owned(), channels.join("\n"));
}

/// `UNLISTEN channel` (or `UNLISTEN *` for every channel).
pub fn unlisten(client: &mut (impl ClientInfo + ?Sized), channel: &str) {
    let channels: Vec<String> = listening(client)
        .into_iter()
        .filter(|c| channel != "*" && *c != channel)
        .map(str::to_owned)
        .collect();
    client
        .metadata_mut()
        .insert(LISTENING.to_owned(), channels.join("\n"));
}

/// Serves one Postgres connection: pgwire's handling of each message, and notifications for
/// the channels it listens on while it waits for the next one.
pub async fn serve_connection(
    tcp: TcpStream,
    handlers: Arc<PgHandlers>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();

    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    let socket = tokio::select! {
        _ = &mut deadline => return Ok(()),
        socket = negotiate_tls(tcp, tls) => socket?,
    };
    let Some(socket) = socket else {
        return Ok(());
    };
    // Replies are held until the client waits for them (see `cork`).
    let parts = socket.into_parts();
    let mut corked = FramedParts::new(Corked::new(parts.io), parts.codec);
    corked.read_buf = parts.read_buf;
    corked.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(corked);
    let mut feed: Option<broadcast::Receiver<Arc<Notification>>> = None;
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let listens = !listening(&socket.codec().client_info).is_empty();
        if listens && feed.is_none() {
            feed = Some(handlers.notifications.tx.subscribe());
        } else if !listens {
            feed = None;
        }
        let message = tokio::select! {
            _ = &mut deadline, if starting => None,
            // pgwire's decoder panics on some malformed messages (a declared length below
            // 4): a malformed message, not a reason to lose the task without a word.
            message = AssertUnwindSafe(socket.next()).catch_unwind() => match message {
                Ok(message) => message,
                Err(_) => Some(Err(PgWireError::IoError(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a message length below its own header",
                )))),
            },
            notification = next(&mut feed) => {
                let info = &socket.codec().client_info;
                if notification.database == database_of(info)
                    && listening(info).contains(&notification.channel.as_str())
                {
                    let message = NotificationResponse::new(
                        notification.pid,
                        notification.channel.clone(),
                        notification.payload.clone(),
                    );
                    socket
                        .feed(PgWireBackendMessage::NotificationResponse(message))
                        .await?;
                    flush(&mut socket).await?;
                }
                continue;
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            // Bytes that are not a message (a length out of bounds, text that is not UTF-8):
            // say so, as PostgreSQL does, and close; the stream cannot be trusted after it.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "closing a connection that sent a malformed message");
                let error = ErrorInfo::new(
                    "FATAL".to_owned(),
                    "08P01".to_owned(),
                    format!("invalid message: {e}"),
                );
                let _ = socket
                    .feed(PgWireBackendMessage::ErrorResponse(error.into()))
                    .await;
                let _ = flush(&mut socket).await;
                return Ok(());
            }
            None => return Ok(()),
        };
        // The client is leaving: close, as PostgreSQL does (asyncpg waits for it).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let in_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        // As PostgreSQL does, the replies to these wait for a Sync or a Flush.
        let held = matches!(
            message,
            PgWireFrontendMessage::Parse(_)
                | PgWireFrontendMessage::Bind(_)
                | PgWireFrontendMessage::Describe(_)
                | PgWireFrontendMessage::Execute(_)
                | PgWireFrontendMessage::Close(_)
        );
        let outcome = process_message(
            message,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(mut e) = outcome {
            errors.on_error(&socket, &mut e);
            let error = ErrorInfo::from(e);
            let fatal = error.is_fatal();
            process_error(
                &mut socket,
                PgWireError::UserError(Box::new(error)),
                in_extended,
            )
            .await?;
            flush(&mut socket).await?;
            // A failed start-up (a wrong password, an unknown database) or any FATAL error
            // ends the connection: nothing the client sends after it is read.
            if fatal || starting {
                return Ok(());
            }
        } else if !held || matches!(socket.state(), PgWireConnectionState::CopyInProgress(_)) {
            // A client starting a COPY waits for CopyInResponse, whatever the protocol.
            flush(&mut socket).await?;
        }
    }
}

/// Sends what the connection holds.
async fn flush<S, C>(socket: &mut Framed<Corked<S>, C>) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
    Framed<Corked<S>, C>: Sink<PgWireBackendMessage, Error = std::io::Error> + Unpin,
{
    socket.get_mut().release(true);
    let flushed = socket.flush().await;
    socket.get_mut().release(false);
    flushed
}

/// The next notification of `feed`; never, without one. Notifications missed by falling
/// behind are skipped.
async fn next(feed: &mut Option<broadcast::Receiver<Arc<Notification>>>) -> Arc<Notification> {
    let Some(rx) = feed else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(notification) => return notification,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "a listening connection fell behind; notifications skipped"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}
