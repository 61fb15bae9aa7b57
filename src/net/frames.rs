//! Session frames over a byte stream (the TCP fallback for networks that block UDP): each
//! frame is prefixed with its length as 2 bytes, big-endian. The session layer above is the
//! same as over UDP; the stream only carries its datagrams.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted from a stream (a session frame is at most 1232 bytes).
pub const MAX_FRAME: usize = 2048;

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<()>> {
    let mut len = [0u8; 2];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    buf.resize(len, 0);
    rd.read_exact(buf).await?;
    Ok(Some(()))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() || data.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad frame length",
        ));
    }
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    wr.write_all(&out).await
}
