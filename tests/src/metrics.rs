//! The agent's Prometheus endpoint, read from inside the namespace the agent runs in.
use std::{
    io::{Read, Write},
    net::TcpStream,
};

use crate::netns::NetNs;

/// Where the tests' agents serve metrics (the agent's default).
pub const METRICS: &str = "127.0.0.1:9964";

/// GET /metrics from inside `ns`: the body of a 200 answer.
pub fn scrape(ns: &NetNs) -> String {
    ns.within(|| {
        let mut c = TcpStream::connect(METRICS).expect("metrics endpoint");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    })
}

/// The value of the first sample whose line starts with `name_and_labels`, if there is one.
pub fn metric(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().expect("a sample value") as u64)
}
