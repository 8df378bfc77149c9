//! A benchmark's command line, checked before anything runs: a misspelt option (`--round 5`)
//! or a value that is not a number stops the bench with one line naming it and exit status 2,
//! instead of a long run with the default; `--help` prints the bench's usage.
//!
//! ```no_run
//! use fnmill_testkit::bench_args::{Args, Opt};
//! let args = Args::parse(
//!     "host",
//!     "cargo bench --bench host [-- --events N]",
//!     &[Opt::Value("--events"), Opt::Switch("--quiet")],
//! );
//! let events = args.number("--events", 50_000);
//! ```

/// An option a bench takes.
#[derive(Clone, Copy, Debug)]
pub enum Opt {
    /// `--name VALUE` (may be repeated; [`Args::value`] gives the last).
    Value(&'static str),
    /// `--name` alone.
    Switch(&'static str),
}

impl Opt {
    fn name(self) -> &'static str {
        match self {
            Opt::Value(n) | Opt::Switch(n) => n,
        }
    }
}

/// The checked options of a bench's command line.
#[derive(Debug)]
pub struct Args {
    bench: &'static str,
    given: Vec<(&'static str, Option<String>)>,
}

impl Args {
    /// Checks the process's arguments against `options` (exits on a mistake, or after printing
    /// `usage` for `--help`). `--bench`, which `cargo bench` passes, is accepted and ignored.
    pub fn parse(bench: &'static str, usage: &str, options: &[Opt]) -> Self {
        match Self::from(bench, options, std::env::args().skip(1)) {
            Ok(Some(args)) => args,
            Ok(None) => {
                println!("{usage}");
                std::process::exit(0)
            }
            Err(message) => {
                eprintln!("{bench} bench: {message}\nusage: {usage}");
                std::process::exit(2)
            }
        }
    }

    /// `Ok(None)`: `--help` was asked for.
    fn from(
        bench: &'static str,
        options: &[Opt],
        args: impl IntoIterator<Item = String>,
    ) -> Result<Option<Self>, String> {
        let mut given = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Ok(None),
                "--bench" => continue,
                _ => {}
            }
            let Some(opt) = options.iter().find(|o| o.name() == arg) else {
                let known: Vec<&str> = options.iter().map(|o| o.name()).collect();
                return Err(format!(
                    "unknown option `{arg}` (it takes: {})",
                    known.join(", ")
                ));
            };
            match opt {
                Opt::Switch(name) => given.push((*name, None)),
                Opt::Value(name) => match args.next() {
                    Some(value) if !value.starts_with("--") => given.push((*name, Some(value))),
                    _ => return Err(format!("`{name}` needs a value")),
                },
            }
        }
        Ok(Some(Self { bench, given }))
    }

    /// The value of the last `name VALUE`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values(name).last().copied()
    }

    /// The values of every `name VALUE`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.given
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    /// Whether the switch `name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| *n == name)
    }

    /// `name`'s value as a whole number, or `default`; exits naming the option when it is not one.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.number_if_given(name).unwrap_or(default)
    }

    /// `name`'s value as a whole number, if given; exits naming the option when it is not one.
    pub fn number_if_given<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        let v = self.value(name)?;
        Some(v.parse().unwrap_or_else(|_| {
            eprintln!(
                "{} bench: `{name}` takes a whole number, not {v:?}",
                self.bench
            );
            std::process::exit(2)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[Opt] = &[
        Opt::Value("--events"),
        Opt::Value("--variant"),
        Opt::Switch("--no-peers"),
    ];

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        Args::from("t", OPTIONS, args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn known_options_parse_and_cargo_s_bench_flag_is_ignored() {
        let args = parse(&[
            "--bench",
            "--events",
            "10",
            "--no-peers",
            "--variant",
            "a=1",
            "--variant",
            "b=2",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.number("--events", 0u64), 10);
        assert!(args.switch("--no-peers"));
        assert_eq!(args.values("--variant"), ["a=1", "b=2"]);
        assert_eq!(args.value("--variant"), Some("b=2"));
        assert_eq!(args.number("--rounds", 3u32), 3, "absent: the default");
    }

    #[test]
    fn a_misspelt_option_or_a_missing_value_is_an_error_naming_it() {
        let err = parse(&["--event", "10"]).unwrap_err();
        assert!(err.starts_with("unknown option `--event`"), "{err}");
        assert!(err.contains("--events, --variant, --no-peers"), "{err}");
        assert_eq!(
            parse(&["--events"]).unwrap_err(),
            "`--events` needs a value"
        );
        assert_eq!(
            parse(&["--events", "--no-peers"]).unwrap_err(),
            "`--events` needs a value"
        );
    }

    #[test]
    fn help_asks_for_the_usage() {
        assert!(parse(&["--events", "1", "--help"]).unwrap().is_none());
    }
}
