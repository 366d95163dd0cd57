//! Turn a config file's globals into ferrocorn flag tokens, refusals and named warnings.

use serde_json::Value;

use crate::settings::{lookup, Setting, Shape, Status, MASTER_HOOKS, WORKER_HOOKS};
use crate::{Error, Location, Namespace};

/// What a config file asks for, as ferrocorn flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    /// Flag tokens (`--workers=5`), for the flag parser to read below the other sources.
    pub tokens: Vec<String>,
    /// The `APP` the file names (`wsgi_app`).
    pub app: Option<String>,
    /// Supported settings the file sets, by gunicorn name.
    pub set: Vec<&'static str>,
    /// Settings ferrocorn does not have, set to a value that matters: name and value as Python's
    /// `str()` shows it (as gunicorn's `--print-config` does).
    pub unsupported: Vec<(&'static str, String)>,
    /// Server hooks the file defines: name and the callable's qualified name.
    pub hooks: Vec<(&'static str, String)>,
    /// One line per setting that is not in force, naming it.
    pub warnings: Vec<String>,
}

/// One global of the config file, whatever Python type it had.
pub(crate) enum Global<'a> {
    Data(&'a Value),
    Callable(&'a str),
    Other(&'a str),
}

/// Map every global of `namespace` that names a setting. Unknown data names are warned about
/// (a typo must not pass silently); unknown functions and classes are the file's own helpers.
pub fn translate(namespace: &Namespace, location: &Location) -> Result<Translated, Error> {
    let origin = format!("config file {location}");
    let mut out = Translated::default();
    let globals = namespace
        .values
        .iter()
        .map(|(k, v)| (k, Global::Data(v)))
        .chain(
            namespace
                .callables
                .iter()
                .map(|(k, v)| (k, Global::Callable(v))),
        )
        .chain(namespace.others.iter().map(|(k, v)| (k, Global::Other(v))));
    for (name, global) in globals {
        match lookup(name) {
            Some(setting) => out.add(setting, &global, &origin)?,
            None if matches!(global, Global::Callable(_)) => {}
            None => out.warnings.push(format!(
                "{origin}: {name:?} is not a gunicorn setting; ignored"
            )),
        }
    }
    let names: Vec<&str> = out
        .hooks
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !WORKER_HOOKS.contains(name) && !MASTER_HOOKS.contains(name))
        .collect();
    if !names.is_empty() {
        out.warnings.push(format!(
            "{origin}: server hooks are not run yet: {} defined but not called",
            names.join(", ")
        ));
    }
    Ok(out)
}

impl Translated {
    pub(crate) fn add(
        &mut self,
        setting: &'static Setting,
        global: &Global,
        origin: &str,
    ) -> Result<(), Error> {
        let invalid = |expected: &'static str| Error::InvalidValue {
            origin: origin.to_string(),
            setting: setting.name,
            value: global.display(),
            expected,
        };
        match (setting.status, global) {
            (Status::Hook, Global::Callable(qualname)) => {
                self.hooks.push((setting.name, qualname.to_string()))
            }
            (Status::Hook, Global::Data(Value::Null)) => {}
            (Status::Hook, _) => return Err(invalid("a function")),
            (Status::App, Global::Data(Value::String(app))) => {
                self.app = Some(app.clone());
                self.set.push(setting.name);
            }
            (Status::App, Global::Data(Value::Null)) => {}
            (Status::App, _) => return Err(invalid("a string like \"module:app\"")),
            (Status::Flag { long, shape }, _) => {
                let tokens =
                    flag_tokens(long, shape, global).ok_or_else(|| invalid(shape.expected()))?;
                if shape == Shape::Switch || !tokens.is_empty() {
                    self.set.push(setting.name);
                }
                self.tokens.extend(tokens);
            }
            (
                Status::Unsupported {
                    harmless,
                    refuse,
                    why,
                },
                _,
            ) => {
                if global.is_one_of(harmless) {
                    return Ok(());
                }
                let value = global.display();
                if refuse {
                    return Err(Error::Refused {
                        origin: origin.to_string(),
                        setting: setting.name,
                        value,
                        why,
                    });
                }
                self.warnings.push(format!(
                    "{origin}: {} = {value} is not supported and has no effect: {why}",
                    setting.name
                ));
                self.unsupported.push((setting.name, global.display_str()));
            }
        }
        Ok(())
    }
}

impl Shape {
    fn expected(self) -> &'static str {
        match self {
            Shape::Scalar => "a string or a number",
            Shape::List | Shape::Commas => "a string or a list of strings",
            Shape::Switch => "True or False",
            Shape::Octal => "an integer like 0o007",
            Shape::Pairs => "a dict of str to str, without ',' in them or '=' in a key",
        }
    }
}

/// The flag tokens for one setting, or None when the value has the wrong type. `None` in
/// Python means "the default": no tokens.
fn flag_tokens(long: &str, shape: Shape, global: &Global) -> Option<Vec<String>> {
    let value = match global {
        Global::Data(value) => *value,
        // A class or function where a name is expected (`worker_class = MyWorker`): hand its
        // name on, so the flag's own check refuses it by name.
        Global::Callable(qualname) if shape == Shape::Scalar => {
            return Some(vec![format!("--{long}={qualname}")])
        }
        _ => return None,
    };
    if shape == Shape::Switch {
        // Switches take no value on the command line.
        return Some(match switch_value(value)? {
            true => vec![format!("--{long}")],
            false => vec![],
        });
    }
    let values = match (shape, value) {
        (_, Value::Null) => vec![],
        (Shape::Octal, Value::Number(n)) => vec![format!("0o{:o}", n.as_u64()?)],
        (Shape::Octal | Shape::Scalar | Shape::List | Shape::Commas, Value::String(s)) => {
            vec![s.clone()]
        }
        (Shape::Scalar, Value::Number(n)) => vec![n.to_string()],
        (Shape::List, Value::Array(items)) => strings(items)?,
        (Shape::Commas, Value::Array(items)) => vec![strings(items)?.join(",")],
        (Shape::Pairs, Value::Object(map)) => vec![pairs(map)?],
        _ => return None,
    };
    Some(
        values
            .into_iter()
            .map(|v| format!("--{long}={v}"))
            .collect(),
    )
}

/// gunicorn's booleans: True/False, None (the default, off) or the strings "true"/"false".
fn switch_value(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Null => Some(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `{"A": "x", "B": "y"}` as `A=x,B=y`; None unless every key and value is a string the flag can
/// carry.
fn pairs(map: &serde_json::Map<String, Value>) -> Option<String> {
    let items: Option<Vec<String>> = map
        .iter()
        .map(|(key, value)| {
            let value = value.as_str()?;
            let plain = !key.contains([',', '=']) && !value.contains(',');
            plain.then(|| format!("{key}={value}"))
        })
        .collect();
    Some(items?.join(","))
}

fn strings(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|item| item.as_str().map(str::to_string))
        .collect()
}

impl Global<'_> {
    fn is_one_of(&self, harmless: &[&str]) -> bool {
        let Global::Data(value) = self else {
            return false;
        };
        harmless
            .iter()
            .any(|text| serde_json::from_str::<Value>(text).is_ok_and(|h| h == **value))
    }

    /// The value as Python's `str()` shows it: strings bare, the rest as `repr`.
    fn display_str(&self) -> String {
        match self {
            Global::Data(Value::String(s)) => s.clone(),
            _ => self.display(),
        }
    }

    /// The value as a Python user would write it.
    fn display(&self) -> String {
        match self {
            Global::Data(value) => python_repr(value),
            Global::Callable(qualname) => format!("<{qualname}()>"),
            Global::Other(repr) => repr.to_string(),
        }
    }
}

/// A JSON value written as Python's `repr` would (True, None, 'text').
pub(crate) fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}").replace('"', "'"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("'{k}': {}", python_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn namespace(values: Value) -> Namespace {
        Namespace {
            values: serde_json::from_value(values).unwrap(),
            ..Namespace::default()
        }
    }

    fn file() -> Location {
        Location::File("g.conf.py".into())
    }

    #[test]
    fn supported_settings_become_flags() {
        let ns = namespace(json!({
            "bind": ["127.0.0.1:1", "unix:/tmp/s"], "workers": 5, "timeout": 12.5,
            "preload_app": true, "reuse_port": false, "umask": 7, "keepalive": 4,
            "capture_output": "False", "initgroups": " TRUE ",
            "forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"], "pidfile": null,
            "wsgi_app": "hello:app",
        }));
        let t = translate(&ns, &file()).unwrap();
        assert_eq!(
            t.tokens,
            [
                "--bind=127.0.0.1:1",
                "--bind=unix:/tmp/s",
                "--forwarded-allow-ips=10.0.0.1,10.0.0.2",
                "--initgroups",
                "--keep-alive=4",
                "--preload",
                "--timeout=12.5",
                "--umask=0o7",
                "--workers=5",
            ]
        );
        assert_eq!(t.app.as_deref(), Some("hello:app"));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert!(t.set.contains(&"reuse_port"), "False is set explicitly");
        assert!(!t.set.contains(&"pidfile"), "None means the default");
    }

    #[test]
    fn refused_settings_name_themselves() {
        let err = translate(&namespace(json!({"certfile": "/etc/cert.pem"})), &file()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("certfile = '/etc/cert.pem' is not supported"),
            "{text}"
        );
        assert!(text.contains("g.conf.py"), "{text}");
        // gunicorn's default value means "off": nothing to refuse.
        let ok = translate(
            &namespace(json!({"certfile": null, "proxy_protocol": "off"})),
            &file(),
        );
        assert_eq!(ok.unwrap(), Translated::default());
    }

    #[test]
    fn observe_only_settings_and_unknown_names_are_warned_about() {
        let ns = namespace(json!({"syslog_prefix": "-", "wrokers": 3, "syslog": false}));
        let t = translate(&ns, &file()).unwrap();
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(
            t.warnings[0].contains("syslog_prefix = '-' is not supported"),
            "{:?}",
            t.warnings
        );
        assert!(
            t.warnings[1].contains("\"wrokers\" is not a gunicorn setting"),
            "{:?}",
            t.warnings
        );
        assert_eq!(t.unsupported, [("syslog_prefix", "-".to_string())]);
        assert!(t.tokens.is_empty());
    }

    #[test]
    fn hooks_are_recorded_and_master_side_ones_warned_about_by_name() {
        let mut ns = namespace(json!({}));
        ns.callables.insert("post_fork".into(), "post_fork".into());
        ns.callables.insert("ssl_context".into(), "tls".into());
        ns.callables.insert("cpu_count".into(), "cpu_count".into());
        let t = translate(&ns, &file()).unwrap();
        assert_eq!(
            t.hooks,
            [
                ("post_fork", "post_fork".to_string()),
                ("ssl_context", "tls".to_string())
            ]
        );
        assert_eq!(t.warnings.len(), 1);
        assert!(
            t.warnings[0].ends_with("hooks are not run yet: ssl_context defined but not called"),
            "{:?}",
            t.warnings
        );
    }

    #[test]
    fn secure_scheme_headers_become_one_flag_even_when_empty() {
        let headers = |value: Value| {
            translate(
                &namespace(json!({ "secure_scheme_headers": value })),
                &file(),
            )
            .map(|t| t.tokens)
        };
        assert_eq!(
            headers(json!({"X-FORWARDED-PROTO": "https"})).unwrap(),
            ["--secure-scheme-headers=X-FORWARDED-PROTO=https"]
        );
        assert_eq!(headers(json!({})).unwrap(), ["--secure-scheme-headers="]);
        assert!(
            headers(Value::Null).unwrap().is_empty(),
            "None is the default"
        );
        for bad in [
            json!(["X-FORWARDED-PROTO"]),
            json!({"X-FORWARDED-PROTO": true}),
            json!({"X-FORWARDED-PROTO": "https,http"}),
            json!({"A=B": "c"}),
        ] {
            let err = headers(bad.clone()).unwrap_err().to_string();
            assert!(
                err.contains("invalid value for secure_scheme_headers"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn wrong_types_are_invalid_values() {
        for bad in [
            json!({"workers": [1]}),
            json!({"preload_app": "yes"}),
            json!({"bind": 80}),
        ] {
            let err = translate(&namespace(bad.clone()), &file()).unwrap_err();
            assert!(matches!(err, Error::InvalidValue { .. }), "{bad}: {err}");
        }
    }
}
