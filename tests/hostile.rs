//! Hostile input on both ports: garbage, absurd lengths, huge and invalid bodies. Each gets
//! an error or a closed connection, never a hang or a crash, and the server keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};

use crate::support::TestServer;

/// Sends `bytes` and reads what comes back until the server closes the connection;
/// `None` if it is still open after `wait`.
fn send(server: &TestServer, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(server.pg).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    // The server may close before reading everything: a failed write is an answer too.
    let _ = stream.write_all(bytes);
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(answer),
            Err(_) if started.elapsed() >= wait => return None,
            Err(_) => return None,
        }
    }
}

/// The types of the server's messages in `answer` (after the start-up's).
pub(crate) fn message_types(answer: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = answer;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        types.push(rest[0]);
        rest = &rest[(1 + len).min(rest.len())..];
    }
    types
}

fn still_serving(server: &TestServer) {
    let (ok, out, err) = server.psql("postgres", &["-A", "-t", "-c", "SELECT 40 + 2"]);
    assert!(
        ok && out.trim() == "42",
        "the server stopped serving: {err}"
    );
}

/// A start-up message for `user` on `database`.
pub(crate) fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

#[test]
fn garbage_and_absurd_lengths_on_the_postgres_port() {
    let server = TestServer::start();
    let mut rng = rand::rng();
    let wait = Duration::from_secs(10);

    // Random bytes, from a few to 64 KiB: whatever the server makes of them, it survives.
    let mut garbage = vec![0u8; 64 << 10];
    for round in 0..20 {
        let len = rng.random_range(1..garbage.len());
        rng.fill_bytes(&mut garbage[..len]);
        // A length the server would wait for is answered by the start-up timeout only:
        // do not wait for it here.
        let _ = send(&server, &garbage[..len], Duration::from_millis(200));
        if round % 5 == 4 {
            still_serving(&server);
        }
    }

    // A start-up message claiming 2 GB: refused at once.
    let absurd = [0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0];
    assert!(
        send(&server, &absurd, wait).is_some(),
        "the connection stayed open"
    );
    // A start-up message shorter than its own header.
    assert!(send(&server, &[0, 0, 0, 4, 0, 3, 0, 0], wait).is_some());

    // After a good start-up, a query claiming 2 GB: the connection is closed, nothing else.
    let mut messages = startup("u", "postgres");
    messages.extend_from_slice(&[b'Q', 0x7f, 0xff, 0xff, 0xf0]);
    messages.extend_from_slice(b"SELECT 1");
    let answer = send(&server, &messages, wait).expect("the connection stayed open");
    let types = message_types(&answer);
    assert!(types.contains(&b'Z'), "no start-up answer before closing");
    assert_eq!(
        types.last(),
        Some(&b'E'),
        "no error before closing: {types:?}"
    );

    // Messages pgwire panics on while decoding (a length shorter than the length itself, a
    // Parse whose body ends inside its own fields): Gannet answers 08P01 and closes.
    for (kind, tail) in [(b'p', &[0u8, 0, 0, 0][..]), (b'P', &[0, 0, 0, 5, 0])] {
        let mut short = startup("u", "postgres");
        short.push(kind);
        short.extend_from_slice(tail);
        let answer = send(&server, &short, wait)
            .unwrap_or_else(|| panic!("{}: the connection stayed open", kind as char));
        let types = message_types(&answer);
        assert_eq!(types.last(), Some(&b'E'), "{}: {types:?}", kind as char);
    }

    // Invalid UTF-8 in the start-up parameters and in a query.
    let _ = send(
        &server,
        &startup("\u{fffd}", "\u{fffd}"),
        Duration::from_millis(500),
    );
    let mut bad = startup("u", "postgres");
    bad.push(b'Q');
    bad.extend_from_slice(&9u32.to_be_bytes());
    bad.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0]);
    bad.push(b'X');
    bad.extend_from_slice(&4u32.to_be_bytes());
    let answer = send(&server, &bad, wait).expect("the connection stayed open");
    let types = message_types(&answer);
    assert!(
        types.contains(&b'E'),
        "no error for a query that is not UTF-8: {types:?}"
    );
    still_serving(&server);
}

#[test]
fn garbage_huge_and_invalid_bodies_over_http() {
    let server = TestServer::start();
    let mut rng = rand::rng();
    let write = "/api/v3/write_lp?db=m&precision=s";

    // 50 MB of random bytes: 413, before anything is parsed.
    let mut huge = vec![0u8; 50 << 20];
    rng.fill_bytes(&mut huge);
    let (status, _) = server.curl("POST", write, &[], Some(&huge));
    assert_eq!(status, 413);
    // The same as gzip claims: 400 (not gzip).
    let (status, _) = server.curl(
        "POST",
        write,
        &["Content-Encoding: gzip"],
        Some(&huge[..1 << 20]),
    );
    assert_eq!(status, 400);

    // Invalid UTF-8 in a line: that line is rejected, the next is written.
    let (status, out) = server.curl(
        "POST",
        write,
        &[],
        Some(b"cpu,host=\xff\xfe v=1 1\ncpu,host=ok v=2 2\n"),
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("UTF-8"), "{text}");
    let (status, out) = server.curl(
        "GET",
        "/api/v3/query_sql?db=m&q=SELECT%20host%20FROM%20cpu&format=csv",
        &[],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&out), "host\nok\n");

    // Random bytes as line protocol: every line rejected or written, never a 500.
    for _ in 0..10 {
        let len = rng.random_range(1..(256 << 10));
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let (status, _) = server.curl("POST", write, &[], Some(&body));
        assert!(matches!(status, 204 | 400), "{status}");
    }
    // Random query text.
    let (status, _) = server.curl("GET", "/api/v3/query_sql?db=m&q=%FF%FE%00SELECT", &[], None);
    assert_eq!(status, 400);
    still_serving(&server);
}
