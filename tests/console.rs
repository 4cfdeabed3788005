//! The console as users and scripts drive it (issue #17): the marketbox binary as a child
//! process, its console on a real pty pair and on its Unix socket, the exchange simulator
//! behind it, its stdout read back as messages.

#[path = "common/brokers.rs"]
mod brokers;
#[path = "common/console.rs"]
mod console;
mod sim;
#[path = "common/tmp.rs"]
mod tmp;

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use console::{Service, TempDir, connect, marketbox, openpty, pty_session};
use marketbox::config::Config;
use marketbox::model::{Channel, Data, Message};
use sim::{Endpoint, Mkt, Sim, SimOptions};

const DEPTH: usize = 10;

/// A config collecting Binance spot `symbols` (and, with `perp`, USD-M BTC-USDT) from `sim`,
/// its console on `devices`.
fn sim_config(sim: &Sim, devices: &[String], symbols: &[&str], perp: bool) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let devices: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
    let mut text = format!(
        r#"# A test config: the comments must survive a save.
[budget]
max_connections = 10

[book]
depth = {DEPTH}                      # levels per side

[session]
connect_timeout = "2s"
backoff_min = "20ms"
backoff_max = "200ms"

[metrics]
listen = ""

[console]
devices = [{devices}]

[tls]
extra_ca = "{ca}"

[venues.binance]
spot_ws = "{ws}"
spot_rest = "{rest}"
perpetual_public_ws = "{pp}"
perpetual_market_ws = "{pm}"
perpetual_rest = "{rest}"

[[feeds]]
exchange = "binance"
market = "spot"
symbols = [{symbols}]
channels = ["orderbook", "trade"]
"#,
        devices = devices.join(", "),
        ca = sim.ca_pem_path().display(),
        ws = sim.spot_ws(),
        pp = sim.perp_public_ws(),
        pm = sim.perp_market_ws(),
        rest = sim.rest(),
        symbols = list(symbols),
    );
    if perp {
        text += r#"
[[feeds]]
exchange = "binance"
market = "perpetual"
symbols = ["BTC-USDT"]
channels = ["orderbook", "trade", "funding_rate", "liquidation"]
"#;
    }
    text
}

/// A config without feeds: just the console.
fn console_only(devices: &[String]) -> String {
    let devices: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "# A test config: the comments must survive a save.\n[book]\ndepth = 20      # levels per side\n\n[metrics]\nlisten = \"\"\n\n[console]\ndevices = [{}]\n",
        devices.join(", ")
    )
}

fn sim(symbols: &[&str]) -> Sim {
    Sim::start(SimOptions {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        diff_interval: Duration::from_millis(20),
        ..SimOptions::default()
    })
}

/// Books of `symbol` that are not the simulator's true book at their update id.
fn wrong_books(sim: &Sim, messages: &[Message], symbol: &str) -> (usize, usize) {
    let mut checked = 0;
    let mut wrong = 0;
    for m in messages
        .iter()
        .filter(|m| m.symbol.as_str() == symbol && m.channel == Channel::Orderbook)
    {
        let Data::Orderbook(ob) = &m.data else {
            continue;
        };
        let mkt = if m.market == marketbox::model::Market::Spot {
            Mkt::Spot
        } else {
            Mkt::Perp
        };
        let truth = sim.true_book(mkt, symbol, ob.update_id, DEPTH);
        let got = (
            ob.bids
                .iter()
                .map(|(p, q)| (p.to_string(), q.to_string()))
                .collect::<Vec<_>>(),
            ob.asks
                .iter()
                .map(|(p, q)| (p.to_string(), q.to_string()))
                .collect::<Vec<_>>(),
        );
        checked += 1;
        if truth.as_ref() != Some(&got) {
            wrong += 1;
        }
    }
    (checked, wrong)
}

fn books_of(messages: &[Message], symbol: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.symbol.as_str() == symbol && m.channel == Channel::Orderbook)
        .count()
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ok()
}

#[test]
fn status_on_a_pty_shows_the_simulators_live_socket_count() {
    let sim = sim(&["BTC-USDT", "ETH-USDT"]);
    let (master, slave) = openpty();
    let dir = TempDir::new("console-pty");
    let cfg = dir.join("marketbox.toml");
    let slave = slave.display().to_string();
    std::fs::write(
        &cfg,
        sim_config(&sim, &[slave], &["BTC-USDT", "ETH-USDT"], true),
    )
    .expect("write the config");
    let _svc = Service::start(&cfg);
    let mut tty = pty_session(master);
    tty.ready(Duration::from_secs(20));
    // Spot, USD-M /public and /market.
    assert!(
        wait_until(Duration::from_secs(20), || sim.open_ws() == 3),
        "the simulator saw {} sockets",
        sim.open_ws()
    );
    // The service counts a socket once its handshake completes, a moment after the simulator
    // does: ask until both agree (the first answer usually does).
    let (mut out, mut open, mut asked) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        out = tty.command("status");
        open = sim.open_ws();
        asked += 1;
        if out[0].contains(&format!("sockets {open} of 3 planned")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "status on the pty (simulator: {open} open sockets; asked {asked} time(s)):\n{}",
        out.join("\n")
    );
    // TC0: the table's first line: marketbox, and the sockets open as the simulator counts
    // them, of the plan.
    assert!(out[0].starts_with("marketbox "), "{out:?}");
    let shown: usize = out[0]
        .split("sockets ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no socket count in {:?}", out[0]));
    assert_eq!(shown, open, "{out:?}");
    assert!(
        out[0].contains(&format!("sockets {open} of 3 planned")),
        "{out:?}"
    );
    for row in [
        "binance   spot",
        "binance   perpetual_public",
        "binance   perpetual_market",
    ] {
        assert!(
            out.iter()
                .any(|l| l.starts_with(row) && l.ends_with("1     1")),
            "{row}: {out:?}"
        );
    }
    // TC1: a serial line gets CR LF, and only CR LF.
    let raw = tty.inbox.all();
    assert!(raw.contains("\r\nmarketbox> "), "{raw:?}");
    assert!(
        !raw.replace("\r\n", "").contains('\n'),
        "a bare LF on the tty: {raw:?}"
    );
    assert_eq!(
        tty.command("version"),
        [format!("marketbox {}", env!("CARGO_PKG_VERSION"))]
    );
}

#[test]
fn a_symbol_added_at_the_console_is_subscribed_on_the_existing_socket_and_survives_a_restart() {
    let sim = sim(&["BTC-USDT", "ETH-USDT", "SOL-USDT"]);
    let dir = TempDir::new("console-add");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(
        &cfg,
        sim_config(
            &sim,
            &[format!("unix:{}", sock.display())],
            &["BTC-USDT", "ETH-USDT"],
            false,
        ),
    )
    .expect("write the config");
    let svc = Service::start(&cfg);
    let mut c = connect(&sock, Duration::from_secs(20));
    assert!(
        svc.wait(Duration::from_secs(20), |m| books_of(m, "BTC-USDT") > 20),
        "no books: {}",
        svc.stderr.all()
    );
    let (accepts, open) = (sim.ws_accepts(), sim.open_ws());
    assert_eq!(open, 1);
    // TC0: stage, see the diff, apply.
    assert_eq!(c.command("add symbol binance spot SOL-USDT"), ["ok"]);
    let diff = c.command("diff");
    assert_eq!(
        diff,
        [
            r#"feeds.binance.spot.symbols: ["BTC-USDT", "ETH-USDT"] -> ["BTC-USDT", "ETH-USDT", "SOL-USDT"]"#
        ]
    );
    let applied_at = Instant::now();
    let out = c.command("apply");
    assert!(
        out.iter().any(|l| l == "applied: feeds.binance.spot"),
        "{out:?}"
    );
    assert!(!out.iter().any(|l| l.contains("error")), "{out:?}");
    // TC1: the simulator sees SOL's streams subscribed on the one socket it has.
    let want = ["solusdt@depth@100ms", "solusdt@trade"];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let subs = sim.subscriptions(Endpoint::Spot);
            subs.len() == 1 && want.iter().all(|w| subs[0].iter().any(|s| s == w))
        }),
        "{:?}",
        sim.subscriptions(Endpoint::Spot)
    );
    let subscribed = applied_at.elapsed();
    // TC2: verified SOL books flow, each the venue's true book at its update id.
    assert!(
        svc.wait(Duration::from_secs(20), |m| books_of(m, "SOL-USDT") >= 20),
        "no SOL books: {}",
        svc.stderr.all()
    );
    let first_book = applied_at.elapsed();
    let (checked, wrong) = wrong_books(&sim, &svc.messages.lock().expect("messages"), "SOL-USDT");
    assert_eq!(
        wrong, 0,
        "{wrong} of {checked} SOL books differ from the venue's"
    );
    // TC3: the socket count never changed: no new connection, one open.
    assert_eq!((sim.ws_accepts(), sim.open_ws()), (accepts, 1));
    let status = c.command("status");
    eprintln!("{}", status.join("\n"));
    assert!(status[0].contains("sockets 1 of 1 planned"), "{status:?}");
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("binance spot SOL-USDT") && l.contains(" yes ")),
        "{status:?}"
    );
    eprintln!(
        "add symbol: SUBSCRIBE seen {subscribed:?} after apply, 20 SOL books by {first_book:?}; \
         {checked} SOL books all true; websocket accepts {accepts} before and after"
    );
    // TC4: save writes a file check-config accepts, the comments kept.
    let out = c.command("save");
    assert_eq!(out, [format!("saved {}", cfg.display())]);
    let text = std::fs::read_to_string(&cfg).expect("read the saved config");
    assert!(
        text.contains("# A test config: the comments must survive a save."),
        "{text}"
    );
    assert!(
        text.contains(r#"symbols = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]"#),
        "{text}"
    );
    let check = marketbox()
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("check-config");
    let plan = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{plan}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(plan.contains("solusdt@depth@100ms"), "{plan}");
    // TC5: a service started from the saved file collects SOL from its first connection.
    drop(c);
    drop(svc);
    let svc = Service::start(&cfg);
    assert!(
        svc.wait(Duration::from_secs(20), |m| books_of(m, "SOL-USDT") >= 10),
        "no SOL books after the restart: {}",
        svc.stderr.all()
    );
    let (checked, wrong) = wrong_books(&sim, &svc.messages.lock().expect("messages"), "SOL-USDT");
    assert_eq!(wrong, 0, "{wrong} of {checked}");
}

#[test]
fn an_invalid_set_is_refused_naming_the_key_and_the_allowed_values() {
    let dir = TempDir::new("console-set");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(&cfg, console_only(&[format!("unix:{}", sock.display())])).expect("write");
    let _svc = Service::start(&cfg);
    let mut c = connect(&sock, Duration::from_secs(20));
    for (line, want) in [
        ("set book.depth 500", ["book.depth", "between 1 and 50"]),
        (
            "set book.depth deep",
            ["book.depth", "an integer between 1 and 50"],
        ),
        (
            "set upstream.kind kafka",
            ["upstream.kind", "`stdout`, `nats`, `mqtt`"],
        ),
        (
            "set session.idle_timeout soon",
            ["session.idle_timeout", "between 100ms and 1h"],
        ),
        (
            "set console.baud 115201",
            ["console.baud", "one of [9600, 19200, 38400"],
        ),
        ("set book.dept 15", ["book.dept", "expected `depth`"]),
        (
            "add symbol kraken spot BTC-USDT",
            ["exchange", "binance, okx"],
        ),
    ] {
        let out = c.command(line);
        assert_eq!(out.len(), 1, "{line}: {out:?}");
        assert!(out[0].starts_with("error: "), "{line}: {out:?}");
        for w in want {
            assert!(out[0].contains(w), "{line}: {w:?} not in {out:?}");
        }
    }
    // Nothing was staged, nothing changed, nothing to apply.
    assert_eq!(c.command("diff"), ["no staged changes"]);
    assert_eq!(c.command("get book.depth"), ["20"]);
    assert_eq!(c.command("apply"), ["nothing to apply"]);
    assert!(c.command("show config").iter().any(|l| l == "depth = 20"));
    assert_eq!(c.command("set book.depth 15"), ["ok"]);
    assert_eq!(c.command("revert"), ["staged changes dropped"]);
    assert_eq!(c.command("get book.depth"), ["20"]);
}

#[test]
fn sigkill_during_repeated_saves_never_leaves_a_corrupt_or_empty_config() {
    const KILLS: usize = 200;
    let dir = TempDir::new("console-kill");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(&cfg, console_only(&[format!("unix:{}", sock.display())])).expect("write");
    let mut rng = fastrand::Rng::with_seed(0x5a5e);
    let (mut saves, mut mid_save, mut changed) = (0usize, 0usize, 0usize);
    let mut depths = std::collections::BTreeSet::new();
    let mut last = std::fs::read_to_string(&cfg).expect("read");
    let started = Instant::now();
    for kill in 0..KILLS {
        let mut svc = Service::start(&cfg);
        let mut c = connect(&sock, Duration::from_secs(20));
        // A burst of changes and saves, pipelined; the kill lands somewhere in it.
        let mut script = String::new();
        for i in 0..40 {
            let depth = 1 + (kill * 40 + i) % 50;
            script += &format!("set book.depth {depth}\napply\nsave\n");
        }
        c.out
            .write_all(script.as_bytes())
            .expect("write the script");
        std::thread::sleep(Duration::from_micros(rng.u64(0..30_000)));
        svc.kill();
        saves += c.inbox.all().matches("\nsaved ").count();
        if dir.join(".marketbox.toml.tmp").exists() || dir.join(".marketbox.toml.bak.tmp").exists()
        {
            mid_save += 1;
        }
        // The file is whole: it loads, keeps its comments, and holds one of the depths written.
        let text = std::fs::read_to_string(&cfg).expect("the config file is there");
        if text != last {
            changed += 1;
            last = text.clone();
        }
        assert!(!text.is_empty(), "kill {kill}: empty config");
        let loaded = Config::load(&cfg)
            .unwrap_or_else(|e| panic!("kill {kill}: the config does not load: {e}\n{text}"));
        assert!(text.starts_with("# A test config"), "kill {kill}: {text}");
        depths.insert(loaded.book.depth.0);
        if let Ok(bak) = std::fs::read_to_string(dir.join("marketbox.toml.bak")) {
            Config::parse(&bak, "bak").unwrap_or_else(|e| panic!("kill {kill}: .bak: {e}"));
        }
    }
    eprintln!(
        "{KILLS} SIGKILLs in {:?}: {changed} runs changed the file before their kill, {mid_save} \
         kills left a temporary file (killed mid-save), {saves} saves acknowledged before the \
         kills, {} distinct depths on disk; every file loaded",
        started.elapsed(),
        depths.len()
    );
    // The kills landed where it matters: after saves, and inside them.
    assert!(
        changed >= KILLS / 4,
        "only {changed} runs saved before their kill"
    );
    assert!(mid_save > 0, "no kill landed inside a save");
}

#[test]
fn garbage_a_megabyte_line_noise_and_a_disconnect_mid_line_are_survived() {
    let sim = sim(&["BTC-USDT", "ETH-USDT"]);
    let (master, slave) = openpty();
    let dir = TempDir::new("console-garbage");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(
        &cfg,
        sim_config(
            &sim,
            &[
                slave.display().to_string(),
                format!("unix:{}", sock.display()),
            ],
            &["BTC-USDT", "ETH-USDT"],
            false,
        ),
    )
    .expect("write");
    let mut svc = Service::start(&cfg);
    let mut tty = pty_session(master);
    tty.ready(Duration::from_secs(20));
    assert!(svc.wait(Duration::from_secs(20), |m| m.len() > 50));
    let before = svc.count();
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(99);
    let noise: Vec<u8> = (0..64 << 10).map(|_| rng.u8(..)).collect();
    // TC0: the socket: control and escape garbage, a 1 MB line, then binary noise and a
    // disconnect in the middle of it.
    let mut c = connect(&sock, Duration::from_secs(5));
    let out = c.command("\u{0}\u{1}garbage\u{7f}\u{1b}[999;999H\u{1b}]0;title\u{7}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("error: unknown command \"garbag0;title\""),
        "{out:?}"
    );
    let megabyte = "a".repeat(1 << 20);
    let out = c.command(&megabyte);
    assert_eq!(
        out.last().map(String::as_str),
        Some("error: the line is 1048576 bytes; at most 4096 are read"),
        "{:?}",
        out.iter()
            .map(|l| &l[..l.len().min(80)])
            .collect::<Vec<_>>()
    );
    let megabyte_took = started.elapsed();
    // Noise may hold a Ctrl-D on an empty line, which ends a socket session: the write may
    // find the session closed.
    let _ = c.out.write_all(&noise);
    drop(c);
    let mut c = connect(&sock, Duration::from_secs(5));
    c.out.write_all(b"set book.dep").expect("half a line");
    drop(c);
    // TC1: the tty: the same noise, then a command (Ctrl-X, Ctrl-C clear any state).
    tty.out.write_all(&noise).expect("noise on the tty");
    let from = tty.inbox.len();
    tty.out
        .write_all(b"\x18\x03version\r")
        .expect("a command after the noise");
    assert!(
        tty.inbox
            .wait_for(
                from,
                concat!("\r\nmarketbox ", env!("CARGO_PKG_VERSION"), "\r\n"),
                Duration::from_secs(20)
            )
            .is_some(),
        "the tty console did not answer after the noise"
    );
    // TC2: a new session: nothing was staged by the half line, the console answers.
    let mut c = connect(&sock, Duration::from_secs(5));
    assert_eq!(c.command("diff"), ["no staged changes"]);
    assert_eq!(c.command("get book.depth"), [DEPTH.to_string()]);
    assert!(c.command("status")[0].contains("sockets 1 of 1 planned"));
    // TC3: the service kept collecting all along, on its one socket.
    let during = svc.count() - before;
    assert!(
        svc.wait(Duration::from_secs(10), |m| m.len() > before + during + 50),
        "collection stopped"
    );
    assert!(svc.alive());
    assert_eq!(sim.open_ws(), 1);
    eprintln!(
        "garbage: 1 MiB line refused after {megabyte_took:?} (the socket reads at most 256 KiB/s), \
         2 x 64 KiB of noise, a disconnect mid-line; {during} messages published meanwhile"
    );
}

#[test]
fn console_attach_works_from_a_script_and_from_a_terminal() {
    let dir = TempDir::new("console-attach");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(&cfg, console_only(&[format!("unix:{}", sock.display())])).expect("write");
    let _svc = Service::start(&cfg);
    drop(connect(&sock, Duration::from_secs(20)));
    // TC0: a script: stdin is a pipe; the output is the transcript; the end of stdin ends it.
    let mut child = marketbox()
        .args(["console", "--socket"])
        .arg(&sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("marketbox console");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"version\nget book.depth\nset book.depth 0\n")
        .expect("the script");
    let out = child
        .wait_with_output()
        .expect("the client ends with its input");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let version = format!("marketbox {}", env!("CARGO_PKG_VERSION"));
    assert!(text.lines().any(|l| l == version), "{text}");
    assert!(text.lines().any(|l| l == "20"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("error: book.depth")),
        "{text}"
    );
    // TC1: a terminal: the client puts it in raw mode, keys reach the service's editor,
    // Ctrl-D ends the session, and the terminal gets its mode back.
    let (master, slave) = openpty();
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .expect("open the pty slave");
    let cooked = rustix::termios::tcgetattr(tty.as_fd()).expect("tcgetattr");
    let mut child = marketbox()
        .args(["console", "--socket"])
        .arg(&sock)
        .stdin(tty.try_clone().expect("clone"))
        .stdout(tty.try_clone().expect("clone"))
        .stderr(tty.try_clone().expect("clone"))
        .spawn()
        .expect("marketbox console on a terminal");
    let mut term = pty_session(master);
    term.ready(Duration::from_secs(10));
    let raw = rustix::termios::tcgetattr(tty.as_fd()).expect("tcgetattr");
    use rustix::termios::LocalModes;
    assert!(
        !raw.local_modes
            .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG)
    );
    assert_eq!(term.command("version"), std::slice::from_ref(&version));
    // Backspace and Ctrl-U are the service's: a corrected line runs.
    assert_eq!(term.command("get book.deptj\u{7f}h"), ["20"]);
    assert_eq!(term.command("junk\u{15}get book.depth"), ["20"]);
    // An arrow brings the last line back.
    assert_eq!(term.command("\u{1b}[A"), ["20"]);
    term.out.write_all(b"\x04").expect("Ctrl-D");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not end on Ctrl-D"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    let after = rustix::termios::tcgetattr(tty.as_fd()).expect("tcgetattr");
    assert_eq!(
        after.local_modes, cooked.local_modes,
        "the terminal's mode is restored"
    );
    assert!(
        after
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    );
}

#[test]
fn the_stdio_console_reads_stdin_and_answers_on_stderr_leaving_stdout_to_the_data() {
    let sim = sim(&["BTC-USDT"]);
    let dir = TempDir::new("console-stdio");
    let cfg = dir.join("marketbox.toml");
    std::fs::write(
        &cfg,
        sim_config(&sim, &["stdio".into()], &["BTC-USDT"], false),
    )
    .expect("write");
    let mut child = marketbox()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("MARKETBOX_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start marketbox");
    let stdout = console::Inbox::reading(child.stdout.take().expect("stdout"));
    let stderr = console::Inbox::reading(child.stderr.take().expect("stderr"));
    let mut stdin = child.stdin.take().expect("stdin");
    assert!(
        stderr
            .wait_for(0, "marketbox> ", Duration::from_secs(20))
            .is_some()
    );
    stdin
        .write_all(b"get book.depth\nversion\n")
        .expect("commands");
    let version = format!("\nmarketbox {}\nmarketbox> ", env!("CARGO_PKG_VERSION"));
    assert!(
        stderr
            .wait_for(0, &version, Duration::from_secs(10))
            .is_some(),
        "{:?}",
        stderr.all()
    );
    assert!(
        stderr.all().contains("get book.depth\n10\nmarketbox> "),
        "{:?}",
        stderr.all()
    );
    // stdout carries JSON messages only.
    assert!(
        stdout
            .wait_for(0, "\"channel\":\"orderbook\"", Duration::from_secs(20))
            .is_some()
    );
    let data = stdout.all();
    let complete = &data[..data.rfind('\n').map_or(0, |i| i + 1)];
    for line in complete.lines() {
        assert!(
            line.starts_with("{\"exchange\""),
            "not a message on stdout: {line:?}"
        );
    }
    // The end of stdin ends the console, not the service.
    drop(stdin);
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(child.try_wait(), Ok(None)), "the service stopped");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn restart_runs_the_saved_file_in_the_same_process_and_log_level_takes_effect() {
    let dir = TempDir::new("console-restart");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(&cfg, console_only(&[format!("unix:{}", sock.display())])).expect("write");
    let mut svc = Service::start(&cfg);
    let pid = svc.child.id();
    let mut c = connect(&sock, Duration::from_secs(20));
    assert_eq!(c.command("set book.depth 7"), ["ok"]);
    assert_eq!(c.command("apply"), ["applied: book.depth"]);
    // TC0: restart reads the file: unsaved changes would be lost, so it refuses.
    let out = c.command("restart");
    assert!(
        out[0].starts_with("error: ") && out[0].ends_with("save first"),
        "{out:?}"
    );
    assert_eq!(c.command("save"), [format!("saved {}", cfg.display())]);
    // TC1: the service logs at warn (MARKETBOX_LOG); info from now on.
    assert_eq!(c.command("log level info"), ["log level info"]);
    c.out.write_all(b"restart\n").expect("restart");
    assert!(
        c.inbox.wait_closed(Duration::from_secs(10)),
        "the session stays open"
    );
    assert!(
        c.inbox
            .all()
            .contains(&format!("restarting from {}", cfg.display()))
    );
    // TC2: the same process serves again, from the saved file (a connection made while the
    // old run still listened closes: connect again).
    let deadline = Instant::now() + Duration::from_secs(20);
    let depth = loop {
        if let Some(out) = connect(&sock, Duration::from_secs(20)).try_command("get book.depth") {
            break out;
        }
        assert!(Instant::now() < deadline, "the console did not come back");
    };
    assert_eq!(depth, ["7"]);
    assert!(svc.alive());
    assert_eq!(svc.child.id(), pid);
    assert!(
        svc.stderr
            .wait_for(
                0,
                "restarting (asked at the console)",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        svc.stderr.all()
    );
}

#[test]
fn changes_the_running_service_cannot_make_live_ask_for_a_restart() {
    let dir = TempDir::new("console-live");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    std::fs::write(&cfg, console_only(&[format!("unix:{}", sock.display())])).expect("write");
    let _svc = Service::start(&cfg);
    let mut c = connect(&sock, Duration::from_secs(20));
    // TC0: a first symbol needs a socket the plan does not have; a session timing is read at
    // start. Both wait for a restart; book.depth is live.
    assert_eq!(c.command("add symbol binance spot BTC-USDT"), ["ok"]);
    assert_eq!(c.command("set session.idle_timeout 5s"), ["ok"]);
    assert_eq!(c.command("set book.depth 5"), ["ok"]);
    let out = c.command("apply");
    assert_eq!(
        out,
        [
            "applied: book.depth",
            "needs a restart to take effect: feeds.binance.spot, session.idle_timeout (save, then restart)"
        ]
    );
    let status = c.command("status");
    assert!(
        status[0].contains("sockets 0 of 0 planned"),
        "no socket opened: {status:?}"
    );
    assert!(
        status
            .iter()
            .any(|l| l == "restart needed for: feeds.binance.spot, session.idle_timeout"),
        "{status:?}"
    );
    // TC1: a config the whole validation refuses changes nothing.
    assert_eq!(
        c.command("set upstream.kind nats")
            .first()
            .map(String::as_str),
        Some("ok")
    );
    let out = c.command("apply");
    assert!(
        out[0].starts_with("error: ") && out[0].contains("needs a url"),
        "{out:?}"
    );
    assert_eq!(out[1], "nothing was applied");
    assert_eq!(
        c.command("show config")
            .iter()
            .filter(|l| *l == "kind = \"stdout\"")
            .count(),
        1
    );
}

#[test]
fn an_upstream_change_reconnects_only_the_upstream_and_loses_nothing() {
    let sim = brokers::busy_sim();
    let (a, b) = (
        brokers::Nats::start(brokers::NatsAuth::None),
        brokers::Nats::start(brokers::NatsAuth::None),
    );
    let dir = TempDir::new("console-upstream");
    let cfg = dir.join("marketbox.toml");
    let sock = dir.join("console.sock");
    let extra = format!(
        "[upstream]\nkind = \"nats\"\nurl = \"{}\"\n[console]\ndevices = [\"unix:{}\"]\n",
        a.url(),
        sock.display()
    );
    std::fs::write(&cfg, brokers::spot_feed(&sim, &extra)).expect("write");
    let svc = Service::start(&cfg);
    let mut c = connect(&sock, Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(20), || brokers::read_stream_len(
            &a,
            "MARKETBOX"
        ) > 100),
        "nothing reached the first server: {}",
        svc.stderr.all()
    );
    let accepts = sim.ws_accepts();
    // TC0: the url moves to the second server: applied live, the upstream alone reconnects.
    assert_eq!(c.command(&format!("set upstream.url {}", b.url())), ["ok"]);
    let switched = Instant::now();
    let out = c.command("apply");
    assert_eq!(out[0], "applied: upstream.url", "{out:?}");
    assert!(out[1].starts_with("the upstream reconnects"), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(20), || brokers::read_stream_len(
            &b,
            "MARKETBOX"
        ) > 100),
        "nothing reached the second server: {}",
        svc.stderr.all()
    );
    let took = switched.elapsed();
    // TC1: the venue's socket was never touched.
    assert_eq!((sim.ws_accepts(), sim.open_ws()), (accepts, 1));
    // TC2: nothing lost: every stream's `seq` runs without a gap across the two servers.
    brokers::quiesce(&sim);
    std::thread::sleep(Duration::from_millis(500));
    let mut seqs: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> =
        Default::default();
    let (mut on_a, mut on_b) = (0, 0);
    for (server, count) in [(&a, &mut on_a), (&b, &mut on_b)] {
        for (_, payload) in brokers::read_stream(server, "MARKETBOX") {
            let m: Message = serde_json::from_slice(&payload).expect("a JSON message");
            seqs.entry(format!("{} {}", m.symbol, m.channel))
                .or_default()
                .insert(m.seq);
            *count += 1;
        }
    }
    for (stream, s) in &seqs {
        let (first, last) = (s.first().copied(), s.last().copied());
        assert_eq!(first, Some(1), "{stream}");
        assert_eq!(
            s.len() as u64,
            last.unwrap_or(0),
            "{stream}: a gap in 1..={last:?}"
        );
    }
    eprintln!(
        "upstream url changed at the console: 100 messages on the new server {took:?} after \
         apply; {on_a} messages on the first server, {on_b} on the second, no gap in any of \
         {} streams; venue sockets accepted {accepts} before and after",
        seqs.len()
    );
}
