//! `--config FILE`: a server's flags kept in a TOML file, every flag a key of the same name
//! (`max-conns = 100000`, `ports = "6000-6049"`, `stats = true`); flags given on the command
//! line override the file. `--check-config` validates the file and the flags, prints the
//! effective settings as TOML and exits 0, or names the offending key and line and exits 2
//! (nginx -t's role).
//!
//! The file is turned into the flags it stands for and parsed by the same clap definition
//! as the command line, so a key means exactly what its flag means: one key at a time first,
//! to name the line of a bad one, then the file and the command line together, the command
//! line last (a flag given twice takes the later value).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};

use crate::cli::ServerArgs;
use crate::plan::Plan;
use crate::stats::Summary;

/// Keys that cannot be in a file: they are about the file, or print something and exit.
const NOT_IN_FILE: [&str; 4] = ["config", "check-config", "completions", "man"];

/// Where the settings came from, to point at the line of a setting found wrong later.
pub struct Config {
    path: PathBuf,
    /// Each key of the file and its line.
    lines: BTreeMap<String, usize>,
}

impl Config {
    /// "FILE:LINE" of the key whose flag `message` names (`--bufs 3 must be ...`), if any.
    pub fn locate(&self, message: &str) -> Option<String> {
        self.lines
            .iter()
            .filter(|(key, _)| {
                message.match_indices(&format!("--{key}")).any(|(at, m)| {
                    let next = message[at + m.len()..].chars().next();
                    !next.is_some_and(|c| c.is_alphanumeric() || c == '-')
                })
            })
            .map(|(_, line)| format!("{}:{line}", self.path.display()))
            .next()
    }
}

/// What a server binary does: parse (with `--config`), then `--check-config` (`check`, the
/// effective settings and the plan printed; exit 0, or 2 naming what is wrong) or `run`.
/// An error names the file's line when a key of the file set the flag it is about; `who`
/// says which process it was (a Reactor worker names itself).
pub struct Server<T> {
    pub name: &'static str,
    /// Its server flags (what SIGHUP may apply).
    pub server: fn(&T) -> &ServerArgs,
    pub check: fn(&T) -> crate::error::Result<Plan>,
    pub run: fn(&T) -> crate::error::Result<Summary>,
    pub who: fn(&T) -> String,
}

/// A setting that differs between two reads of the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

type Reread = Box<dyn Fn() -> Result<(ServerArgs, Vec<Change>), String> + Send + Sync>;

/// How to read the settings again (set by `Server::main` when there is a `--config`).
static REREAD: std::sync::OnceLock<Reread> = std::sync::OnceLock::new();

/// Reads the `--config` file and the command line again (SIGHUP): the new server settings
/// and what differs from the last read. None without a `--config`.
pub fn reread() -> Option<Result<(ServerArgs, Vec<Change>), String>> {
    REREAD.get().map(|f| f())
}

/// Each key's value in `effective`'s text ("(not set)" for a key without one).
fn values(effective: &str) -> BTreeMap<String, String> {
    effective
        .lines()
        .filter_map(|l| match l.strip_prefix("# ") {
            Some(rest) => rest
                .strip_suffix(" is not set")
                .map(|k| (k.to_string(), "(not set)".to_string())),
            None => {
                let (k, v) = l.split_once(" = ")?;
                let v = v.rsplit_once("  # ").map_or(v, |(v, _)| v);
                Some((k.to_string(), v.to_string()))
            }
        })
        .collect()
}

fn changes(old: &str, new: &str) -> Vec<Change> {
    let (old, new) = (values(old), values(new));
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| Change {
            key: k.clone(),
            old: old.get(k).cloned().unwrap_or_default(),
            new: v.clone(),
        })
        .collect()
}

impl<T: CommandFactory + FromArgMatches + 'static> Server<T> {
    pub fn main(self) {
        let (args, matches, config) = parse::<T>(self.name);
        if config.is_some() {
            let (name, server) = (self.name, self.server);
            let argv: Vec<OsString> = std::env::args_os().collect();
            let last = std::sync::Mutex::new(effective::<T>(&matches));
            let reread: Reread = Box::new(move || {
                let (args, matches, _) = parse_from::<T>(name, argv.clone())?;
                let now = effective::<T>(&matches);
                let mut last = last.lock().map_err(|_| "a reload panicked".to_string())?;
                let changed = changes(&last, &now);
                *last = now;
                Ok((server(&args).clone(), changed))
            });
            let _ = REREAD.set(reread);
        }
        let explain = |e: &crate::error::Error| {
            let at = config.as_ref().and_then(|c| c.locate(&e.to_string()));
            let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
            eprintln!("{}: error: {at}{e}", (self.who)(&args));
        };
        match (self.server)(&args).install.print::<T>() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                eprintln!("{}: error: writing to stdout: {e}", self.name);
                std::process::exit(1);
            }
        }
        if (self.server)(&args).check_config {
            match (self.check)(&args) {
                Ok(plan) => {
                    print!("{}", effective::<T>(&matches));
                    println!("# {}", plan.describe());
                    for w in &plan.warnings {
                        println!("# warning: {w}");
                    }
                }
                Err(e) => {
                    explain(&e);
                    std::process::exit(2);
                }
            }
            return;
        }
        if let Err(e) = (self.run)(&args) {
            explain(&e);
            std::process::exit(e.exit_code());
        }
    }
}

/// Parses the command line of binary `name` into `T`, with the file `--config` names under
/// it. Exits 2 on a usage error, in the file (naming its line) or on the command line (as
/// clap does). Returns the parsed flags, their matches (for `effective`) and the file's
/// `Config` if there was one.
pub fn parse<T: CommandFactory + FromArgMatches>(name: &str) -> (T, ArgMatches, Option<Config>) {
    parse_from(name, std::env::args_os().collect()).unwrap_or_else(|e| {
        eprintln!("{name}: error: {e}");
        std::process::exit(2)
    })
}

fn parse_from<T: CommandFactory + FromArgMatches>(
    name: &str,
    argv: Vec<OsString>,
) -> Result<(T, ArgMatches, Option<Config>), String> {
    let cmd = T::command().args_override_self(true);
    let (from_file, config) = match config_path(&argv) {
        Some(path) => {
            let (args, config) = read(&cmd, name, &path)?;
            (args, Some(config))
        }
        None => (Vec::new(), None),
    };
    let mut all = vec![argv.first().cloned().unwrap_or_else(|| name.into())];
    all.extend(from_file);
    all.extend(argv.into_iter().skip(1));
    let matches = cmd.try_get_matches_from(all).unwrap_or_else(|e| e.exit());
    let args = T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((args, matches, config))
}

/// The value of `--config` on the command line (`--config F` or `--config=F`).
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The flags the file at `path` stands for, each key checked on its own against `cmd`.
fn read(cmd: &clap::Command, name: &str, path: &Path) -> Result<(Vec<OsString>, Config), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {shown}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        format!("{shown}:{line}: {}", e.message())
    })?;
    let mut args = Vec::new();
    let mut lines = BTreeMap::new();
    for (key, value) in &table {
        let line = key_line(&text, key);
        let at = |what: String| format!("{shown}:{line}: {key}: {what}");
        if NOT_IN_FILE.contains(&key.as_str()) {
            return Err(at("not allowed in a config file".into()));
        }
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !a.is_hide_set())
        else {
            return Err(at(format!(
                "no such setting (each key is a flag of `{name} --help`, without its --)"
            )));
        };
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        // `--key=value`, so that a value such as -1 is not taken for a flag.
        let with = |v: String| vec![format!("--{key}={v}")];
        let mine: Vec<String> = match value {
            toml::Value::Boolean(true) if is_switch => vec![format!("--{key}")],
            toml::Value::Boolean(false) if is_switch => vec![],
            _ if is_switch => return Err(at("takes true or false".into())),
            toml::Value::String(s) => with(s.clone()),
            toml::Value::Integer(i) => with(i.to_string()),
            toml::Value::Float(f) => with(f.to_string()),
            toml::Value::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                let parts = parts.ok_or_else(|| at("a list takes numbers or strings".into()))?;
                with(parts.join(","))
            }
            _ => return Err(at("takes a number, a string or a list".into())),
        };
        // The key alone, so that a bad value is named by its line.
        let mut alone = vec![name.to_string()];
        alone.extend(mine.iter().cloned());
        if let Err(e) = cmd.clone().try_get_matches_from(alone) {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return Err(at(first.trim_start_matches("error: ").to_string()));
        }
        args.extend(mine.into_iter().map(OsString::from));
        lines.insert(key.clone(), line);
    }
    let config = Config {
        path: path.to_path_buf(),
        lines,
    };
    Ok((args, config))
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The 1-based line of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` is set (`key =` at the start of a line, quoted or not).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
                .iter()
                .any(|k| {
                    l.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
        })
        .map_or(1, |i| i + 1)
}

/// The effective settings of `T` as TOML, a key per flag (given by the file, the command
/// line, or left at its default, as the comment says), what `--check-config` prints.
pub fn effective<T: CommandFactory>(matches: &ArgMatches) -> String {
    let mut out = String::new();
    for arg in T::command().get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if arg.is_hide_set() || NOT_IN_FILE.contains(&key) || key == "help" || key == "version" {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "given",
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "not set",
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            let on = matches.get_flag(id);
            let _ = writeln!(out, "{key} = {on}  # {source}");
            continue;
        }
        match matches.get_raw(id) {
            Some(raw) => {
                let v: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
                let v = v.join(",");
                let bare = v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite);
                let shown = if bare { v } else { format!("{v:?}") };
                let _ = writeln!(out, "{key} = {shown}  # {source}");
            }
            None => {
                let _ = writeln!(out, "# {key} is not set");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::UringArgs;

    fn file(text: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "c1m-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse(argv: &[&str]) -> Result<(UringArgs, ArgMatches, Option<Config>), String> {
        parse_from("uring-server", argv.iter().map(OsString::from).collect())
    }

    #[test]
    fn keys_are_flags_and_the_command_line_wins() {
        let path = file(
            "# a comment\nmax-conns = 100000\nports = \"7000-7009\"\nstats = true\nbufs = 4096\nidle-timeout = 1.5\n",
        );
        let p = path.to_str().unwrap();
        let (args, matches, config) =
            parse(&["uring-server", "--config", p, "--bufs", "1024"]).unwrap();
        assert_eq!(args.server.max_conns, Some(100_000));
        assert_eq!(args.server.ports.to_string(), "7000-7009");
        assert!(args.server.stats);
        assert_eq!(args.server.idle_timeout, 1.5);
        assert_eq!(args.bufs, 1024, "the command line overrides the file");
        let config = config.unwrap();
        assert_eq!(
            config.locate("--max-conns 0 is too few"),
            Some(format!("{p}:2"))
        );
        assert_eq!(
            config.locate("--max-header-bytes is wrong"),
            None,
            "not a key of the file"
        );
        let text = effective::<UringArgs>(&matches);
        assert!(text.contains("max-conns = 100000  # given\n"), "{text}");
        assert!(text.contains("ports = \"7000-7009\"  # given\n"), "{text}");
        assert!(text.contains("buf-size = 4096  # default\n"), "{text}");
        assert!(text.contains("# metrics is not set\n"), "{text}");
        assert!(
            !text.contains("completions") && !text.contains("\nman "),
            "{text}"
        );
        // What it prints is itself a config file that gives the same settings.
        let again = file(&text.replace("# metrics is not set", ""));
        let (same, _, _) = parse(&["uring-server", "--config", again.to_str().unwrap()]).unwrap();
        assert_eq!(same.server.max_conns, args.server.max_conns);
        assert_eq!(same.bufs, 1024);
    }

    #[test]
    fn a_bad_key_or_value_names_its_line() {
        for (text, line, says) in [
            (
                "stats = true\nmax-conn = 5\n",
                2,
                "max-conn: no such setting",
            ),
            (
                "stats = true\n\nbufs = \"many\"\n",
                3,
                "bufs: invalid value 'many'",
            ),
            ("stats = 1\n", 1, "stats: takes true or false"),
            ("ports = [6000, \"x\"]\n", 1, "ports:"),
            (
                "config = \"other.toml\"\n",
                1,
                "not allowed in a config file",
            ),
            ("man = true\n", 1, "not allowed in a config file"),
            ("worker-index = 1\n", 1, "no such setting"),
            ("stats = true\nports = = 3\n", 2, ""),
        ] {
            let path = file(text);
            let p = path.to_str().unwrap();
            let err = parse(&["uring-server", "--config", p]).err().unwrap();
            assert!(err.starts_with(&format!("{p}:{line}: ")), "{text:?}: {err}");
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let err = parse(&["uring-server", "--config", "/nonexistent/c1m.toml"])
            .err()
            .unwrap();
        assert!(
            err.contains("--config /nonexistent/c1m.toml: No such file"),
            "{err}"
        );
    }
}
