//! The HTTP suite: both servers with `--proto http` on loopback, exact answer bytes (the Date
//! value aside), requests split anywhere and pipelined, bad input, uring-load's HTTP mode, and
//! tools nobody here wrote (wrk, h2load, ab, curl; .ci/run installs them). Each test body is
//! one case per engine and address family, over 127.0.0.1 and ::1
//! (`common::per_engine!(ipv4_and_ipv6: ..)`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{Server, Target, first_port, free_ports, u};

/// Stands for any IMF-fixdate: received dates are rewritten to it before comparing.
const DATE: &str = "Www, DD Mmm YYYY HH:MM:SS GMT";

fn ok() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: c1m\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
         Content-Length: 13\r\n\r\nHello, World!"
    )
}

fn head_ok() -> String {
    ok().strip_suffix("Hello, World!").unwrap().to_string()
}

fn not_found() -> String {
    format!("HTTP/1.1 404 Not Found\r\nServer: c1m\r\nDate: {DATE}\r\nContent-Length: 0\r\n\r\n")
}

/// An answer that closes the connection.
fn closing(status: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nServer: c1m\r\nDate: {DATE}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
}

/// Rewrites every `Date: ` value to `DATE`, checking that it has the IMF-fixdate shape.
fn normalize_dates(got: &[u8]) -> String {
    let mut text = String::from_utf8(got.to_vec()).expect("answers are ASCII");
    let mut from = 0;
    while let Some(at) = text[from..].find("Date: ") {
        let start = from + at + 6;
        let value = &text[start..(start + 29).min(text.len())];
        assert!(
            value.len() == 29 && value.ends_with(" GMT") && &value[3..5] == ", ",
            "not an IMF-fixdate: {value:?}"
        );
        text.replace_range(start..start + 29, DATE);
        from = start + 29;
    }
    text
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.target.addr(first_port(&server.ports))).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads exactly as many bytes as `expected` holds and compares them, dates aside.
fn expect_answers(s: &mut TcpStream, expected: &str, what: &str) {
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: reading {} bytes: {e}", expected.len()));
    assert_eq!(normalize_dates(&got), expected, "{what}");
}

/// Reads to EOF (the server closed) and compares, dates aside.
fn expect_last_answer(s: &mut TcpStream, expected: &str, what: &str) {
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("{what}: reading to EOF: {e}"));
    assert_eq!(normalize_dates(&got), expected, "{what}");
}

fn http_server(t: Target, extra: &[&str]) -> Server {
    let ports = free_ports(1);
    let mut args = vec!["--proto", "http", "--cores", "1"];
    args.extend_from_slice(extra);
    Server::start(t, &ports, &args)
}

/// `http://127.0.0.1:PORT` or `http://[::1]:PORT`, for the tools.
fn base_url(server: &Server) -> String {
    format!("http://{}", server.target.addr(first_port(&server.ports)))
}

fn plaintext_root_and_head_answer_exactly_even_when_split_anywhere(t: Target) {
    let req = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n";
    let server = http_server(t, &[]);
    let mut s = connect(&server);
    s.write_all(req.as_bytes()).unwrap();
    expect_answers(&mut s, &ok(), "GET /plaintext");
    // The same request in pieces cut at every few bytes, each its own segment.
    for chunk in req.as_bytes().chunks(5) {
        s.write_all(chunk).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    expect_answers(&mut s, &ok(), "GET /plaintext in 5-byte pieces");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nHEAD /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    expect_answers(&mut s, &(ok() + &head_ok()), "GET / then HEAD");
    drop(s);
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 4, "{t}");
}

common::per_engine!(ipv4_and_ipv6: plaintext_root_and_head_answer_exactly_even_when_split_anywhere);

fn pipelined_requests_are_answered_in_order(t: Target) {
    let server = http_server(t, &[]);
    let mut s = connect(&server);
    let (mut reqs, mut expected) = (String::new(), String::new());
    for i in 0..300 {
        let (req, answer) = match i % 3 {
            0 => ("GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", ok()),
            1 => ("GET /missing HTTP/1.1\r\nHost: a\r\n\r\n", not_found()),
            _ => ("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", head_ok()),
        };
        reqs += req;
        expected += &answer;
    }
    // The last one asks to close: the server answers it, then closes.
    reqs += "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    expected += &ok().replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    s.write_all(reqs.as_bytes()).unwrap();
    expect_last_answer(&mut s, &expected, &format!("{t}: 301 pipelined"));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 301);
}

common::per_engine!(ipv4_and_ipv6: pipelined_requests_are_answered_in_order);

fn http10_closes_unless_kept_alive(t: Target) {
    let server = http_server(t, &[]);
    let mut s = connect(&server);
    s.write_all(b"GET /plaintext HTTP/1.0\r\n\r\n").unwrap();
    let close = ok().replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    expect_last_answer(&mut s, &close, "HTTP/1.0");
    let mut s = connect(&server);
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let keep = ok().replace("\r\n\r\n", "\r\nConnection: keep-alive\r\n\r\n");
    expect_answers(&mut s, &keep, "HTTP/1.0 keep-alive");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    expect_last_answer(&mut s, &close, "then HTTP/1.0 without it");
    server.stop();
}

common::per_engine!(ipv4_and_ipv6: http10_closes_unless_kept_alive);

fn bad_input_gets_its_status_and_nothing_more(t: Target) {
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(2000)
    );
    let closing_cases: [(&str, &[u8], String); 6] = [
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", closing("400 Bad Request")),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", closing("400 Bad Request")),
        ("headers over --max-header-bytes", big_header.as_bytes(), closing("431 Request Header Fields Too Large")),
        (
            "body over --max-body-bytes",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
            closing("413 Content Too Large"),
        ),
        (
            "smuggling: both framings",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            closing("400 Bad Request"),
        ),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", closing("505 HTTP Version Not Supported")),
    ];
    let server = http_server(
        t,
        &["--max-header-bytes", "1024", "--max-body-bytes", "4096"],
    );
    for (what, input, answer) in &closing_cases {
        let mut s = connect(&server);
        s.write_all(input).unwrap();
        expect_last_answer(&mut s, answer, &format!("{t}: {what}"));
    }
    // Answers that keep the connection: the next request on it is read right.
    let method = |status: &str| {
        let allow = if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {status}\r\n{allow}Server: c1m\r\nDate: {DATE}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let kept: [(&str, &[u8], String); 4] = [
        ("DELETE", b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", method("405 Method Not Allowed")),
        ("unknown method", b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", method("501 Not Implemented")),
        (
            "a body that looks like a request",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 27\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            method("405 Method Not Allowed"),
        ),
        (
            "a chunked body",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;x=y\r\nGET \r\n17\r\n/ HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\nT: 1\r\n\r\n",
            method("405 Method Not Allowed"),
        ),
    ];
    let mut s = connect(&server);
    for (what, input, answer) in &kept {
        s.write_all(input).unwrap();
        s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        expect_answers(&mut s, &(answer.clone() + &ok()), &format!("{t}: {what}"));
    }
    drop(s);
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 6 + 8, "{t}");
}

common::per_engine!(ipv4_and_ipv6: bad_input_gets_its_status_and_nothing_more);

fn uring_load_checks_every_answer_pipelined_or_not(t: Target) {
    let server = http_server(t, &[]);
    for pipeline in ["1", "16"] {
        let (code, r) = server.load(&[
            "--proto",
            "http",
            "--conns",
            "40",
            "--pipeline",
            pipeline,
            "--requests",
            "64",
        ]);
        assert_eq!(code, 0, "{t} pipeline {pipeline}: {r}");
        assert_eq!(u(&r, "requests"), 40 * 64, "{r}");
        assert_eq!(r["errors"].as_object().unwrap().len(), 0, "{r}");
        assert_eq!(
            (r["proto"].as_str(), u(&r, "pipeline")),
            (Some("http"), pipeline.parse().unwrap())
        );
    }
    let (code, r) = server.load(&[
        "--proto",
        "http",
        "--path",
        "/nope",
        "--conns",
        "3",
        "--requests",
        "2",
    ]);
    assert_eq!(code, 3);
    assert_eq!(u(&r, "errors.http_status:404"), 3, "{r}");
    assert_eq!(
        r["errors"].as_object().unwrap().len(),
        1,
        "wrong answers are not also unanswered: {r}"
    );
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 2 * 40 * 64 + 3, "{t}");
}

common::per_engine!(ipv4_and_ipv6: uring_load_checks_every_answer_pipelined_or_not);

fn uring_load_http_against_an_echo_server_reports_malformed_answers(t: Target) {
    let ports = free_ports(1);
    let server = Server::start(t, &ports, &["--cores", "1"]);
    let (code, r) = server.load(&["--proto", "http", "--conns", "2", "--requests", "1"]);
    assert_eq!(code, 3, "{t}: {r}");
    assert_eq!(u(&r, "errors.http_malformed"), 2, "{r}");
    server.stop();
}

common::per_family!(Uring: uring_load_http_against_an_echo_server_reports_malformed_answers);

/// Whether `tool` can be run (see `common::installed`).
fn have(tool: &str) -> bool {
    common::installed(
        &format!("command -v {tool}"),
        tool,
        "wrk nghttp2-client apache2-utils curl",
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

fn wrk_runs_clean(t: Target) {
    if !have("wrk") {
        return;
    }
    let server = http_server(t, &[]);
    let url = format!("{}/plaintext", base_url(&server));
    let text = run("wrk", &["-t1", "-c64", "-d2", &url]);
    assert!(!text.contains("Socket errors"), "{t}: {text}");
    assert!(!text.contains("Non-2xx"), "{t}: {text}");
    let requests: u64 = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, next)| *next == "requests")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count: {text}"));
    assert!(requests > 1000, "{t}: {text}");
    let stats = server.stop();
    assert!(u(&stats, "totals.requests") >= requests, "{t}");
}

common::per_engine!(ipv4_and_ipv6: wrk_runs_clean);

fn h2load_runs_clean(t: Target) {
    if !have("h2load") {
        return;
    }
    let server = http_server(t, &[]);
    let url = format!("{}/plaintext", base_url(&server));
    let text = run(
        "h2load",
        &["--h1", "-n", "20000", "-c", "50", "-m", "10", &url],
    );
    assert!(
        text.contains(
            "20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored"
        ),
        "{t}: {text}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{t}: {text}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 20_000, "{t}");
}

common::per_engine!(ipv4_and_ipv6: h2load_runs_clean);

fn ab_runs_clean_with_and_without_keep_alive(t: Target) {
    if !have("ab") {
        return;
    }
    let server = http_server(t, &[]);
    let url = format!("{}/plaintext", base_url(&server));
    // ab speaks HTTP/1.0: -k asks for keep-alive, without it every request closes.
    for keep in [true, false] {
        let mut args = vec!["-n", "5000", "-c", "20"];
        if keep {
            args.push("-k");
        }
        args.push(&url);
        let text = run("ab", &args);
        assert!(text.contains("Complete requests:      5000"), "{t}: {text}");
        assert!(text.contains("Failed requests:        0"), "{t}: {text}");
        assert!(!text.contains("Non-2xx"), "{t}: {text}");
        assert!(
            text.contains("Document Length:        13 bytes"),
            "{t}: {text}"
        );
        if keep {
            assert!(text.contains("Keep-Alive requests:    5000"), "{t}: {text}");
        }
    }
    server.stop();
}

common::per_engine!(ipv4_and_ipv6: ab_runs_clean_with_and_without_keep_alive);

fn curl_gets_the_answers(t: Target) {
    if !have("curl") {
        return;
    }
    let server = http_server(t, &["--max-body-bytes", "1000"]);
    let base = base_url(&server);
    let get = |args: &[&str]| run("curl", &[&["-sS", "--max-time", "10"], args].concat());
    assert_eq!(get(&[&format!("{base}/plaintext")]), "Hello, World!");
    assert_eq!(get(&["--http1.0", &format!("{base}/")]), "Hello, World!");
    let code = |args: &[&str]| get(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    assert_eq!(code(&[&format!("{base}/nope")]), "404");
    assert_eq!(code(&["-I", &format!("{base}/plaintext")]), "200");
    assert_eq!(code(&["-X", "DELETE", &format!("{base}/")]), "405");
    assert_eq!(
        code(&["--data-binary", "small body", &format!("{base}/")]),
        "405"
    );
    let big = "x".repeat(5000);
    assert_eq!(code(&["--data-binary", &big, &format!("{base}/")]), "413");
    // Two requests on one connection: curl reuses it (keep-alive).
    let both = get(&["-v", &format!("{base}/"), &format!("{base}/plaintext")]);
    assert!(both.contains("Re-using existing connection"), "{t}: {both}");
    server.stop();
}

common::per_engine!(ipv4_and_ipv6: curl_gets_the_answers);

fn a_peer_that_sends_requests_but_never_reads_is_pushed_back(t: Target) {
    let mut server = http_server(t, &[]);
    let mut s = connect(&server);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let one = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n";
    let req = one.repeat(1000);
    // Each 36-byte request asks for a 128-byte answer: unread answers fill the socket
    // buffers, the server stops reading, and our writes stall.
    let mut sent = 0usize;
    let stalled = loop {
        match s.write(&req[sent % req.len()..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                break true;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{t}: {e}"),
        }
        if sent > 512 << 20 {
            break false;
        }
    };
    assert!(
        stalled,
        "{t}: the server read {sent} bytes of requests whose answers nobody read"
    );
    // Reading now gets every answer, in order.
    let answered = sent / one.len();
    let expected = ok().len() * answered;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = vec![0u8; expected];
    s.read_exact(&mut got).unwrap_or_else(|e| {
        panic!(
            "{t}: after {sent} bytes sent: {e}; {}",
            server.stop_within(Duration::from_secs(10))
        )
    });
    let text = normalize_dates(&got);
    assert_eq!(text.matches("Hello, World!").count(), answered);
    drop(s);
    server.stop();
}

common::per_engine!(ipv4_and_ipv6: a_peer_that_sends_requests_but_never_reads_is_pushed_back);
