//! `bench-stand-in`, the slowloris benchmark's control server (`fleet bench
//! --only hostile`), as the benchmark runs it: a process of its own that
//! holds each connection to its deadline, replies and closes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleet::bench::hostile::StandIn;

#[test]
fn the_slowloris_benchmarks_stand_in_holds_a_connection_to_its_deadline_then_replies_and_closes() {
    let stand_in = StandIn::start(Duration::from_millis(300)).unwrap();

    let connected = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(stand_in.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut reply).unwrap();
    assert_eq!(reply.len(), 8, "a frame header's worth of bytes, then the close");
    assert!(
        connected.elapsed() >= Duration::from_millis(300),
        "held until the deadline"
    );

    // Closing its standard input stops it.
    assert!(stand_in.stop().unwrap().success());
}
