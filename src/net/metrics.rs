//! A minimal Prometheus text endpoint: `GET /metrics` (any path works) over HTTP/1.x, one
//! request per connection. Requests are bounded in size and time so a slow or hostile client
//! cannot pin resources.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Shutdown;

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;

/// Serves `render()` to every request until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut shutdown: Shutdown,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // over the connection limit: drop it
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &*render)).await;
            drop(permit);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut used = 0;
    while !buf[..used].windows(4).any(|w| w == b"\r\n\r\n") {
        if used == buf.len() {
            return stream
                .write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        let n = stream.read(&mut buf[used..]).await?;
        if n == 0 {
            return Ok(());
        }
        used += n;
    }
    let get = buf.starts_with(b"GET ");
    let (status, body) = if get {
        ("200 OK", render())
    } else {
        ("405 Method Not Allowed", String::from("only GET\n"))
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
