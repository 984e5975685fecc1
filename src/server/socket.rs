//! A connection's socket, so an HTTP/2 answer (a gRPC answer: headers, message, trailers)
//! leaves in one write.
//!
//! h2 writes a DATA frame of 256 bytes or more straight from the caller's buffer (with
//! vectored writes), and cannot queue the next frame (the answer's trailers) until that write
//! has gone: one answer, two writes, two wake-ups of the client. Told that writes are not
//! vectored, h2 copies payloads under 1 KiB into its own buffer, so headers, message and
//! trailers go out together; larger frames are gathered here until h2 flushes, so each still
//! leaves in one write. HTTP/1 keeps vectored writes: hyper then sends a head and its body in
//! one `writev` without copying either.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf},
    net::TcpStream,
};

/// The client preface every HTTP/2 connection opens with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for one full-size DATA frame (16 KiB unless the client allows more) with the frames
/// before it. h2 flushes after each DATA frame it writes from the caller's buffer.
const HTTP2_WRITE_BUFFER: usize = 32 * 1024;

pub struct ServerSocket {
    stream: BufWriter<TcpStream>,
    /// How much of the HTTP/2 preface the first bytes read matched; `None` once they did not.
    preface_matched: Option<usize>,
}

impl ServerSocket {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: BufWriter::with_capacity(HTTP2_WRITE_BUFFER, stream),
            preface_matched: Some(0),
        }
    }

    /// hyper reads the preface (to choose between HTTP/1 and HTTP/2) before either protocol
    /// asks whether writes are vectored, so the answer is known by then.
    fn is_http2(&self) -> bool {
        self.preface_matched == Some(HTTP2_PREFACE.len())
    }

    fn watch_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface_matched else {
            return;
        };
        let wanted = &HTTP2_PREFACE[matched..];
        let compared = read.len().min(wanted.len());
        self.preface_matched =
            (read[..compared] == wanted[..compared]).then_some(matched + compared);
    }

    /// HTTP/1 writes bypass the buffer (hyper gathers them itself).
    fn direct(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.get_mut())
    }
}

impl AsyncRead for ServerSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this
            .preface_matched
            .is_some_and(|matched| matched < HTTP2_PREFACE.len())
        {
            this.watch_preface(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for ServerSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_http2() {
            Pin::new(&mut this.stream).poll_write(cx, buf)
        } else {
            this.direct().poll_write(cx, buf)
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_http2() {
            Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
        } else {
            this.direct().poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        !self.is_http2()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn connected(first_bytes: &[u8]) -> (ServerSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first_bytes).await.unwrap();
        let mut socket = ServerSocket::new(server);
        let mut read = vec![0; first_bytes.len()];
        socket.read_exact(&mut read).await.unwrap();
        assert_eq!(read, first_bytes);
        (socket, client)
    }

    #[tokio::test]
    async fn an_http2_connection_writes_unvectored_and_only_when_flushed() {
        let (mut socket, mut client) = connected(HTTP2_PREFACE).await;
        assert!(!socket.is_write_vectored());
        socket.write_all(b"headers").await.unwrap();
        socket.write_all(b"+trailers").await.unwrap();
        assert_eq!(socket.stream.buffer(), b"headers+trailers");
        socket.flush().await.unwrap();
        let mut received = [0; 16];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"headers+trailers");
    }

    #[tokio::test]
    async fn an_http1_connection_writes_vectored_and_at_once() {
        let (mut socket, mut client) = connected(b"POST /v1/task HTTP/1.1\r\n").await;
        assert!(socket.is_write_vectored());
        socket.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(socket.stream.buffer().is_empty());
        let mut received = [0; 17];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn a_preface_read_in_pieces_is_recognised_and_a_near_miss_is_not() {
        let (mut socket, mut client) = connected(&HTTP2_PREFACE[..5]).await;
        client.write_all(&HTTP2_PREFACE[5..]).await.unwrap();
        let mut rest = vec![0; HTTP2_PREFACE.len() - 5];
        socket.read_exact(&mut rest).await.unwrap();
        assert!(socket.is_http2());

        let mut near_miss = HTTP2_PREFACE.to_vec();
        near_miss[20] = b'X';
        let (socket, _client) = connected(&near_miss).await;
        assert!(!socket.is_http2());
    }
}
