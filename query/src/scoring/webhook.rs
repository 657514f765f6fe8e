//! Webhook delivery: each alert of a rule with a webhook is POSTed to it as JSON, from a
//! thread of its own, with a bounded queue: a slow or failing webhook delays only other
//! webhooks, never ingest or scoring.
//!
//! A failed POST (no connection, a timeout, a status other than 2xx) is tried again after
//! 0.5, 1, 2, 4 and 8 seconds, then given up with a warning. When the queue is full, new
//! alerts are dropped (still in the `alerts` table), with a warning.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

/// Alerts waiting to be posted, at most.
const QUEUE: usize = 10_000;
/// Attempts per alert.
const ATTEMPTS: u32 = 6;
/// The wait before the first retry; it doubles with each.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One alert on its way to one webhook.
#[derive(Debug)]
struct Delivery {
    url: String,
    body: String,
    attempt: u32,
}

/// What webhook delivery has done, since start.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The delivery thread. Stops when dropped, leaving what is queued undelivered.
#[derive(Debug)]
pub struct Webhooks {
    tx: Option<Sender<Delivery>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    pub fn start() -> Webhooks {
        let (tx, rx) = crossbeam::channel::bounded(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("gannet-webhooks".to_owned())
            .spawn(move || deliver_all(&rx, &thread_stats))
            .expect("spawning the webhook thread");
        Webhooks {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        }
    }

    /// Queues `body` (JSON) to be POSTed to `url`; drops it when the queue is full.
    pub fn send(&self, url: &str, body: String) {
        let Some(tx) = &self.tx else { return };
        let delivery = Delivery {
            url: url.to_owned(),
            body,
            attempt: 0,
        };
        if let Err(TrySendError::Full(delivery)) = tx.try_send(delivery) {
            let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            // Once per thousand, not once per alert.
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    url = %delivery.url,
                    dropped = dropped + 1,
                    "webhook queue full ({QUEUE} alerts); alerts dropped (they are still in the alerts table)"
                );
            }
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn deliver_all(rx: &Receiver<Delivery>, stats: &WebhookStats) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    // Retries by when they are due (then by arrival).
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiting: HashMap<u64, Delivery> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let now = Instant::now();
        let delivery = match due.peek() {
            Some(Reverse((at, id))) if *at <= now => {
                let id = *id;
                due.pop();
                waiting.remove(&id).expect("a due retry is waiting")
            }
            next => {
                let wait = next.map_or(Duration::from_secs(3600), |Reverse((at, _))| {
                    at.saturating_duration_since(now)
                });
                match rx.recv_timeout(wait) {
                    Ok(delivery) => delivery,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let result = agent
            .post(&delivery.url)
            .header("content-type", "application/json")
            .send(delivery.body.as_str());
        match result {
            Ok(_) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if delivery.attempt + 1 < ATTEMPTS => {
                let delay = FIRST_RETRY * 2u32.pow(delivery.attempt);
                tracing::debug!(url = %delivery.url, error = %e, ?delay, "webhook failed; will retry");
                next_id += 1;
                due.push(Reverse((Instant::now() + delay, next_id)));
                let retry = Delivery {
                    attempt: delivery.attempt + 1,
                    ..delivery
                };
                waiting.insert(next_id, retry);
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    url = %delivery.url, error = %e, attempts = ATTEMPTS,
                    "webhook failed; the alert is not delivered to it (it is in the alerts table)"
                );
            }
        }
    }
}
