//! What a user sees on bad input and in the way of limits: clear messages, right exit codes
//! (2 for a usage error, whether clap or the program catches it; 1 for an error met running).

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{Engine, Server, first_port, free_ports, load, u};

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn port_in_use_is_a_clear_error(engine: Engine) {
    let ports = free_ports(1);
    let _holder = TcpListener::bind(("127.0.0.1", first_port(&ports))).unwrap();
    let (code, _, err) = run(engine.binary(), &["--host", "127.0.0.1", "--ports", &ports]);
    assert_eq!(code, 1, "{engine:?}: {err}");
    assert!(
        err.contains(&format!("127.0.0.1:{ports} is already in use")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn bad_flags_say_what_is_wrong(engine: Engine) {
    let bin = engine.binary();
    let (code, _, err) = run(bin, &["--ports", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("port 0 is not a port"), "{err}");
    let (code, _, err) = run(bin, &["--ports", "7000-6000"]);
    assert_eq!(code, 2);
    assert!(err.contains("runs backwards"), "{err}");
    let (code, _, err) = run(
        bin,
        &[
            "--host",
            "127.0.0.1",
            "--ports",
            &free_ports(1),
            "--cores",
            "0",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cores must be at least 1"), "{err}");
    let (code, _, err) = run(
        bin,
        &["--host", "10.255.255.254", "--ports", &free_ports(1)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no interface of this machine has that address"),
        "{err}"
    );
    for (flag, v) in [("--idle-timeout", "-1"), ("--header-timeout", "1e12")] {
        let (code, _, err) = run(bin, &["--ports", &free_ports(1), &format!("{flag}={v}")]);
        assert_eq!(code, 2, "{flag} {v}: {err}");
        assert!(
            err.contains(&format!("{flag} must be a number of seconds from 0")),
            "{err}"
        );
    }
}
/// `--pid-file`: written once the server listens, removed at exit; a stale file (its
/// process gone) is replaced; a file naming a live process stops the start, exit 1. With
/// `workers`, an epoll-server whose fd limit makes it a master of worker processes: the
/// master's PID is written, not a worker's.
fn the_pid_file_names_the_server_while_it_runs(engine: Engine, workers: bool) {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "c1m-pid-{}-{engine:?}-{workers}",
        std::process::id()
    ));
    let path_s = path.to_str().unwrap().to_string();
    // A stale file: a process that has exited.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&path, format!("{}\n", gone.id())).unwrap();
    let ports = free_ports(2);
    let mut flags = vec!["--pid-file", path_s.as_str()];
    let server = if workers {
        flags.extend(["--max-conns", "300"]);
        Server::start_with_nofile(engine, &ports, &flags, 400)
    } else {
        Server::start(engine, &ports, &flags)
    };
    assert_eq!(server.children().len(), if workers { 2 } else { 0 });
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}\n", server.pid()), "{engine:?}");

    // A second server with the same file refuses to start, naming the live process.
    let (code, _, err) = run(
        engine.binary(),
        &[
            "--host",
            "127.0.0.1",
            "--ports",
            &free_ports(1),
            "--pid-file",
            &path_s,
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("names process {}, which is running", server.pid())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "left as it was"
    );

    server.stop();
    assert!(!path.exists(), "{engine:?}: removed at exit");
}

fn the_pid_file_of_a_server(engine: Engine) {
    the_pid_file_names_the_server_while_it_runs(engine, false);
}

#[test]
fn the_pid_file_of_an_epoll_master() {
    the_pid_file_names_the_server_while_it_runs(Engine::Epoll, true);
}

/// `--config`: the file's keys are the flags; the command line overrides them;
/// `--check-config` prints the effective settings and the plan (exit 0), or names the key
/// and line of a bad setting (exit 2), and starts nothing; a server started with the file
/// serves where it says.
fn a_config_file_sets_the_flags(engine: Engine) {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir();
    let path = dir.join(format!("c1m-config-{}-{engine:?}.toml", std::process::id()));
    let p = path.to_str().unwrap().to_string();
    let ports = free_ports(2);
    std::fs::write(
        &path,
        format!(
            "# test\nhost = \"127.0.0.1\"\nports = \"{ports}\"\nmax-conns = 100000\nstats = true\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run(engine.binary(), &["--config", &p, "--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("ports = \"{ports}\"  # given\n")),
        "{out}"
    );
    assert!(out.contains("max-conns = 100000  # given\n"), "{out}");
    assert!(out.contains("stats = true  # given\n"), "{out}");
    assert!(out.contains("idle-timeout = 120  # default\n"), "{out}");
    assert!(out.contains("# plan: 100000 connections -> 8 "), "{out}");
    // The command line wins.
    let (code, out, _) = run(
        engine.binary(),
        &["--config", &p, "--max-conns", "500", "--check-config"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("max-conns = 500  # given\n"), "{out}");

    // A bad value is named by its key and line; so is one the program refuses later.
    std::fs::write(&path, "stats = true\n\nidle-timeout = -1\n").unwrap();
    let (code, out, err) = run(engine.binary(), &["--config", &p, "--check-config"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains(&format!(
            "{p}:3: --idle-timeout must be a number of seconds"
        )),
        "{err}"
    );
    std::fs::write(&path, "stats = true\nmax-conn = 5\n").unwrap();
    let (code, _, err) = run(engine.binary(), &["--config", &p]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{p}:2: max-conn: no such setting")),
        "{err}"
    );

    // Started with the file: it serves the file's protocol (the harness gives the ports).
    std::fs::write(&path, "proto = \"http\"\n").unwrap();
    let server = Server::start(engine, &ports, &["--config", &p]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", first_port(&ports))).unwrap();
    s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("Hello, World!"), "{reply}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 1);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_example_config_checks_for_both_servers() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/server.toml");
    for engine in [Engine::Uring, Engine::Epoll] {
        let (code, out, err) = run(engine.binary(), &["--config", example, "--check-config"]);
        assert_eq!(code, 0, "{engine:?}: {err}");
        assert!(out.contains("ports = \"6000-6049\"  # given"), "{out}");
    }
}

/// A server whose stdout reader goes away (`uring-server --stats | head -1`) goes on
/// serving: a stats line that cannot be written is dropped, not a panic.
fn a_gone_stdout_reader_does_not_stop_the_server(engine: Engine) {
    use std::io::{BufRead, BufReader};
    let ports = free_ports(1);
    let mut child = Command::new(engine.binary())
        .args(["--host", "127.0.0.1", "--ports", &ports, "--stats"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    // The reader is gone; two stats lines come and fail.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    assert!(child.try_wait().unwrap().is_none(), "{engine:?} ended");
    let (code, r) = load(&ports, &["--conns", "5", "--requests", "2"]);
    assert_eq!(code, 0, "{r}");
    c1m::sys::kill(child.id(), libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{engine:?}");
}

common::per_engine!(
    a_gone_stdout_reader_does_not_stop_the_server,
    port_in_use_is_a_clear_error,
    bad_flags_say_what_is_wrong,
    the_pid_file_of_a_server,
    a_config_file_sets_the_flags
);

#[test]
fn bad_buffer_flags_say_what_is_wrong() {
    let (code, _, err) = run(env!("CARGO_BIN_EXE_uring-server"), &["--bufs", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bufs 3 must be a power of two"), "{err}");
}

#[test]
fn bad_load_flags_are_usage_errors() {
    let bin = env!("CARGO_BIN_EXE_uring-load");
    for (args, says) in [
        (&["--conns", "0"][..], "--conns must be at least 1"),
        (
            &["--warmup=-1"][..],
            "--warmup must be a number of seconds >= 0",
        ),
        (
            &["--path", "/x"][..],
            "--path and --pipeline are for --proto http",
        ),
        (&["--ports", "0"][..], "port 0 is not a port"),
        (
            &["--host", "::1", "--sources", "127.0.0.1-127.0.0.4"][..],
            "--sources 127.0.0.1 is IPv4, --host ::1 is IPv6",
        ),
        (
            &["--sources", "fd00::1-127.0.0.1"][..],
            "range `fd00::1-127.0.0.1` mixes IPv4 and IPv6",
        ),
    ] {
        let (code, _, err) = run(bin, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_target_beyond_the_fd_limit_for_listeners_names_the_limit_and_the_fix() {
    // The Proactor's shards are threads sharing one fd table, each with a listener per port;
    // the Reactor's workers each have their own table, so this target fits them.
    {
        let (code, _, err) = run(
            env!("CARGO_BIN_EXE_uring-server"),
            &[
                "--host",
                "127.0.0.1",
                "--ports",
                "1-4000",
                "--max-conns",
                "1000000",
            ],
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("above RLIMIT_NOFILE"), "{err}");
        assert!(err.contains("use at most"), "{err}");
    }
}

#[test]
fn help_and_version() {
    for (name, bin, about) in [
        (
            "uring-server",
            env!("CARGO_BIN_EXE_uring-server"),
            "The Proactor: an io_uring TCP server",
        ),
        (
            "epoll-server",
            env!("CARGO_BIN_EXE_epoll-server"),
            "The Reactor: an edge-triggered epoll TCP server",
        ),
        (
            "uring-load",
            env!("CARGO_BIN_EXE_uring-load"),
            "An io_uring load generator",
        ),
    ] {
        let (code, out, _) = run(bin, &["-h"]);
        assert_eq!(code, 0);
        assert!(out.starts_with(about), "{name}: {out}");
        let (code, out, _) = run(bin, &["--help"]);
        assert_eq!(code, 0);
        assert!(out.starts_with(about), "{name}: {out}");
        assert!(out.contains(&format!("Try: `{name} --ports 6000")), "{out}");
        assert!(out.contains("--ports"), "{out}");
        let (code, out, _) = run(bin, &["--version"]);
        assert_eq!(code, 0);
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    }
}

#[test]
fn load_against_no_server_reports_every_failed_connection_and_exits_non_zero() {
    let ports = free_ports(2);
    let (code, r) = load(&ports, &["--conns", "50", "--duration", "1"]);
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "conns_requested"), 50);
    assert_eq!(u(&r, "conns_established"), 0);
    assert_eq!(u(&r, "conns_failed"), 50);
    assert_eq!(u(&r, "errors.connect:connection_refused"), 50, "{r}");
    let (code, _) = load(
        &ports,
        &["--conns", "5", "--duration", "0", "--allow-partial"],
    );
    assert_eq!(code, 0);
}

#[test]
fn load_beyond_the_ephemeral_ports_is_refused_with_the_fix() {
    for (host, family) in [("127.0.0.1", "IPv4"), ("::1", "IPv6")] {
        let (code, _, err) = run(
            env!("CARGO_BIN_EXE_uring-load"),
            &["--host", host, "--ports", "6000", "--conns", "1000000"],
        );
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("from one {family} source address")),
            "{err}"
        );
        assert!(err.contains("ephemeral ports"), "{err}");
        assert!(err.contains("use at least"), "{err}");
    }
}

const BINARIES: [(&str, &str); 4] = [
    ("uring-server", env!("CARGO_BIN_EXE_uring-server")),
    ("epoll-server", env!("CARGO_BIN_EXE_epoll-server")),
    ("uring-load", env!("CARGO_BIN_EXE_uring-load")),
    ("model-server", env!("CARGO_BIN_EXE_model-server")),
];

/// What bash offers for `words` (the last one being completed), with `bin`'s script loaded.
fn bash_completes(name: &str, bin: &str, words: &[&str]) -> String {
    let script = format!(
        "source <({bin} --completions bash) || exit 1
         f=$(complete -p {name} | sed 's/.* -F \\([^ ]*\\) .*/\\1/')
         COMP_WORDS=({name} {words}); COMP_CWORD={cword}
         $f {name} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"
         echo \"${{COMPREPLY[@]}}\"",
        words = words.join(" "),
        cword = words.len(),
    );
    let (code, out, err) = run("bash", &["-c", &script]);
    assert_eq!(code, 0, "{name}: {err}");
    out
}

#[test]
fn bash_completes_each_binarys_flags() {
    for (name, bin, flags, partial, expect) in [
        (
            BINARIES[0].0,
            BINARIES[0].1,
            &["--max-conns", "--ports", "--bufs", "--man"][..],
            "--max-c",
            "--max-conns",
        ),
        (
            BINARIES[1].0,
            BINARIES[1].1,
            &["--max-conns", "--ports", "--completions"][..],
            "--max-c",
            "--max-conns",
        ),
        (
            BINARIES[2].0,
            BINARIES[2].1,
            &["--conns", "--connect-inflight", "merge"][..],
            "--connect-i",
            "--connect-inflight",
        ),
        (
            BINARIES[3].0,
            BINARIES[3].1,
            &["--model", "--stack-kib", "--max-conns"][..],
            "--stack",
            "--stack-kib",
        ),
    ] {
        let (code, script, err) = run(bin, &["--completions", "bash"]);
        assert_eq!(code, 0, "{name}: {err}");
        for flag in flags {
            assert!(script.contains(flag), "{name}: no {flag} in\n{script}");
        }
        // epoll-server's worker flags are its master's, not a user's.
        assert!(!script.contains("--worker-"), "{name}: {script}");
        assert_eq!(bash_completes(name, bin, &[partial]).trim(), expect);
    }
    let load = BINARIES[2];
    assert_eq!(bash_completes(load.0, load.1, &["mer"]).trim(), "merge");
    assert_eq!(
        bash_completes(load.0, load.1, &["--proto", "\"\""]).trim(),
        "echo http redis"
    );
    let models = bash_completes(BINARIES[3].0, BINARIES[3].1, &["--model", "\"\""]);
    assert!(models.contains("leader-followers"), "{models}");
    assert_eq!(models.split_whitespace().count(), 13, "{models}");
}

#[test]
fn install_flags_stand_alone() {
    for (name, bin) in BINARIES {
        let (code, _, err) = run(bin, &["--man", "--ports", "6000"]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("cannot be used with"), "{name}: {err}");
        let (code, _, err) = run(bin, &["--completions", "tcsh"]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("possible values"), "{name}: {err}");
    }
}

#[test]
fn man_pages_are_roff_and_render() {
    let groff = common::installed("command -v groff", "groff", "groff");
    let (load, load_bin) = BINARIES[2];
    let pages = BINARIES
        .iter()
        .map(|&(name, bin)| (name.to_string(), bin, vec!["--man"]))
        .chain([(format!("{load}-merge"), load_bin, vec!["merge", "--man"])]);
    for (name, bin, args) in pages {
        let (code, page, err) = run(bin, &args);
        assert_eq!(code, 0, "{name}: {err}");
        let title = page.lines().find(|l| l.starts_with(".TH"));
        assert!(
            title.is_some_and(|t| t.starts_with(&format!(".TH {name} 1"))),
            "{name}: {page}"
        );
        assert!(page.contains("\n.SH NAME\n"), "{name}: {page}");
        assert!(page.contains("\n.SH SYNOPSIS\n"), "{name}: {page}");
        assert!(page.contains(&name.replace('-', "\\-")), "{name}: {page}");
        if !groff {
            continue;
        }
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), page.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let (text, warnings) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{name}: {warnings}");
        assert!(warnings.is_empty(), "{name}: groff warns: {warnings}");
        // grotty emboldens by overstriking: "S\bS".
        let text = text.chars().fold(String::new(), |mut t, c| {
            if c == '\u{8}' {
                t.pop();
            } else {
                t.push(c);
            }
            t
        });
        assert!(text.contains("SYNOPSIS"), "{name}: {text}");
        assert!(text.contains(&format!("{name}(1)")), "{name}: {text}");
    }
    let (_, page, _) = run(load_bin, &["--man"]);
    // The main page names the subcommand's.
    assert!(page.contains("uring\\-load\\-merge(1)"), "{page}");
}
