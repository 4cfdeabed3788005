//! MQTT upstream end to end: the exchange simulator feeds marketbox, marketbox publishes with
//! QoS 1 to a real `mosquitto` (persistence on) on a free loopback port, and a QoS 1
//! subscriber with a persistent session reads the topics back, through a broker restart.

#[path = "common/brokers.rs"]
mod brokers;
mod sim;
#[path = "common/tmp.rs"]
mod tmp;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brokers::{InProc, Mosquitto, Seen};
use marketbox::config::Config;
use sim::Sim;

/// A QoS 1 subscriber to `#` with a persistent session, on its own thread and runtime,
/// collecting payloads; it reconnects by itself (rumqttc) across broker restarts.
struct Subscriber {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let mut o = rumqttc::MqttOptions::new("test-subscriber", "127.0.0.1", port);
                o.set_clean_session(false)
                    .set_keep_alive(Duration::from_secs(5))
                    .set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut ev) = rumqttc::AsyncClient::new(o, 100);
                client
                    .subscribe("#", rumqttc::QoS::AtLeastOnce)
                    .await
                    .expect("subscribe queued");
                let mut ready = Some(ready_tx);
                while !s.load(std::sync::atomic::Ordering::SeqCst) {
                    // Never cancel a poll (it is not cancel safe); the keep-alive wakes it.
                    match ev.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            g.lock().expect("lock").push(p.payload.to_vec());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber is subscribed");
        Subscriber {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.got.lock().expect("lock").len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The thread ends at its next event (a keep-alive at most 5 s later) or with the
        // process.
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.thread.take());
    }
}

fn config(sim: &Sim, url: &str) -> Config {
    Config::parse(&config_text(sim, url), "mqtt.toml").expect("test config")
}

fn config_text(sim: &Sim, url: &str) -> String {
    brokers::spot_feed(
        sim,
        &format!("[upstream]\nkind = \"mqtt\"\nurl = \"{url}\"\nsubject_prefix = \"md\"\n"),
    )
}

#[test]
fn qos1_through_a_mosquitto_restart_loses_no_trade_and_duplicates_carry_their_id() {
    let sim = brokers::busy_sim();
    let mut broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port);
    let mut mb = InProc::start(&config(&sim, &broker.url()));
    assert!(
        mb.wait_metric(
            "marketbox_upstream_acked_total",
            &[],
            500,
            Duration::from_secs(20)
        ),
        "nothing acknowledged"
    );
    assert_eq!(mb.metric("marketbox_upstream_up", &[]), 1);
    broker.restart(Duration::from_secs(3));
    let acked = mb.metric("marketbox_upstream_acked_total", &[]);
    assert!(
        mb.wait_metric(
            "marketbox_upstream_acked_total",
            &[],
            acked + 1000,
            Duration::from_secs(30)
        ),
        "no recovery after the restart"
    );
    brokers::quiesce(&sim);
    mb.stop_and_drain(Duration::from_secs(20));
    let published = mb.metric("marketbox_messages_total", &[]);
    // The subscriber gets what is still queued for its session.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (sub.count() as u64) < published && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let payloads = sub.got.lock().expect("lock").clone();
    let seen = Seen::from_payloads(payloads.iter().map(Vec::as_slice));
    let errors = mb.metric("marketbox_upstream_errors_total", &[]);
    // Duplicates are allowed (QoS 1); each is recognisable by its id.
    let mut ids = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    for msgs in seen.streams.values() {
        for m in msgs {
            if !ids.insert(m.id.to_string()) {
                duplicates += 1;
            }
        }
    }
    eprintln!(
        "published {published}, received {}, duplicates by id {duplicates}, upstream errors {errors}",
        seen.messages
    );
    assert!(errors >= 1, "the restart was not noticed");
    assert_eq!(mb.metric("marketbox_spool_dropped_total", &[]), 0);
    assert_eq!(ids.len() as u64, published, "a message is missing");
    // No trade missing: per trade stream, the distinct ids are contiguous.
    for (k, v) in seen.trade_ids() {
        let mut ids = v.clone();
        ids.sort_unstable();
        ids.dedup();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "{k}: a trade is missing"
        );
    }
}

#[test]
fn refused_credentials_are_named_counted_and_survived() {
    let sim = brokers::busy_sim();
    let broker = Mosquitto::start_with(Some(("box", "right-password")));
    let dir = brokers::TempDir::new("mqtt-auth");
    let pass = dir.path().join("password");
    std::fs::write(&pass, "wrong-password\n").expect("write the password");
    let path = dir.path().join("mqtt.toml");
    let text = |sim: &Sim| {
        format!(
            "{}[upstream.mqtt]\nusername = \"box\"\npassword_file = \"{}\"\n",
            config_text(sim, &broker.url()),
            pass.display()
        )
    };
    std::fs::write(&path, text(&sim)).expect("write the config");
    let cfg = Config::load(&path).expect("valid config");
    let mb = InProc::start(&cfg);
    let msg = mb.failure("auth");
    assert!(
        msg.contains("[upstream.mqtt] username and password_file"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-password"),
        "a secret in the message: {msg}"
    );
    mb.assert_collecting_while_down();
    drop(mb);
    // The right password works.
    std::fs::write(&pass, "right-password\n").expect("write the password");
    let mb = InProc::start(&Config::load(&path).expect("valid config"));
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        10,
        Duration::from_secs(10)
    ));
}

#[test]
fn mqtts_trusts_the_configured_ca_and_only_it() {
    let sim = brokers::busy_sim();
    let dir = brokers::TempDir::new("mqtt-tls");
    let (ca, cert, key) = brokers::tls_files(dir.path());
    let broker = Mosquitto::start_tls(&cert, &key);
    // TC0: the webpki roots alone do not trust the broker: named, counted, collection goes on.
    let mb = InProc::start(&config(&sim, &broker.url()));
    let msg = mb.failure("tls");
    assert!(msg.contains("[upstream.mqtt] ca"), "{msg}");
    mb.assert_collecting_while_down();
    drop(mb);
    // TC1: with `ca` it is verified and messages are acknowledged.
    let text = format!(
        "{}[upstream.mqtt]\nca = \"{}\"\n",
        config_text(&sim, &broker.url()),
        ca.display()
    );
    let mb = InProc::start(&Config::parse(&text, "mqtts.toml").expect("test config"));
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        10,
        Duration::from_secs(10)
    ));
}
