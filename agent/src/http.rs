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
/// most `max_body` bytes (plain or chunked); Err says why not. Reads
/// until the body is complete (Content-Length, the last chunk) or the
/// server closes, whichever comes first.
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
        if let Some(head) = Head::parse(&raw) {
            if head.content_length.is_some_and(|len| len > max_body) {
                return Err(format!("response larger than {max_body} bytes"));
            }
            if head.complete(&raw[head.len..]) {
                break;
            }
        }
    }
    let head = Head::parse(&raw).ok_or_else(|| {
        if raw.is_empty() {
            "connection closed before a response".to_string()
        } else {
            "response ended inside its headers".to_string()
        }
    })?;
    let status = parse_status_line(&raw)?;
    if status != 200 {
        return Err(format!("HTTP status {status}, expected 200"));
    }
    if head.encoded {
        return Err("the response is compressed; expected identity encoding".to_string());
    }
    let body = &raw[head.len..];
    let body = if head.chunked {
        dechunk(body)?
    } else if let Some(len) = head.content_length {
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

/// What the headers say about the body.
struct Head {
    /// Bytes up to and including the blank line.
    len: usize,
    chunked: bool,
    content_length: Option<usize>,
    /// A content encoding other than identity.
    encoded: bool,
}

impl Head {
    /// None until the blank line ending the headers has arrived.
    fn parse(raw: &[u8]) -> Option<Head> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let text = String::from_utf8_lossy(&raw[..end]);
        let header = |name: &str| {
            text.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        Some(Head {
            len: end + 4,
            chunked: header("transfer-encoding").is_some_and(|t| t.contains("chunked")),
            content_length: header("content-length").and_then(|l| l.parse().ok()),
            encoded: header("content-encoding").is_some_and(|e| e != "identity"),
        })
    }

    /// Whether `body` (what came after the headers so far) is all of it.
    fn complete(&self, body: &[u8]) -> bool {
        if self.chunked {
            body.ends_with(b"0\r\n\r\n") && dechunk(body).is_ok()
        } else {
            self.content_length.is_some_and(|len| body.len() >= len)
        }
    }
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

    /// Answers one connection with `answer` and then holds it open.
    async fn serve_and_hold(answer: &'static [u8]) -> HttpTarget {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(answer).await;
            // Held open: the client must stop at the end of the body.
            let _ = sock.read(&mut buf).await;
        });
        HttpTarget {
            host: "127.0.0.1".into(),
            port,
            path: "/metrics".into(),
            expect_status: 200,
        }
    }

    #[tokio::test]
    async fn reads_a_body_to_its_end_even_when_the_server_keeps_the_connection() {
        let within = |f| tokio::time::timeout(std::time::Duration::from_secs(10), f);
        let t = serve_and_hold(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        let body = within(get_body(&t, "*/*", 100)).await.expect("in time");
        assert_eq!(body.as_deref(), Ok(&b"hello"[..]));
        let t = serve_and_hold(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let body = within(get_body(&t, "*/*", 100)).await.expect("in time");
        assert_eq!(body.as_deref(), Ok(&b"abcde"[..]));
        let t = serve_and_hold(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").await;
        let e = within(get_body(&t, "*/*", 100)).await.expect("in time");
        assert_eq!(e, Err("HTTP status 503, expected 200".to_string()));
        let t = serve_and_hold(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n").await;
        let e = within(get_body(&t, "*/*", 100)).await.expect("in time");
        assert_eq!(e, Err("response larger than 100 bytes".to_string()));
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Ok(503));
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
