//! Holding a connection's replies until the client waits for them.
//!
//! pgwire flushes after several of the messages it sends (BindComplete, CommandComplete,
//! ReadyForQuery, ...), so a prepared statement's round trip cost four `send` calls, each a
//! TCP segment the client wakes up for. PostgreSQL sends the replies of an extended-protocol
//! batch when the client asks for them, at `Sync` or `Flush`, and the reply to a simple query
//! when it is complete. [`Corked`] does the same under pgwire: a flush is held until the
//! connection loop lets it through ([`Corked::release`]), and what it holds goes out on its
//! own once it reaches [`HELD_BYTES`], so a large result streams in bounded memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a connection holds back before writing it out anyway.
pub const HELD_BYTES: usize = 64 * 1024;

/// A stream whose writes are held until released.
#[derive(Debug)]
pub struct Corked<S> {
    inner: S,
    held: Vec<u8>,
    /// Bytes of `held` already written to `inner`.
    written: usize,
    /// Flushes go through while set.
    released: bool,
}

impl<S> Corked<S> {
    pub fn new(inner: S) -> Self {
        Corked {
            inner,
            held: Vec::new(),
            written: 0,
            released: false,
        }
    }

    /// Lets flushes through (`true`) or holds them (`false`).
    pub fn release(&mut self, released: bool) {
        self.released = released;
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        // One huge message (a wide row) does not keep its memory for the connection's life.
        if self.held.capacity() > 2 * HELD_BYTES {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HELD_BYTES {
            ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.released {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_are_held_until_released_and_large_ones_stream() {
        let (client, mut server) = tokio::io::duplex(4 * HELD_BYTES);
        let mut corked = Corked::new(client);
        corked.write_all(b"parse-complete").await.unwrap();
        corked.flush().await.unwrap();
        corked.write_all(b" bind-complete").await.unwrap();
        corked.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(nothing.is_err(), "a held write reached the peer");

        corked.release(true);
        corked.flush().await.unwrap();
        let mut got = vec![0u8; 28];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"parse-complete bind-complete");

        // Held, but past HELD_BYTES the bytes go out without a release.
        corked.release(false);
        let rows = vec![7u8; HELD_BYTES + 1];
        corked.write_all(&rows).await.unwrap();
        corked.write_all(b"x").await.unwrap();
        let mut got = vec![0u8; HELD_BYTES + 1];
        server.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));

        // Shutting down writes what is held.
        corked.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
    }
}
