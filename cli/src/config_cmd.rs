//! Where settings come from, as gunicorn: defaults (with `$WEB_CONCURRENCY`, `$PORT`) < config
//! file < `$GUNICORN_CMD_ARGS` < `$FERROCORN_CMD_ARGS` < command line. Each source is parsed
//! alone with the same flags; per flag the highest source that sets it wins whole (a `bind` list
//! from the command line replaces the config file's), then the winners are parsed once more into
//! [`Options`]. Also `--print-config` and `--check-config`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use ferrocorn_config::{Location, Translated};

use ferrocorn_flags::{AppArgument, Options};

const GUNICORN_CMD_ARGS: &str = "GUNICORN_CMD_ARGS";
const FERROCORN_CMD_ARGS: &str = "FERROCORN_CMD_ARGS";
/// Exit code for a config file that cannot be read or asks for what ferrocorn refuses.
const CONFIG_ERROR: u8 = 1;
/// clap's exit code for bad flags.
const USAGE_ERROR: u8 = 2;

/// Where one setting's value came from, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Default,
    Env(String),
    ConfigFile(String),
    GunicornCmdArgs,
    FerrocornCmdArgs,
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::ConfigFile(path) => write!(f, "config file {path}"),
            Source::GunicornCmdArgs => f.write_str(GUNICORN_CMD_ARGS),
            Source::FerrocornCmdArgs => f.write_str(FERROCORN_CMD_ARGS),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// The effective options and what `--print-config` needs to explain them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub options: Options,
    matches: ArgMatches,
    sources: BTreeMap<String, Source>,
    config: Option<(Location, Translated)>,
    /// gunicorn flags for settings ferrocorn lacks, per flag source, lowest first.
    unsupported_flags: Vec<(Source, Translated)>,
    /// Why `options.virtualenv` is what it is, for `--print-config`.
    virtualenv_reason: Option<String>,
}

/// Read every source. Bad flags exit 2 (clap's usage error, naming the source); a config file
/// that raises or is refused exits 1 with the reason.
pub(crate) fn load() -> Result<Loaded, ExitCode> {
    let mut unsupported_flags = Vec::new();
    let mut flag_sources = Vec::new();
    let command_line = Some(std::env::args_os().skip(1).collect());
    let gunicorn = env_tokens(GUNICORN_CMD_ARGS)?;
    let ferrocorn = env_tokens(FERROCORN_CMD_ARGS)?;
    for (source, tokens) in [
        (Source::GunicornCmdArgs, gunicorn),
        (Source::FerrocornCmdArgs, ferrocorn),
        (Source::CommandLine, command_line),
    ] {
        let Some(tokens) = tokens else { continue };
        let (tokens, taken) = take_unsupported_flags(&source, tokens)?;
        flag_sources.push((source.clone(), parse_source(&source, tokens)?));
        unsupported_flags.push((source, taken));
    }
    let config = read_config_file(&flag_sources)?;
    let mut sources = Vec::new();
    if let Some((location, translated)) = &config {
        let tokens = translated.tokens.iter().map(OsString::from).collect();
        let source = Source::ConfigFile(location.to_string());
        let matches = parse_source(&source, tokens)?;
        sources.push((source, matches));
    }
    sources.extend(flag_sources);
    let mut loaded = merge(sources, config)?;
    loaded.unsupported_flags = unsupported_flags;
    loaded.choose_virtualenv(crate::venv::installed_in());
    Ok(loaded)
}

/// gunicorn's flags for settings ferrocorn lacks, taken out of one source's tokens: refused
/// (exit 2) or kept to warn about by name. Tokens that are not UTF-8 are no gunicorn flag.
fn take_unsupported_flags(
    source: &Source,
    tokens: Vec<OsString>,
) -> Result<(Vec<OsString>, Translated), ExitCode> {
    let Some(strings) = tokens
        .iter()
        .map(|t| t.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return Ok((tokens, Translated::default()));
    };
    match ferrocorn_config::take_unsupported_flags(strings, &source.to_string()) {
        Ok((kept, taken)) => Ok((kept.into_iter().map(OsString::from).collect(), taken)),
        Err(e) => {
            eprintln!("Error: {e}");
            Err(ExitCode::from(USAGE_ERROR))
        }
    }
}

/// Parse one source's tokens alone. Only what the source itself says counts later (clap's
/// env fallbacks and defaults are applied once, at the end).
fn parse_source(source: &Source, tokens: Vec<OsString>) -> Result<ArgMatches, ExitCode> {
    let argv = std::iter::once(OsString::from("ferrocorn")).chain(tokens);
    match Options::command().try_get_matches_from(argv) {
        Ok(matches) => Ok(matches),
        Err(e) if *source == Source::CommandLine => e.exit(),
        Err(e) => {
            eprintln!("Error in {source}: {}", e.render().to_string().trim_end());
            Err(ExitCode::from(USAGE_ERROR))
        }
    }
}

/// The flags in an environment variable such as `GUNICORN_CMD_ARGS`, split like a shell would.
fn env_tokens(var: &'static str) -> Result<Option<Vec<OsString>>, ExitCode> {
    let Ok(text) = std::env::var(var) else {
        return Ok(None);
    };
    match ferrocorn_config::split_cmd_args(var, &text) {
        Ok(tokens) => Ok(Some(tokens.into_iter().map(OsString::from).collect())),
        Err(e) => {
            eprintln!("Error: {e}");
            Err(ExitCode::from(USAGE_ERROR))
        }
    }
}

/// The value a flag source (highest first) gives `id`, if any.
fn explicit(flag_sources: &[(Source, ArgMatches)], id: &str) -> Option<String> {
    flag_sources
        .iter()
        .rev()
        .filter(|(_, m)| m.value_source(id) == Some(ValueSource::CommandLine))
        .find_map(|(_, m)| raw_values(m, id).pop())
        .map(|v| v.to_string_lossy().into_owned())
}

/// Find and evaluate the config file (`-c` from the highest flag source, else
/// `./gunicorn.conf.py`), in a child Python.
fn read_config_file(
    flag_sources: &[(Source, ArgMatches)],
) -> Result<Option<(Location, Translated)>, ExitCode> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(location) = Location::find(explicit(flag_sources, "config").as_deref(), &cwd) else {
        return Ok(None);
    };
    let python = config_python(flag_sources);
    let fail = |e: ferrocorn_config::Error| {
        eprintln!("Error: {e}");
        ExitCode::from(CONFIG_ERROR)
    };
    let namespace = ferrocorn_config::evaluate(&location, &python).map_err(fail)?;
    eprint!("{}", namespace.output);
    let translated = ferrocorn_config::translate(&namespace, &location).map_err(fail)?;
    Ok(Some((location, translated)))
}

/// The interpreter for config files: the app's virtualenv (as [`crate::venv`] finds it), so the
/// file can import what the app can, else the Python ferrocorn was built against.
fn config_python(flag_sources: &[(Source, ArgMatches)]) -> PathBuf {
    let venv = explicit(flag_sources, "virtualenv")
        .map(PathBuf::from)
        .or_else(crate::venv::installed_in)
        .or_else(crate::venv::activated);
    match venv {
        Some(dir) => dir.join("bin").join("python"),
        None => PathBuf::from(env!("FERROCORN_BUILD_PYTHON")),
    }
}

/// Per flag, the highest source wins whole; parse the winners' tokens into the options.
fn merge(
    sources: Vec<(Source, ArgMatches)>,
    config: Option<(Location, Translated)>,
) -> Result<Loaded, ExitCode> {
    let command = Options::command();
    let mut winners: BTreeMap<String, (Source, Vec<OsString>)> = BTreeMap::new();
    // `wsgi_app` is no flag: the config file's app goes in first, below every flag source.
    if let Some((location, Translated { app: Some(app), .. })) = &config {
        let source = Source::ConfigFile(location.to_string());
        winners.insert("app".into(), (source, vec![app.into()]));
    }
    for (source, matches) in &sources {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                winners.insert(id.to_string(), (source.clone(), tokens_of(arg, matches)));
            }
        }
    }
    // Every flag token is `--long[=value]`, so the app can go first without a `--`.
    let mut argv: Vec<OsString> = winners
        .get("app")
        .into_iter()
        .flat_map(|(_, t)| t.iter().cloned())
        .collect();
    for (id, (_, tokens)) in &winners {
        if id != "app" {
            argv.extend(tokens.iter().cloned());
        }
    }
    let matches = parse_source(&Source::CommandLine, argv)?;
    let options = Options::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sources = winners
        .into_iter()
        .map(|(id, (source, _))| (id, source))
        .collect();
    Ok(Loaded {
        options,
        matches,
        sources,
        config,
        unsupported_flags: Vec::new(),
        virtualenv_reason: None,
    })
}

/// The tokens that say again what `matches` says for `arg`.
fn tokens_of(arg: &clap::Arg, matches: &ArgMatches) -> Vec<OsString> {
    let id = arg.get_id().as_str();
    if arg.is_positional() {
        return raw_values(matches, id);
    }
    let long = arg.get_long().expect("every flag has a long name");
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return vec![format!("--{long}").into()];
    }
    raw_values(matches, id)
        .into_iter()
        .map(|value| {
            let mut token = OsString::from(format!("--{long}="));
            token.push(value);
            token
        })
        .collect()
}

fn raw_values(matches: &ArgMatches, id: &str) -> Vec<OsString> {
    matches
        .get_raw(id)
        .into_iter()
        .flatten()
        .map(OsString::from)
        .collect()
}

impl Loaded {
    /// gunicorn's order: `--virtualenv` from any flag source, then the virtualenv ferrocorn is
    /// installed in (`installed`), then `$VIRTUAL_ENV` (clap's fallback for the flag).
    fn choose_virtualenv(&mut self, installed: Option<PathBuf>) {
        let from_env = self.matches.value_source("virtualenv") == Some(ValueSource::EnvVariable);
        self.virtualenv_reason = match (&self.options.virtualenv, installed) {
            (Some(_), _) if !from_env => self.sources.get("virtualenv").map(ToString::to_string),
            (_, Some(venv)) => {
                self.options.virtualenv = Some(venv);
                Some("ferrocorn is installed in it (its bin/ferrocorn was run)".into())
            }
            (Some(_), None) => Some("env VIRTUAL_ENV, the activated virtualenv".into()),
            (None, None) => None,
        };
    }

    /// The config file's hooks among `wanted`, if it defines any.
    pub fn hook_source(&self, wanted: &[&str]) -> Option<crate::hooks::HookSource> {
        let (location, translated) = self.config.as_ref()?;
        crate::hooks::HookSource::new(location, &translated.hooks, wanted)
    }

    /// Log, by name, every setting from the config file or a gunicorn flag that is not in force.
    pub fn warn_unsupported(&self) {
        let from_flags = self.unsupported_flags.iter().map(|(_, t)| t);
        for warning in self
            .config
            .iter()
            .map(|(_, t)| t)
            .chain(from_flags)
            .flat_map(|t| &t.warnings)
        {
            log::warn!("{warning}");
        }
    }

    /// `--print-config` and `--check-config`: the exit code when one was asked for.
    pub fn run_checks(&self) -> Option<ExitCode> {
        if !self.options.print_config && !self.options.check_config {
            return None;
        }
        if self.options.print_config {
            print!("{}", self.describe());
        }
        Some(
            match ferrocorn_flags::check_options(&self.options, AppArgument::Required) {
                Ok(()) => load_app_in_child(&self.options),
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::from(CONFIG_ERROR)
                }
            },
        )
    }

    /// Every effective setting, its value and where it came from, one per line, sorted by name.
    fn describe(&self) -> String {
        let mut lines: BTreeMap<String, (String, String)> = BTreeMap::new();
        for arg in Options::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            lines.insert(
                setting_name(arg),
                (self.value_of(arg), self.source_of(arg).to_string()),
            );
        }
        if let Some(reason) = &self.virtualenv_reason {
            let dir = self.options.virtualenv.as_deref().unwrap_or(Path::new(""));
            lines.insert(
                "virtualenv".into(),
                (dir.display().to_string(), reason.clone()),
            );
        }
        if let Some((location, translated)) = &self.config {
            for (name, value) in &translated.unsupported {
                let note = format!("config file {location}; not supported, no effect");
                lines.insert(name.to_string(), (value.clone(), note));
            }
            for (name, qualname) in &translated.hooks {
                let note = if crate::hooks::WORKER_HOOKS.contains(name) {
                    format!("config file {location}; run in each worker")
                } else if crate::hooks::MASTER_HOOKS.contains(name) {
                    format!("config file {location}; run by the hook runner for the master")
                } else {
                    format!("config file {location}; hook not run yet")
                };
                lines.insert(name.to_string(), (format!("<{qualname}()>"), note));
            }
        }
        for (source, translated) in &self.unsupported_flags {
            for (name, value) in &translated.unsupported {
                let note = format!("{source}; not supported, no effect");
                lines.insert(name.to_string(), (value.clone(), note));
            }
        }
        let width = lines.keys().map(String::len).max().unwrap_or(0);
        lines
            .iter()
            .map(|(name, (value, source))| format!("{name:width$} = {value}  ({source})\n"))
            .collect()
    }

    fn value_of(&self, arg: &clap::Arg) -> String {
        let id = arg.get_id().as_str();
        if id == "secure_scheme_headers" {
            return python_dict(&self.options.secure_scheme_headers.0);
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return if self.matches.get_flag(id) {
                "True"
            } else {
                "False"
            }
            .into();
        }
        let mut values: Vec<String> = raw_values(&self.matches, id)
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match id {
            "bind" if values.is_empty() => values = vec![default_bind()],
            "config" if values.is_empty() => {
                values.extend(self.config.iter().map(|(location, _)| location.to_string()))
            }
            _ => {}
        }
        if matches!(arg.get_action(), ArgAction::Append) {
            let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
            return format!("[{}]", quoted.join(", "));
        }
        values.pop().unwrap_or_else(|| "None".into())
    }

    fn source_of(&self, arg: &clap::Arg) -> Source {
        let id = arg.get_id().as_str();
        if let Some(source) = self.sources.get(id) {
            return source.clone();
        }
        if self.matches.value_source(id) == Some(ValueSource::EnvVariable) {
            let var = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            return Source::Env(var.unwrap_or_default());
        }
        match id {
            "bind" if std::env::var_os("PORT").is_some() => Source::Env("PORT".into()),
            _ => Source::Default,
        }
    }
}

/// The gunicorn name of the setting behind a flag, or the flag's own name for ferrocorn's.
fn setting_name(arg: &clap::Arg) -> String {
    if arg.is_positional() {
        return "wsgi_app".into();
    }
    let long = arg.get_long().unwrap_or_default();
    match ferrocorn_config::by_flag(long) {
        Some(setting) => setting.name.to_string(),
        None => arg.get_id().as_str().to_string(),
    }
}

/// Pairs of strings as Python shows a dict of them (gunicorn prints `secure_scheme_headers` so).
fn python_dict(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
    format!("{{{}}}", items.join(", "))
}

fn default_bind() -> String {
    let port = std::env::var("PORT").ok();
    match ferrocorn_listener::BindSpec::default_for(port.as_deref()) {
        Ok(spec) => spec.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Load the app as a worker would, in a forked child so the master stays free of Python: exit
/// code 0 when it loads, 1 with the reason when not (as gunicorn's `--check-config`).
fn load_app_in_child(options: &Options) -> ExitCode {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::ForkResult;
    // SAFETY: the master is single-threaded here (no worker, no thread started yet), so the
    // child may run any code, Python included.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => std::process::exit(load_app(options)),
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => ExitCode::SUCCESS,
            status => {
                let reason = match status {
                    Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => e.to_string(),
                };
                log::error!("Error while loading the application: {reason}");
                ExitCode::from(CONFIG_ERROR)
            }
        },
        Err(e) => {
            log::error!("cannot fork to load the application: {e}");
            ExitCode::from(CONFIG_ERROR)
        }
    }
}

fn load_app(options: &Options) -> i32 {
    match ferrocorn_wsgi::load(&crate::wsgi_config(options)) {
        Ok(_) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(source: Source, tokens: &[&str]) -> (Source, ArgMatches) {
        let tokens = tokens.iter().map(OsString::from).collect();
        let matches = parse_source(&source, tokens).expect("valid flags");
        (source, matches)
    }

    fn file() -> Source {
        Source::ConfigFile("g.py".into())
    }

    #[test]
    fn the_highest_source_wins_each_flag_whole() {
        let loaded = merge(
            vec![
                source(
                    file(),
                    &[
                        "--bind=127.0.0.1:1",
                        "--bind=127.0.0.1:2",
                        "--workers=4",
                        "--preload",
                    ],
                ),
                source(
                    Source::GunicornCmdArgs,
                    &["--bind=127.0.0.1:3", "--timeout=5"],
                ),
                source(Source::FerrocornCmdArgs, &["--timeout=6", "-e", "A=1"]),
                source(Source::CommandLine, &["-e", "B=2", "hello:app"]),
            ],
            None,
        )
        .unwrap();
        let options = &loaded.options;
        let binds: Vec<String> = options.bind.iter().map(ToString::to_string).collect();
        assert_eq!(
            binds,
            ["127.0.0.1:3"],
            "a higher bind list replaces the lower one"
        );
        assert_eq!(options.workers, Some(ferrocorn_flags::Workers::Count(4)));
        assert!(options.preload);
        assert_eq!(options.timeout, std::time::Duration::from_secs(6));
        assert_eq!(options.env, [("B".to_string(), "2".to_string())]);
        assert_eq!(options.app.as_deref(), Some("hello:app"));
        assert_eq!(loaded.sources["bind"], Source::GunicornCmdArgs);
        assert_eq!(loaded.sources["workers"], file());
        assert_eq!(loaded.sources["env"], Source::CommandLine);
    }

    #[test]
    fn the_config_files_app_is_used_only_when_no_flag_source_names_one() {
        let config = |app: &str| {
            let translated = Translated {
                app: Some(app.into()),
                ..Translated::default()
            };
            Some((Location::File("g.py".into()), translated))
        };
        let loaded = merge(vec![source(Source::CommandLine, &[])], config("file:app")).unwrap();
        assert_eq!(loaded.options.app.as_deref(), Some("file:app"));
        let loaded = merge(
            vec![source(Source::CommandLine, &["cli:app"])],
            config("file:app"),
        )
        .unwrap();
        assert_eq!(loaded.options.app.as_deref(), Some("cli:app"));
        assert_eq!(loaded.sources["app"], Source::CommandLine);
    }

    #[test]
    fn values_are_printed_with_their_sources() {
        let loaded = merge(
            vec![
                source(file(), &["--workers=4"]),
                source(Source::CommandLine, &["--reuse-port", "hello:app"]),
            ],
            None,
        )
        .unwrap();
        let text = loaded.describe();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("workers"), "workers = 4 (config file g.py)");
        assert_eq!(line("reuse_port"), "reuse_port = True (command line)");
        assert_eq!(line("wsgi_app"), "wsgi_app = hello:app (command line)");
        assert_eq!(line("backlog"), "backlog = 2048 (default)");
    }
}
