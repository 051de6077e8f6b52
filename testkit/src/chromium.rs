//! Headless Chromium (Debian `chromium`) for tests of web pages.
//!
//! Two ways to use it:
//! - one-shot runs: [`dump_dom`] prints the DOM after the page's scripts
//!   ran, [`screenshot`] writes a PNG;
//! - a [`Browser`] driven through the DevTools protocol over its
//!   websocket, which keeps a page open: a test evaluates JavaScript in it
//!   ([`Browser::eval`]), waits until an expression holds
//!   ([`Browser::wait_for`]), so it sees a live page change without a
//!   reload, and takes screenshots of it.
//!
//! Every run has its own profile in a temp dir, is bounded by a timeout,
//! and is killed with its whole process group on drop (and when the
//! thread that started it dies). Nothing sleeps: waits poll a condition
//! with a deadline.
//!
//! As root (tests here run as root) Chromium needs `--no-sandbox`; it
//! prints harmless dbus errors on stderr.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tungstenite::{Message, WebSocket};

/// The size of the window pages are laid out in.
pub const WINDOW: (u32, u32) = (1280, 900);

#[derive(Debug, thiserror::Error)]
pub enum ChromiumError {
    #[error(
        "no Chromium at {0}: install Debian's `chromium` (scripts/setup does) or set CHROMIUM; \
         the web view's tests need a real browser and are not skipped without one"
    )]
    Missing(PathBuf),
    #[error("start Chromium: {0}")]
    Spawn(std::io::Error),
    #[error("timed out after {:.1}s waiting until {what}", .after.as_secs_f64())]
    Timeout { what: String, after: Duration },
    #[error("Chromium exited before {what}: {status}; stderr: {stderr}")]
    Exited {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("DevTools protocol: {0}")]
    Protocol(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChromiumError {
    let what = what.into();
    move |source| ChromiumError::Io { what, source }
}

/// `$CHROMIUM`, else `/usr/bin/chromium`.
pub fn binary() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A Chromium process with its own profile; killed (its whole process
/// group) on drop.
struct Proc {
    child: Child,
    profile: TempDir,
}

impl Proc {
    fn spawn(args: &[String], stdout: Stdio) -> Result<Proc, ChromiumError> {
        let bin = binary();
        if !bin.is_file() {
            return Err(ChromiumError::Missing(bin));
        }
        let profile = tempfile::Builder::new()
            .prefix("drover-chromium-")
            .tempdir()
            .map_err(io("create a Chromium profile dir"))?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(ChromiumError::Spawn)?;
        Ok(Proc { child, profile })
    }

    /// Waits for the exit, up to `timeout`; the exit status.
    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, ChromiumError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("wait for Chromium"))? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(ChromiumError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                });
            }
            crate::pause(crate::POLL);
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        // Lines about dbus and the like are noise here.
        text.lines()
            .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id())
            && pid > 1
        {
            // SAFETY: kill(2) takes plain integers and touches no memory
            // of ours; -pid is the group the child leads.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads all of `r` on a thread, so a full pipe never blocks the child.
fn drain(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(r).read_to_string(&mut text);
        text
    })
}

/// The DOM of `url` after its scripts ran (`--dump-dom` with a virtual
/// time budget of `budget`), within `timeout`. A page that keeps a
/// connection open (server-sent events) never lets the budget run out:
/// read such a page with a [`Browser`].
pub fn dump_dom(url: &str, budget: Duration, timeout: Duration) -> Result<String, ChromiumError> {
    let mut p = Proc::spawn(
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            "--dump-dom".to_string(),
            url.to_string(),
        ],
        Stdio::piped(),
    )?;
    let out = p
        .child
        .stdout
        .take()
        .ok_or_else(|| ChromiumError::Protocol("no stdout".into()))?;
    let reader = drain(out);
    let status = p.wait(&format!("Chromium dumped the DOM of {url}"), timeout)?;
    let dom = reader.join().unwrap_or_default();
    if !status.success() || dom.trim().is_empty() {
        return Err(ChromiumError::Exited {
            what: format!("dumping the DOM of {url}"),
            status: status.to_string(),
            stderr: p.stderr(),
        });
    }
    Ok(dom)
}

/// A PNG of `url` in a [`WINDOW`]-sized window, written to `path`.
pub fn screenshot(url: &str, path: &Path, timeout: Duration) -> Result<(), ChromiumError> {
    let mut p = Proc::spawn(
        &[
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!("--screenshot={}", path.display()),
            url.to_string(),
        ],
        Stdio::null(),
    )?;
    let status = p.wait(&format!("Chromium took a screenshot of {url}"), timeout)?;
    if !status.success() || !path.is_file() {
        return Err(ChromiumError::Exited {
            what: format!("taking a screenshot of {url}"),
            status: status.to_string(),
            stderr: p.stderr(),
        });
    }
    Ok(())
}

/// One page in a headless Chromium, driven through the DevTools protocol.
pub struct Browser {
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Exceptions thrown by the page's scripts and console or network
    /// errors (a refused resource, a Content-Security-Policy violation),
    /// as they were reported.
    errors: Vec<String>,
    // Last: the connection closes before the process is killed.
    _proc: Proc,
}

/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts Chromium with a [`WINDOW`]-sized page open on `about:blank`.
    pub fn launch(timeout: Duration) -> Result<Browser, ChromiumError> {
        let mut proc = Proc::spawn(
            &[
                "--remote-debugging-port=0".to_string(),
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                "about:blank".to_string(),
            ],
            Stdio::null(),
        )?;
        // Chromium writes the port it chose and the browser's websocket
        // path into the profile once it listens.
        let file = proc.profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(f) = std::fs::File::open(&file) {
                let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
                if let [port, path, ..] = lines.as_slice()
                    && let Ok(port) = port.trim().parse::<u16>()
                {
                    break (port, path.trim().to_string());
                }
            }
            if let Some(status) = proc.child.try_wait().map_err(io("wait for Chromium"))? {
                return Err(ChromiumError::Exited {
                    what: "its DevTools port was open".into(),
                    status: status.to_string(),
                    stderr: proc.stderr(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(ChromiumError::Timeout {
                    what: format!("Chromium wrote {}", file.display()),
                    after: timeout,
                });
            }
            crate::pause(crate::POLL);
        };
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(io(format!("connect to Chromium's DevTools on port {port}")))?;
        // The handshake blocks (bounded); later reads wake up often, so a
        // call notices its own deadline.
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(io("set a read timeout"))?;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client::client(url.as_str(), stream)
            .map_err(|e| ChromiumError::Protocol(format!("websocket handshake with {url}: {e}")))?;
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io("set a read timeout"))?;
        let mut b = Browser {
            ws,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
            _proc: proc,
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| ChromiumError::Protocol(format!("no targetId in {target}")))?
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| ChromiumError::Protocol(format!("no sessionId in {attached}")))?
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(domain, json!({}))?;
        }
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(b)
    }

    /// Sends a DevTools command (to the page once attached) and waits for
    /// its answer; events read meanwhile are kept when they report errors.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ChromiumError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| ChromiumError::Protocol(format!("send {method}: {e}")))?;
        let start = Instant::now();
        loop {
            if start.elapsed() >= CALL_TIMEOUT {
                return Err(ChromiumError::Timeout {
                    what: format!("Chromium answered {method}"),
                    after: CALL_TIMEOUT,
                });
            }
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(ChromiumError::Protocol(format!("read ({method}): {e}"))),
            };
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| ChromiumError::Protocol(format!("{e}: {text}")))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(ChromiumError::Protocol(format!("{method}: {err}")));
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or_else(|| d["text"].as_str())
                    .unwrap_or("exception");
                self.errors.push(format!("exception: {text}"));
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                let e = &v["params"]["entry"];
                self.errors.push(format!(
                    "{}: {} {}",
                    e["source"].as_str().unwrap_or("log"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }

    /// Errors the pages reported so far (see the field).
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Evaluates `expression` in the page; its value (as JSON). An
    /// exception in it is an error.
    pub fn eval(&mut self, expression: &str) -> Result<Value, ChromiumError> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(ChromiumError::Protocol(format!(
                "`{expression}` threw: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string())
            )));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or "");
    /// its value. `timeout` bounds the wait.
    pub fn wait_for(
        &mut self,
        expression: &str,
        timeout: Duration,
    ) -> Result<Value, ChromiumError> {
        let start = Instant::now();
        loop {
            let v = self.eval(expression)?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if start.elapsed() >= timeout {
                return Err(ChromiumError::Timeout {
                    what: format!("`{expression}` held (last: {v})"),
                    after: timeout,
                });
            }
            crate::pause(crate::POLL);
        }
    }

    /// Loads `url` and waits until the document and its resources are
    /// loaded.
    pub fn open(&mut self, url: &str, timeout: Duration) -> Result<(), ChromiumError> {
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            return Err(ChromiumError::Protocol(format!("navigate to {url}: {e}")));
        }
        self.wait_for(
            &format!(
                "location.href === {} && document.readyState === 'complete'",
                Value::String(url.to_string())
            ),
            timeout,
        )
        .map(|_| ())
    }

    /// The page's markup as it is now.
    pub fn dom(&mut self) -> Result<String, ChromiumError> {
        let v = self.eval("document.documentElement.outerHTML")?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// A PNG of the whole page (as wide as the window, as tall as the
    /// content up to `max_height` CSS pixels), drawn at `scale` (1.0: one
    /// image pixel per CSS pixel; 0.75 makes a smaller file), written to
    /// `path`.
    pub fn screenshot(
        &mut self,
        path: &Path,
        max_height: u32,
        scale: f64,
    ) -> Result<(), ChromiumError> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")?
            .as_f64()
            .unwrap_or(f64::from(WINDOW.1))
            .clamp(1.0, f64::from(max_height));
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": WINDOW.0, "height": height, "scale": scale },
            }),
        )?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| ChromiumError::Protocol("no screenshot data".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| ChromiumError::Protocol(format!("screenshot is not base64: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        std::fs::write(path, png).map_err(io(format!("write {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serves `pages` (path -> HTML) on loopback until dropped; at most
    /// `n` requests.
    fn serve(
        pages: Vec<(&'static str, String)>,
        n: usize,
    ) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming().take(n) {
                let Ok(mut s) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                // The rest of the request head.
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let body = pages
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone());
                let (code, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("204 No Content", String::new()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{addr}"), handle)
    }

    const PAGE: &str = "<!doctype html><html><body><p id=a>static</p>\
        <script>document.getElementById('a').textContent = 'ran ' + (6 * 7);\
        setTimeout(function(){ document.body.setAttribute('data-later', 'yes'); }, 300);</script>\
        </body></html>";

    #[test]
    fn dumps_the_dom_after_scripts_ran_and_takes_screenshots() {
        let (base, _server) = serve(vec![("/", PAGE.to_string())], 8);
        let dom = dump_dom(&base, Duration::from_secs(2), Duration::from_secs(60)).expect("dump");
        assert!(dom.contains("<p id=\"a\">ran 42</p>"), "{dom}");
        assert!(
            dom.contains("data-later=\"yes\""),
            "the virtual time ran the timer: {dom}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let png = dir.path().join("page.png");
        screenshot(&base, &png, Duration::from_secs(60)).expect("screenshot");
        let bytes = std::fs::read(&png).expect("read png");
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    }

    #[test]
    fn a_browser_evaluates_waits_and_reports_page_errors() {
        let broken =
            "<!doctype html><html><body><script>throw new Error('boom')</script></body></html>";
        let (base, _server) = serve(
            vec![("/", PAGE.to_string()), ("/broken", broken.to_string())],
            8,
        );
        let mut b = Browser::launch(Duration::from_secs(60)).expect("launch");
        b.open(&format!("{base}/"), Duration::from_secs(30))
            .expect("open");
        assert_eq!(
            b.eval("document.getElementById('a').textContent")
                .expect("eval"),
            Value::String("ran 42".into())
        );
        let later = b
            .wait_for(
                "document.body.getAttribute('data-later')",
                Duration::from_secs(10),
            )
            .expect("the timer fires in the open page");
        assert_eq!(later, Value::String("yes".into()));
        assert!(b.errors().is_empty(), "{:?}", b.errors());
        let err = b
            .wait_for("false", Duration::from_millis(100))
            .expect_err("never true");
        assert!(err.to_string().contains("`false` held"), "{err}");

        b.open(&format!("{base}/broken"), Duration::from_secs(30))
            .expect("open");
        b.eval("1").expect("events are read with the next answer");
        assert!(
            b.errors().iter().any(|e| e.contains("boom")),
            "{:?}",
            b.errors()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let png = dir.path().join("shot.png");
        b.screenshot(&png, 2000, 1.0).expect("screenshot");
        assert!(std::fs::read(&png).expect("read").starts_with(b"\x89PNG"));
    }
}
