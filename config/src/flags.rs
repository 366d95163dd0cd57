//! gunicorn flags for settings ferrocorn lacks, on a command line or in `GUNICORN_CMD_ARGS`:
//! taken out before the flag parser sees them, then refused or warned about by name exactly as
//! the same setting in a config file (`--log-syslog` warns, `--certfile X` refuses).

use serde_json::Value;

use crate::settings::lookup;
use crate::translate::Global;
use crate::{Error, Translated};

/// What a flag gives its setting.
#[derive(Debug, Clone, Copy)]
enum Takes {
    /// The next token (or `=VALUE`).
    Value,
    /// Nothing: the setting becomes this boolean (`store_true` / `store_const`).
    Switch(bool),
    /// `=VALUE` or one of these words next, else the default (argparse's `nargs="?"`).
    Optional(&'static [&'static str], &'static str),
}

use Takes::{Optional, Switch, Value as V};

/// gunicorn's spellings (gunicorn/config.py `cli`) of the settings ferrocorn has no flag for.
static FLAGS: &[(&str, &str, Takes)] = &[
    ("--spew", "spew", Switch(true)),
    ("--no-sendfile", "sendfile", Switch(false)),
    (
        "--disable-redirect-access-to-syslog",
        "disable_redirect_access_to_syslog",
        Switch(true),
    ),
    ("--logger-class", "logger_class", V),
    ("--log-config", "logconfig", V),
    ("--log-config-json", "logconfig_json", V),
    ("--log-syslog-to", "syslog_addr", V),
    ("--log-syslog", "syslog", Switch(true)),
    ("--log-syslog-prefix", "syslog_prefix", V),
    ("--log-syslog-facility", "syslog_facility", V),
    ("-R", "enable_stdio_inheritance", Switch(true)),
    (
        "--enable-stdio-inheritance",
        "enable_stdio_inheritance",
        Switch(true),
    ),
    (
        "--enable-backlog-metric",
        "enable_backlog_metric",
        Switch(true),
    ),
    ("--paste", "paste", V),
    ("--paster", "paste", V),
    (
        "--proxy-protocol",
        "proxy_protocol",
        Optional(&["off", "v1", "v2", "auto"], "auto"),
    ),
    ("--proxy-allow-from", "proxy_allow_ips", V),
    ("--protocol", "protocol", V),
    ("--uwsgi-allow-from", "uwsgi_allow_ips", V),
    ("--keyfile", "keyfile", V),
    ("--certfile", "certfile", V),
    ("--ssl-version", "ssl_version", V),
    ("--cert-reqs", "cert_reqs", V),
    ("--ca-certs", "ca_certs", V),
    (
        "--suppress-ragged-eofs",
        "suppress_ragged_eofs",
        Switch(true),
    ),
    (
        "--do-handshake-on-connect",
        "do_handshake_on_connect",
        Switch(true),
    ),
    ("--ciphers", "ciphers", V),
    ("--http-protocols", "http_protocols", V),
    ("--http2-cleartext", "http2_cleartext", V),
    (
        "--http2-max-concurrent-streams",
        "http2_max_concurrent_streams",
        V,
    ),
    (
        "--http2-initial-window-size",
        "http2_initial_window_size",
        V,
    ),
    ("--http2-max-frame-size", "http2_max_frame_size", V),
    (
        "--http2-max-header-list-size",
        "http2_max_header_list_size",
        V,
    ),
    ("--paste-global", "raw_paste_global_conf", V),
    (
        "--permit-obsolete-folding",
        "permit_obsolete_folding",
        Switch(true),
    ),
    ("--strip-header-spaces", "strip_header_spaces", Switch(true)),
    (
        "--permit-unconventional-http-method",
        "permit_unconventional_http_method",
        Switch(true),
    ),
    (
        "--permit-unconventional-http-version",
        "permit_unconventional_http_version",
        Switch(true),
    ),
    (
        "--casefold-http-method",
        "casefold_http_method",
        Switch(true),
    ),
    ("--forwarder-headers", "forwarder_headers", V),
    ("--header-map", "header_map", V),
    ("--asgi-loop", "asgi_loop", V),
    ("--asgi-lifespan", "asgi_lifespan", V),
    (
        "--asgi-disconnect-grace-period",
        "asgi_disconnect_grace_period",
        V,
    ),
    ("--http-parser", "http_parser", V),
    ("--root-path", "root_path", V),
    ("--dirty-app", "dirty_apps", V),
    ("--dirty-workers", "dirty_workers", V),
    ("--dirty-timeout", "dirty_timeout", V),
    ("--dirty-threads", "dirty_threads", V),
    ("--dirty-graceful-timeout", "dirty_graceful_timeout", V),
    ("--control-socket", "control_socket", V),
    ("--control-socket-mode", "control_socket_mode", V),
    (
        "--no-control-socket",
        "control_socket_disable",
        Switch(true),
    ),
];

/// Take gunicorn's flags for unsupported settings out of `tokens` (up to a `--`): the tokens
/// left for the flag parser, and what was taken, warned about as from `origin`. A refused one
/// (`--certfile`) is an error naming it.
pub fn take_unsupported_flags(
    tokens: Vec<String>,
    origin: &str,
) -> Result<(Vec<String>, Translated), Error> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut taken = Translated::default();
    let mut rest = tokens.into_iter().peekable();
    while let Some(token) = rest.next() {
        if token == "--" {
            kept.push(token);
            kept.extend(rest);
            break;
        }
        let (flag, inline) = match token.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (token.clone(), None),
        };
        let Some((_, name, takes)) = FLAGS.iter().find(|(f, _, _)| *f == flag) else {
            kept.push(token);
            continue;
        };
        let value = match (takes, inline) {
            (Switch(on), None) => Value::Bool(*on),
            (V | Optional(..), Some(value)) => Value::String(value),
            (V, None) => Value::String(rest.next().ok_or_else(|| missing_value(origin, name))?),
            (Optional(words, _), None)
                if rest
                    .peek()
                    .is_some_and(|next| words.contains(&next.as_str())) =>
            {
                Value::String(rest.next().expect("peeked"))
            }
            (Optional(_, default), None) => Value::String(default.to_string()),
            (Switch(_), Some(value)) => Value::String(value),
        };
        let setting = lookup(name).expect("every flag names a setting in the table");
        taken.add(setting, &Global::Data(&value), origin)?;
    }
    Ok((kept, taken))
}

fn missing_value(origin: &str, setting: &str) -> Error {
    Error::InvalidValue {
        origin: origin.to_string(),
        setting: lookup(setting).map_or("?", |s| s.name),
        value: "nothing".into(),
        expected: "a value after the flag",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(tokens: &[&str]) -> Result<(Vec<String>, Translated), Error> {
        take_unsupported_flags(
            tokens.iter().map(|t| t.to_string()).collect(),
            "command line",
        )
    }

    #[test]
    fn observe_only_flags_are_taken_out_and_warned_about() {
        let (kept, taken) = take(&[
            "-w",
            "2",
            "--log-syslog-prefix",
            "-",
            "--log-syslog-to=udp://h:1",
            "--spew",
            "app:app",
        ])
        .unwrap();
        assert_eq!(kept, ["-w", "2", "app:app"]);
        let names: Vec<&str> = taken.unsupported.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["syslog_prefix", "syslog_addr", "spew"]);
        assert!(
            taken.warnings[0].starts_with("command line: syslog_prefix = '-' is not supported"),
            "{:?}",
            taken.warnings
        );
    }

    #[test]
    fn flags_whose_absence_matters_are_refused() {
        for tokens in [
            &["--certfile", "c.pem"][..],
            &["--proxy-protocol", "app:app"],
            &["--keyfile=k.pem"],
        ] {
            let err = take(tokens).unwrap_err();
            assert!(matches!(err, Error::Refused { .. }), "{tokens:?}: {err}");
        }
        // gunicorn's defaults change nothing.
        let (kept, taken) =
            take(&["--proxy-protocol", "off", "--no-control-socket", "app:app"]).unwrap();
        assert_eq!(kept, ["app:app"]);
        assert!(taken.warnings.is_empty(), "{:?}", taken.warnings);
    }

    #[test]
    fn every_flag_names_a_setting_and_tokens_after_a_double_dash_stay() {
        for (flag, name, _) in FLAGS {
            assert!(lookup(name).is_some(), "{flag} -> {name}");
        }
        let (kept, _) = take(&["--", "--certfile"]).unwrap();
        assert_eq!(kept, ["--", "--certfile"]);
        assert!(take(&["--log-syslog-to"]).is_err(), "a value is needed");
    }
}
