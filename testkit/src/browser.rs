//! A headless Chromium driven through chromedriver's W3C WebDriver protocol, for browser tests of
//! the console: Debian's `chromium` and `chromium-driver` (`.ci/run` installs them), or the
//! binaries named by `TALLY_CHROMIUM` and `TALLY_CHROMEDRIVER`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key for an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver element reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// One browser session; the driver (and its browser) stop when this is dropped.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn program(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let port = free_port()?;
        let driver_path = program("TALLY_CHROMEDRIVER", "/usr/bin/chromedriver");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            // Its own process group, so the browser it starts goes down with it.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {driver_path} (apt-get install chromium chromium-driver)"))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self { http, session: format!("{base}/session"), driver };
        let started = Instant::now();
        while browser.http.get(format!("{base}/status")).send().await.is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("{driver_path} did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": program("TALLY_CHROMIUM", "/usr/bin/chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), "--lang=en-US"],
            },
        }}});
        let created = browser.call(reqwest::Method::POST, "", capabilities).await?;
        let id = created["sessionId"].as_str().context("no sessionId in the new session's answer")?;
        browser.session = format!("{base}/session/{id}");
        Ok(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        let request = self.http.request(method.clone(), &url);
        let request = if method == reqwest::Method::GET { request } else { request.json(&body) };
        let answer = request.send().await.with_context(|| format!("{method} {url}"))?;
        let status = answer.status();
        let body: Value = answer.json().await.with_context(|| format!("{method} {url}: not JSON"))?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", body["value"]["message"].as_str().unwrap_or_default());
        }
        Ok(body["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url })).await.map(drop)
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let found =
            self.call(reqwest::Method::POST, "/elements", json!({ "using": "css selector", "value": css })).await?;
        let found = found.as_array().cloned().unwrap_or_default();
        Ok(found.iter().filter_map(|e| e[ELEMENT_KEY].as_str()).map(|id| Element(id.to_owned())).collect())
    }

    /// The first element matching `css`, waiting up to `limit` for one to appear.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> anyhow::Result<Element> {
        let started = Instant::now();
        loop {
            if let Some(element) = self.find_all(css).await?.into_iter().next() {
                return Ok(element);
            }
            if started.elapsed() > limit {
                bail!("nothing matched {css:?} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, &format!("/element/{}/click", element.0), json!({})).await.map(drop)
    }

    pub async fn clear(&self, element: &Element) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, &format!("/element/{}/clear", element.0), json!({})).await.map(drop)
    }

    /// Types `text` into `element` (`\u{E007}` is Enter).
    pub async fn type_text(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        let path = format!("/element/{}/value", element.0);
        self.call(reqwest::Method::POST, &path, json!({ "text": text })).await.map(drop)
    }

    /// The element's rendered text.
    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        let text = self.call(reqwest::Method::GET, &format!("/element/{}/text", element.0), Value::Null).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// An attribute of the element (`None` when it has none).
    pub async fn attribute(&self, element: &Element, name: &str) -> anyhow::Result<Option<String>> {
        let path = format!("/element/{}/attribute/{name}", element.0);
        Ok(self.call(reqwest::Method::GET, &path, Value::Null).await?.as_str().map(str::to_owned))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// The page's current address and markup (for a failing test's message).
    pub async fn describe(&self) -> String {
        let url = self.call(reqwest::Method::GET, "/url", Value::Null).await;
        let source = self.call(reqwest::Method::GET, "/source", Value::Null).await;
        format!("at {url:?}: {source:?}")
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", Value::Null).await?;
        let encoded = encoded.as_str().context("the screenshot is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?)
    }

    /// Ends the session and stops the driver.
    pub async fn quit(self) {
        let _ = self.call(reqwest::Method::DELETE, "", Value::Null).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.wait();
    }
}

/// Where a test keeps what it shows (screenshots): `TALLY_ARTEFACTS`, or `target/artefacts`.
pub fn artefact_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("TALLY_ARTEFACTS").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("artefacts")
    });
    let _ = std::fs::create_dir_all(&dir);
    dir
}
