//! Real brokers for the upstream tests: `nats-server` with JetStream and `mosquitto`, each
//! started on a free loopback port with its own temp folder, killed on drop. Plus a JetStream
//! reader and helpers to run marketbox as a child process.
#![allow(dead_code)]

pub use crate::tmp::{TempDir, free_port};

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// How `nats-server` authenticates clients.
#[derive(Clone, Debug, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    User(String, String),
}

/// A `nats-server -js` on a free loopback port, its store in a temp folder.
pub struct Nats {
    pub port: u16,
    auth: NatsAuth,
    /// Server certificate and key (PEM files) when it speaks TLS.
    tls: Option<(PathBuf, PathBuf)>,
    store: TempDir,
    child: Option<Child>,
}

/// A throwaway CA and a `localhost` server certificate signed by it, as PEM files in `dir`:
/// (CA, certificate, key).
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "marketbox test broker CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = params.signed_by(&key, &ca).expect("leaf");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write the CA");
    std::fs::write(&paths.1, leaf.pem()).expect("write the certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write the key");
    for p in [&paths.1, &paths.2] {
        // mosquitto drops to its own user and must read them.
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
        std::fs::set_permissions(p, mode).expect("chmod");
    }
    paths
}

impl Nats {
    pub fn start(auth: NatsAuth) -> Nats {
        Self::start_on(free_port(), auth)
    }

    /// A server on `port` (for tests that start the broker after marketbox).
    pub fn start_on(port: u16, auth: NatsAuth) -> Nats {
        Self::start_full(port, auth, None)
    }

    /// A server speaking TLS with this certificate and key (clients use `tls://localhost`).
    pub fn start_tls(cert: &Path, key: &Path) -> Nats {
        Self::start_full(
            free_port(),
            NatsAuth::None,
            Some((cert.to_owned(), key.to_owned())),
        )
    }

    fn start_full(port: u16, auth: NatsAuth, tls: Option<(PathBuf, PathBuf)>) -> Nats {
        let mut n = Nats {
            port,
            auth,
            tls,
            store: TempDir::new("nats"),
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::Token(t) => {
                cmd.args(["--auth", t]);
            }
            NatsAuth::User(u, p) => {
                cmd.args(["--user", u, "--pass", p]);
            }
        }
        let child = cmd
            .spawn()
            .expect("nats-server runs (tests/run installs it)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "nats-server did not listen on {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("nats://127.0.0.1:{}", self.port),
            Some(_) => format!("tls://localhost:{}", self.port),
        }
    }

    /// SIGKILL: no goodbye, whatever was in flight is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client of this server (for the test's own reads).
    pub async fn client(&self) -> async_nats::Client {
        let opts = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(t) => async_nats::ConnectOptions::new().token(t.clone()),
            NatsAuth::User(u, p) => {
                async_nats::ConnectOptions::new().user_and_password(u.clone(), p.clone())
            }
        };
        opts.connect(self.url()).await.expect("the test connects")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every message of a JetStream stream, in stream order: (subject, payload).
pub fn read_stream(nats: &Nats, stream: &str) -> Vec<(String, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        let mut st = js.get_stream(stream).await.expect("the stream exists");
        let info = st.info().await.expect("stream info").clone();
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in first..=last {
            match st.get_raw_message(seq).await {
                Ok(m) => out.push((m.subject.to_string(), m.payload.to_vec())),
                Err(e) => panic!("message {seq}: {e}"),
            }
        }
        out
    })
}

/// How many messages a JetStream stream holds (0 when it does not exist yet).
pub fn read_stream_len(nats: &Nats, stream: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        match js.get_stream(stream).await {
            Ok(mut st) => st.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        }
    })
}

/// A `mosquitto` with persistence on a free loopback port.
pub struct Mosquitto {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    password: Option<(String, String)>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with(None)
    }

    /// A broker that only lets `user` in with `password` (no anonymous clients).
    pub fn start_with(password: Option<(&str, &str)>) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: TempDir::new("mosquitto"),
            child: None,
            password: password.map(|(u, p)| (u.to_owned(), p.to_owned())),
            tls: None,
        };
        m.spawn();
        m
    }

    /// A broker speaking TLS with this certificate and key (clients use `mqtts://localhost`).
    pub fn start_tls(cert: &Path, key: &Path) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: TempDir::new("mosquitto"),
            child: None,
            password: None,
            tls: Some((cert.to_owned(), key.to_owned())),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("a data folder");
        // Started as root, mosquitto drops to its own user: let that user write its
        // persistence file (the folders are throwaway).
        for d in [self.dir.path(), data.as_path()] {
            let mode =
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777);
            std::fs::set_permissions(d, mode).expect("chmod the broker's folders");
        }
        let auth = match &self.password {
            None => "allow_anonymous true\n".to_owned(),
            Some((u, p)) => {
                let file = self.dir.path().join("passwd");
                let ok = Command::new("mosquitto_passwd")
                    .args(["-c", "-b"])
                    .arg(&file)
                    .args([u, p])
                    .status()
                    .expect("mosquitto_passwd runs");
                assert!(ok.success(), "mosquitto_passwd failed");
                let mode =
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
                std::fs::set_permissions(&file, mode).expect("chmod the password file");
                format!("allow_anonymous false\npassword_file {}\n", file.display())
            }
        };
        let tls = match &self.tls {
            None => String::new(),
            Some((cert, key)) => {
                format!("certfile {}\nkeyfile {}\n", cert.display(), key.display())
            }
        };
        let text = format!(
            "listener {port} 127.0.0.1\n{tls}{auth}persistence true\n\
             persistence_location {data}/\nautosave_interval 1\nmax_queued_messages 0\n\
             max_inflight_messages 0\nlog_dest stderr\nlog_type error\n",
            port = self.port,
            data = data.display()
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (tests/run installs it)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "mosquitto did not listen on {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("mqtt://127.0.0.1:{}", self.port),
            Some(_) => format!("mqtts://localhost:{}", self.port),
        }
    }

    /// A graceful stop (SIGTERM: mosquitto saves its persistence file), then a start on the
    /// same port and data.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let mut c = c;
            let _ = c.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// marketbox as a child process (`marketbox run --config FILE`), its stderr collected.
pub struct Marketbox {
    child: Option<Child>,
    pub stderr: Arc<Mutex<String>>,
    _reader: Option<std::thread::JoinHandle<()>>,
}

impl Marketbox {
    /// Runs `marketbox run --config <config>`; `wrap` (a shell prefix such as a ulimit) is
    /// applied through bash when given.
    pub fn start(config: &Path, wrap: Option<&str>) -> Marketbox {
        Self::start_bin(Path::new(env!("CARGO_BIN_EXE_marketbox")), config, wrap)
    }

    /// [`Marketbox::start`] with another build of the binary (a benchmark comparing builds).
    pub fn start_bin(bin: &Path, config: &Path, wrap: Option<&str>) -> Marketbox {
        Self::start_bin_with_stdout(bin, config, wrap, Stdio::null())
    }

    /// [`Marketbox::start_bin`] with marketbox's stdout sent to `stdout` (`Stdio::piped()`:
    /// read it from [`Marketbox::take_stdout`], and keep reading, or marketbox blocks).
    pub fn start_bin_with_stdout(
        bin: &Path,
        config: &Path,
        wrap: Option<&str>,
        stdout: Stdio,
    ) -> Marketbox {
        let mut cmd = match wrap {
            None => {
                let mut c = Command::new(bin);
                c.arg("run").arg("--config").arg(config);
                c
            }
            Some(prefix) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" run --config \"$1\""))
                    .arg(bin)
                    .arg(config);
                c
            }
        };
        let mut child = cmd
            .env("MARKETBOX_LOG", "info")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("marketbox starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Marketbox {
            child: Some(child),
            stderr,
            _reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The piped stdout of [`Marketbox::start_bin_with_stdout`], once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit: its status, or
    /// `None` if it is still running (then killed).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = i32::try_from(c.id()).ok()?;
        // SAFETY: kill(2) with our own child's pid, not yet waited for, so not reused.
        unsafe {
            libc::kill(pid, signal);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Marketbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// marketbox in-process: the app (sessions on an executor with two threads) and its broker
/// upstream on its own thread.
pub struct InProc {
    pub app: marketbox::app::App,
    pub up: Option<marketbox::upstream::UpstreamHandle>,
    stop: smol::channel::Sender<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl InProc {
    pub fn start(cfg: &marketbox::config::Config) -> InProc {
        let _ = tracing_subscriber::fmt()
            .with_max_level(
                std::env::var("MARKETBOX_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(tracing::Level::WARN),
            )
            .with_test_writer()
            .try_init();
        let ex = Arc::new(smol::Executor::new());
        let app = marketbox::app::App::start(cfg, &ex).expect("app starts");
        let (stop, rx) = smol::channel::bounded::<()>(2);
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (ex, rx) = (ex.clone(), rx.clone());
            threads.push(std::thread::spawn(move || {
                smol::block_on(ex.run(async {
                    let _ = rx.recv().await;
                }))
            }));
        }
        let up =
            marketbox::upstream::start(cfg, app.spool.clone(), app.budget.clone(), &app.metrics)
                .expect("the upstream starts");
        InProc {
            app,
            up: Some(up),
            stop,
            threads,
        }
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.app.metrics.sum(name, labels)
    }

    /// Waits until `metric` reaches `at_least`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: u64,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.metric(name, labels) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for an upstream failure of `kind` to be counted; returns the message it left.
    pub fn failure(&self, kind: &str) -> String {
        assert!(
            self.wait_metric(
                "marketbox_upstream_errors_total",
                &[("kind", kind)],
                1,
                Duration::from_secs(10)
            ),
            "no {kind} failure counted"
        );
        self.up
            .as_ref()
            .and_then(|u| u.last_error())
            .unwrap_or_default()
    }

    /// Collection goes on: 50 more messages published within 10 s, and the upstream is down.
    pub fn assert_collecting_while_down(&self) {
        let before = self.metric("marketbox_messages_total", &[]);
        assert!(self.wait_metric(
            "marketbox_messages_total",
            &[],
            before + 50,
            Duration::from_secs(10)
        ));
        assert_eq!(self.metric("marketbox_upstream_up", &[]), 0);
    }

    /// Stops the sessions, lets the upstream deliver everything left, and waits for it.
    pub fn stop_and_drain(&mut self, timeout: Duration) {
        self.app.stop();
        let up = self.up.take().expect("running");
        let deadline = Instant::now() + timeout;
        while !up.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the upstream did not drain in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        up.join().expect("the upstream ended cleanly");
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(up) = self.up.take() {
            up.abort();
        }
        self.app.stop();
        for _ in 0..2 {
            let _ = self.stop.try_send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A simulator that prints a book diff every 10 ms and trades in 90 % of them.
pub fn busy_sim() -> crate::sim::Sim {
    crate::sim::Sim::start(crate::sim::SimOptions {
        diff_interval: Duration::from_millis(10),
        trade_chance_pct: 90,
        ..crate::sim::SimOptions::default()
    })
}

/// A config collecting Binance spot books and trades of two symbols from the simulator, with
/// short backoffs; `extra` adds sections (the upstream, the spool).
pub fn spot_feed(sim: &crate::sim::Sim, extra: &str) -> String {
    format!(
        r#"
[device]
id = "test-box"
[metrics]
listen = "127.0.0.1:0"
[budget]
max_connections = 4
[book]
depth = 5
[session]
connect_timeout = "2s"
backoff_min = "50ms"
backoff_max = "1s"
[tls]
extra_ca = "{ca}"
[venues.binance]
spot_ws = "{ws}"
spot_rest = "{rest}"
[[feeds]]
exchange = "binance"
market = "spot"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade"]
{extra}
"#,
        ca = sim.ca_pem_path().display(),
        ws = sim.spot_ws(),
        rest = sim.rest(),
    )
}

/// Stops the simulator's feed (sockets stay open, nothing more is sent) and waits for the
/// last frames to be handled, so nothing is published while a test stops marketbox.
pub fn quiesce(sim: &crate::sim::Sim) {
    sim.disconnect_all(crate::sim::Disconnect::Silence);
    std::thread::sleep(Duration::from_millis(300));
}

/// What a consumer saw, checked stream by stream.
#[derive(Debug, Default)]
pub struct Seen {
    pub messages: u64,
    /// Per (exchange, market, symbol, channel): the messages, in arrival order.
    pub streams: std::collections::BTreeMap<String, Vec<marketbox::model::Message>>,
}

impl Seen {
    pub fn from_payloads<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Seen {
        let mut s = Seen::default();
        for p in payloads {
            let m: marketbox::model::Message =
                serde_json::from_slice(p).expect("a marketbox JSON message");
            s.messages += 1;
            let key = format!("{}.{}.{}.{}", m.channel, m.exchange, m.market, m.symbol);
            s.streams.entry(key).or_default().push(m);
        }
        s
    }

    /// Every stream's `seq` runs 1, 2, 3, … without a gap or a repeat, in arrival order.
    pub fn assert_in_order_exactly_once(&self) {
        for (k, msgs) in &self.streams {
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(m.seq, i as u64 + 1, "{k}: message {i} has seq {}", m.seq);
            }
        }
    }

    /// Trade ids of every trade stream, in arrival order.
    pub fn trade_ids(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        self.streams
            .iter()
            .filter(|(k, _)| k.starts_with("trade."))
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .map(|m| match &m.data {
                            marketbox::model::Data::Trade(t) => t.trade_id,
                            other => panic!("{k}: not a trade: {other:?}"),
                        })
                        .collect(),
                )
            })
            .collect()
    }

    /// No trade missing between the first and the last seen, none twice.
    pub fn assert_trades_contiguous(&self) {
        for (k, ids) in self.trade_ids() {
            for w in ids.windows(2) {
                assert_eq!(w[1], w[0] + 1, "{k}: trade {} follows {}", w[1], w[0]);
            }
        }
    }
}
