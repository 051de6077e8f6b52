//! The agent's tiny HTTP/1.1 client, shared by the health check and the
//! metrics scrape: one GET with `Connection: close` to an instance on
//! this host. Enough for a health endpoint (only the status line is read)
//! and a Prometheus endpoint (the whole answer, bounded), and it keeps the
//! agent free of an HTTP stack.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::HttpTarget;

/// Longest status line accepted before giving up on the response.
const MAX_STATUS_LINE: usize = 4096;
/// Longest header block accepted.
const MAX_HEADERS: usize = 64 * 1024;

/// Connects to `target` and sends the GET.
async fn send(target: &HttpTarget, accept: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: drover-agent\r\nAccept: {accept}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        target.path,
        target.host_header()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    Ok(stream)
}

/// GETs `target` and reads only the status code.
pub async fn status(target: &HttpTarget) -> Result<u16, String> {
    let mut stream = send(target, "*/*").await?;
    let mut buf = [0u8; 512];
    let mut line = Vec::with_capacity(64);
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        if line.contains(&b'\n') || line.len() > MAX_STATUS_LINE {
            break;
        }
    }
    parse_status_line(&line)
}

/// GETs `target` and reads the whole answer: Ok(body) for a 200, with at
/// most `max_body` bytes (plain or chunked); Err says why not.
pub async fn get_body(
    target: &HttpTarget,
    accept: &str,
    max_body: usize,
) -> Result<Vec<u8>, String> {
    let mut stream = send(target, accept).await?;
    let limit = MAX_HEADERS + max_body;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            break;
        }
        if raw.len() + n > limit {
            return Err(format!("response larger than {max_body} bytes"));
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "response ended inside its headers".to_string())?;
    let (head, body) = (&raw[..split], &raw[split + 4..]);
    let status = parse_status_line(head)?;
    if status != 200 {
        return Err(format!("HTTP status {status}, expected 200"));
    }
    let head = String::from_utf8_lossy(head);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err("the response is compressed; expected identity encoding".to_string());
    }
    let body = if header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if body.len() < len {
            return Err(format!(
                "response ended after {} of {len} body bytes",
                body.len()
            ));
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > max_body {
        return Err(format!("response larger than {max_body} bytes"));
    }
    Ok(body)
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "chunked body ended inside a chunk size".to_string())?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunked body ended inside a chunk".to_string());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Reads the status code out of `HTTP/1.x NNN reason`.
pub fn parse_status_line(bytes: &[u8]) -> Result<u16, String> {
    if bytes.is_empty() {
        return Err("connection closed before a response".into());
    }
    let end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..end]);
    let line = line.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        let mut shown: String = line.chars().take(80).collect();
        if shown.len() < line.len() {
            shown.push('…');
        }
        return Err(format!("not an HTTP/1.x response: {shown:?}"));
    }
    code.parse::<u16>()
        .map_err(|_| format!("bad status code {code:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_and_refuses_cut_ones() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").expect("chunked"),
            b"hello world"
        );
        assert!(dechunk(b"5\r\nhel").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Ok(503));
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
