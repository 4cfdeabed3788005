//! The real 2026 USD-M frames (with undocumented `st`, `nq`, `ap`, `ps` keys) become the right
//! normalized messages.

mod common;

use std::sync::Arc;
use std::time::Instant;

use marketbox::config::{Config, Format};
use marketbox::metrics::Metrics;
use marketbox::model::{Channel, Data, Exchange, Market, Message, Side, Symbol};
use marketbox::plan::{SocketPlan, StreamPlan};
use marketbox::session::{Control, FrameKind, Io, Protocol};
use marketbox::upstream::spool::Spool;
use marketbox::upstream::{Publisher, StreamKey};
use marketbox::venue::binance::feed::BinanceProtocol;

fn run(frames: &[String]) -> (Vec<Message>, Vec<FrameKind>) {
    let cfg = Config::parse("", "t.toml").unwrap();
    let streams: Vec<StreamPlan> = ["BTC-USDT", "ETH-USDT", "STG-USDT"]
        .iter()
        .flat_map(|s| {
            let symbol = Symbol::parse(s).unwrap();
            [Channel::Trade, Channel::FundingRate, Channel::Liquidation].map(|channel| StreamPlan {
                market: Market::Perpetual,
                symbol,
                channel,
                wire: String::new(),
            })
        })
        .collect();
    let socket = SocketPlan {
        exchange: Exchange::Binance,
        name: marketbox::plan::SocketName::PerpetualMarket,
        url: "wss://x/market/stream".into(),
        streams: streams.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    let mut proto = BinanceProtocol::new(&socket, Market::Perpetual, &cfg, metrics);
    let spool = Spool::new(1 << 20, Default::default());
    let keys = StreamKey::for_socket(&socket);
    let mut publisher = Publisher::new(spool.clone(), Format::Json, &keys, None);
    let (mut send, mut rest) = (Vec::new(), Vec::new());
    let mut kinds = Vec::new();
    for f in frames {
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        let (kind, control) = proto.on_text(f, Instant::now(), &mut io);
        assert_eq!(control, Control::Continue);
        kinds.push(kind);
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while spool.try_pop(&mut buf).is_some() {
        out.push(serde_json::from_slice(&buf).unwrap());
    }
    (out, kinds)
}

fn misc(kind: &str) -> Vec<String> {
    let Some(dir) = common::fixtures() else {
        return Vec::new();
    };
    let text =
        std::fs::read_to_string(dir.join("binance_perpetual/misc_single_messages.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .map(|v| v["raw"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn usdm_2026_trades_funding_and_liquidations_normalize() {
    let frames: Vec<String> = [
        "aggTrade",
        "trade",
        "markPrice",
        "markPrice@1s",
        "forceOrder",
    ]
    .iter()
    .flat_map(|k| misc(k))
    .collect();
    if frames.is_empty() {
        return;
    }
    let (msgs, kinds) = run(&frames);
    assert!(kinds.iter().all(|k| *k == FrameKind::Data), "{kinds:?}");
    // The 2026 aggTrade (with nq, st): taker sold (m = true).
    let agg = msgs
        .iter()
        .find(|m| matches!(&m.data, Data::Trade(t) if t.trade_id == 3404749954))
        .expect("2026 aggTrade");
    let Data::Trade(t) = &agg.data else {
        unreachable!()
    };
    assert_eq!(
        (t.price.to_string(), t.qty.to_string(), t.side),
        ("64990.90".into(), "0.002".into(), Side::Sell)
    );
    assert_eq!(agg.ts_exchange_ms, 1786171884471);
    assert_eq!(
        agg.id.as_str(),
        "binance.perpetual.BTC-USDT.trade.3404749954"
    );
    // The 2026 raw trade (X = MARKET, st).
    assert!(msgs.iter().any(|m| matches!(&m.data, Data::Trade(t) if t.trade_id == 7947131392 && t.price.to_string() == "63105.80")));
    // The 2026 markPrice (with ap, st): mark, index, rate, next funding time.
    let fr = msgs
        .iter()
        .find_map(|m| match &m.data {
            Data::FundingRate(f) if f.funding_time_ms == 1786176000000 => Some(f),
            _ => None,
        })
        .expect("2026 markPrice");
    assert_eq!(fr.funding_rate.to_string(), "0.00003936");
    assert_eq!(fr.mark_price.unwrap().to_string(), "64991.37858696");
    assert_eq!(fr.index_price.unwrap().to_string(), "65016.05673913");
    // The 2026 forceOrder (with ps, st) on STG-USDT: side, price, qty, average price, status.
    let liq = msgs
        .iter()
        .find(|m| m.channel == Channel::Liquidation && m.symbol.as_str() == "STG-USDT")
        .expect("2026 forceOrder");
    let Data::Liquidation(l) = &liq.data else {
        unreachable!()
    };
    assert_eq!(l.side, Side::Sell);
    assert_eq!(
        (l.price.to_string(), l.qty.to_string()),
        ("0.1336000".into(), "5".into())
    );
    assert_eq!(l.avg_price.unwrap().to_string(), "0.1355000");
    assert_eq!(l.status.as_deref(), Some("FILLED"));
    assert_eq!(liq.ts_exchange_ms, 1786172556607);
}

#[test]
fn frames_for_streams_not_on_this_socket_are_unknown_not_published() {
    let frames = misc("kline");
    if frames.is_empty() {
        return;
    }
    let (msgs, kinds) = run(&frames);
    assert!(msgs.is_empty());
    assert_eq!(kinds, [FrameKind::Unknown]);
}
