//! The simulator itself, driven by a plain WebSocket client (not marketbox's code).

mod sim;

use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use futures_rustls::TlsConnector;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_util::StreamExt;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use sim::{Mkt, Sim, SimOptions};

fn client_tls(sim: &Sim) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(sim.ca_pem_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn frames(sim: &Sim, base: &str, streams: &str, n: usize, wait: Duration) -> Vec<String> {
    let url = format!("{base}/stream?streams={streams}");
    let port: u16 = base
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tcp = smol::Async::<std::net::TcpStream>::connect(([127, 0, 0, 1], port))
        .await
        .unwrap();
    let tls = TlsConnector::from(client_tls(sim))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = async_tungstenite::client_async(url, tls).await.unwrap();
    let mut out = Vec::new();
    let collect = async {
        while let Some(Ok(m)) = ws.next().await {
            if let async_tungstenite::tungstenite::Message::Text(t) = m {
                out.push(t.to_string());
                if out.len() >= n {
                    break;
                }
            }
        }
    };
    collect
        .or(async {
            smol::Timer::after(wait).await;
        })
        .await;
    out
}

#[test]
fn spot_diffs_chain_and_rebuild_the_true_book() {
    let sim = Sim::start(SimOptions::default());
    let got = smol::block_on(frames(
        &sim,
        &sim.spot_ws(),
        "btcusdt@depth@100ms",
        30,
        Duration::from_secs(5),
    ));
    assert!(got.len() >= 30, "only {} frames", got.len());
    let mut prev: Option<u64> = None;
    for f in &got {
        let v: serde_json::Value = serde_json::from_str(f).unwrap();
        let d = &v["data"];
        let (u0, u1) = (d["U"].as_u64().unwrap(), d["u"].as_u64().unwrap());
        if let Some(p) = prev {
            assert_eq!(u0, p + 1, "spot chain broken");
        }
        prev = Some(u1);
        assert!(sim.true_book(Mkt::Spot, "BTCUSDT", u1, 5).is_some());
    }
}

#[test]
fn usdm_tiers_serve_only_their_streams_and_chain_by_pu() {
    let sim = Sim::start(SimOptions::default());
    let got = smol::block_on(frames(
        &sim,
        &sim.perp_public_ws(),
        "btcusdt@depth@100ms",
        10,
        Duration::from_secs(5),
    ));
    assert!(got.len() >= 10);
    let mut prev: Option<u64> = None;
    for f in &got {
        let v: serde_json::Value = serde_json::from_str(f).unwrap();
        let d = &v["data"];
        if let Some(p) = prev {
            assert_eq!(d["pu"].as_u64().unwrap(), p);
        }
        prev = d["u"].as_u64();
    }
    // Depth asked on the /market tier is silently never delivered, like the venue.
    let none = smol::block_on(frames(
        &sim,
        &sim.perp_market_ws(),
        "btcusdt@depth@100ms",
        1,
        Duration::from_millis(500),
    ));
    assert!(none.is_empty());
}
