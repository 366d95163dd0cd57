//! Building the PEP 3333 `environ` dict for one request.
//!
//! Native strings are `str` holding latin-1 code points (bytes 0-255 map one to one), as PEP 3333
//! requires. The constant keys live in a base dict made once per app and copied per request.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrocorn_worker::{PeerAddr, Request, ServerAddr};

/// What the environ is built from: the parts of a request, without the body.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// `REQUEST_METHOD`.
    pub method: &'a str,
    /// The request-target as sent (`RAW_URI`).
    pub target: &'a str,
    /// The path, still percent-encoded.
    pub path: &'a str,
    /// The query string without `?`.
    pub query: &'a str,
    /// `HTTP/1.1` / `HTTP/1.0`.
    pub protocol: &'a str,
    /// Header fields in order as sent.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The client (`REMOTE_ADDR`, `REMOTE_PORT`; checked against `--forwarded-allow-ips`).
    pub peer: &'a PeerAddr,
    /// The listener (`SERVER_NAME`, `SERVER_PORT`, `wsgi.url_scheme`).
    pub server: &'a ServerAddr,
}

impl<'a> RequestInfo<'a> {
    /// The parts of a worker request.
    pub fn from_request(req: &Request<'a>) -> RequestInfo<'a> {
        let head = req.head;
        RequestInfo {
            method: head.method(),
            target: head.target(),
            path: head.path(),
            query: head.query(),
            protocol: head.version().as_str(),
            headers: head.headers().collect(),
            peer: req.peer,
            server: req.server,
        }
    }
}

/// Peers whose proxy headers are believed (gunicorn's `forwarded_allow_ips`): a `SCRIPT_NAME`
/// header and the [`SecureSchemeHeaders`] count only from these. Clients on a unix socket are
/// always trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedPeers {
    /// `*`: every peer.
    All,
    /// These networks (a plain address is a /32 or /128; IPv4-mapped IPv6 peers match their
    /// IPv4 form).
    Nets(Vec<Net>),
}

/// An address with a prefix length: `10.0.0.0/8`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// The network's address.
    pub addr: IpAddr,
    /// Leading bits that must match: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub prefix: u8,
}

impl Net {
    fn parse(item: &str) -> Option<Net> {
        let (addr, prefix) = match item.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (item, None),
        };
        let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip.to_canonical()));
        if width != ip_width {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        net & mask == ip & mask
    }
}

impl Default for TrustedPeers {
    /// gunicorn's default: the local host only.
    fn default() -> TrustedPeers {
        TrustedPeers::Nets(vec![
            Net {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                prefix: 32,
            },
            Net {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ])
    }
}

impl TrustedPeers {
    /// Parse `$FORWARDED_ALLOW_IPS`: `*`, or comma-separated addresses and networks (`10.0.0.0/8`).
    pub fn parse(list: &str) -> Result<TrustedPeers, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(TrustedPeers::All);
            }
            nets.push(Net::parse(item).ok_or_else(|| {
                format!("FORWARDED_ALLOW_IPS: {item:?} is not an IP address or network (or '*')")
            })?);
        }
        Ok(TrustedPeers::Nets(nets))
    }

    /// Whether proxy headers from `peer` are believed.
    pub fn trusts(&self, peer: &PeerAddr) -> bool {
        match (self, peer) {
            (_, PeerAddr::Unix) | (TrustedPeers::All, _) => true,
            (TrustedPeers::Nets(nets), PeerAddr::Tcp(addr)) => {
                nets.iter().any(|n| n.contains(addr.ip()))
            }
        }
    }
}

/// gunicorn's `secure_scheme_headers`: header fields a trusted proxy sets to tell the request's
/// scheme, each with the value that means https (any other value means http). Names match
/// case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureSchemeHeaders(Vec<(String, Vec<u8>)>);

impl SecureSchemeHeaders {
    /// The headers `(name, https_value)`; none at all means no header tells the scheme.
    pub fn new<N: AsRef<str>, V: AsRef<str>>(
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> SecureSchemeHeaders {
        SecureSchemeHeaders(
            headers
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_string(), v.as_ref().as_bytes().to_vec()))
                .collect(),
        )
    }

    /// The https value configured for the header field `name`, if it is one of them.
    fn https_value(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_slice())
    }
}

impl Default for SecureSchemeHeaders {
    /// gunicorn's default.
    fn default() -> SecureSchemeHeaders {
        SecureSchemeHeaders::new([
            ("X-FORWARDED-PROTOCOL", "ssl"),
            ("X-FORWARDED-PROTO", "https"),
            ("X-FORWARDED-SSL", "on"),
        ])
    }
}

/// Per-app settings of the environ that come from the server's environment, not the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironConfig {
    /// `$SCRIPT_NAME` (without a trailing `/`): the prefix the app is mounted under, stripped from
    /// `PATH_INFO`. A trusted peer's `SCRIPT_NAME` header field in [`RequestInfo::headers`]
    /// replaces it for its request (as in gunicorn; note that ferrocorn's HTTP parser currently
    /// drops every field name containing `_` before it gets here).
    pub script_name: String,
    /// `$FORWARDED_ALLOW_IPS`.
    pub trusted: TrustedPeers,
    /// `secure_scheme_headers` (believed from [`EnvironConfig::trusted`] peers only).
    pub secure_headers: SecureSchemeHeaders,
}

/// Why no environ could be built for a request.
#[derive(Debug, thiserror::Error)]
pub enum EnvironError {
    /// The request path is outside `SCRIPT_NAME`: a deployment error (answered 500).
    #[error(transparent)]
    ScriptName(#[from] ScriptNameMismatch),
    /// A trusted proxy sent secure-scheme headers that disagree (answered 400, as gunicorn does).
    #[error("contradictory scheme headers from the proxy")]
    ContradictoryScheme,
}

/// The request path does not fall under the configured `SCRIPT_NAME` (a deployment error).
#[derive(Debug, thiserror::Error)]
#[error("request path {path:?} does not start with SCRIPT_NAME {script_name:?}")]
pub struct ScriptNameMismatch {
    /// The request's path, percent-decoded.
    pub path: String,
    /// The `SCRIPT_NAME` in effect (configured, or a trusted proxy's header field).
    pub script_name: String,
}

/// `%XX` sequences decoded to bytes; malformed escapes are kept as they are (like
/// `urllib.parse.unquote_to_bytes`).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Bytes as a latin-1 string (each byte one code point).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// `Content-Type` -> `HTTP_CONTENT_TYPE`; `None` for names that contain `_` (dropped, as gunicorn
/// does, so `X_Forwarded_For` cannot pose as `X-Forwarded-For`).
pub fn header_key(name: &str) -> Option<String> {
    if name.contains('_') {
        return None;
    }
    if name.eq_ignore_ascii_case("content-type") {
        return Some("CONTENT_TYPE".into());
    }
    if name.eq_ignore_ascii_case("content-length") {
        return Some("CONTENT_LENGTH".into());
    }
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    Some(key)
}

/// The environ keys that are the same for every request.
pub fn base_environ(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let env = PyDict::new(py);
    env.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
    env.set_item("wsgi.multithread", false)?;
    env.set_item("wsgi.multiprocess", true)?;
    env.set_item("wsgi.run_once", false)?;
    env.set_item("wsgi.input_terminated", true)?;
    env.set_item("wsgi.errors", Py::new(py, crate::stream::ErrorStream)?)?;
    env.set_item(
        "wsgi.file_wrapper",
        py.get_type::<crate::response::FileWrapper>(),
    )?;
    env.set_item("SERVER_SOFTWARE", crate::SERVER_SOFTWARE)?;
    Ok(env)
}

/// The scheme a trusted proxy's secure-scheme headers claim (`None`: none sent), as gunicorn
/// reads them: each present header says "https" only with its exact value, and they must agree.
fn forwarded_scheme(
    headers: &[(&str, &[u8])],
    secure: &SecureSchemeHeaders,
) -> Result<Option<&'static str>, EnvironError> {
    let mut scheme = None;
    for (name, value) in headers {
        let Some(https) = secure.https_value(name) else {
            continue;
        };
        let this = if value.trim_ascii() == https {
            "https"
        } else {
            "http"
        };
        match scheme {
            Some(seen) if seen != this => return Err(EnvironError::ContradictoryScheme),
            _ => scheme = Some(this),
        }
    }
    Ok(scheme)
}

/// `SERVER_NAME`/`SERVER_PORT` from a `Host` header, for unix sockets (gunicorn's way: WSGI has
/// no notion of them); the scheme's default port when the header names none.
fn server_from_host(host: &str, scheme: &str) -> (String, String) {
    if let Some((name, port)) = host.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return (name.to_string(), port.to_string());
        }
    }
    let port = if scheme == "https" { "443" } else { "80" };
    (host.to_string(), port.to_string())
}

/// A copy of `base` with this request's keys (everything but `wsgi.input`).
pub fn build_environ<'py>(
    _py: Python<'py>,
    base: &Bound<'py, PyDict>,
    info: &RequestInfo<'_>,
    config: &EnvironConfig,
) -> PyResult<Result<Bound<'py, PyDict>, EnvironError>> {
    let route = match route(info, config) {
        Ok(route) => route,
        Err(e) => return Ok(Err(e)),
    };
    let env = base.copy()?;
    set_request_keys(&env, info, &route)?;
    set_server_keys(&env, info, route.scheme)?;
    set_remote_keys(&env, info.peer)?;
    set_header_keys(&env, &info.headers)?;
    Ok(Ok(env))
}

/// Where a request goes in the app: what the mount prefix, the path under it and the scheme are
/// once a trusted proxy's headers are taken into account.
struct Route {
    /// `SCRIPT_NAME`.
    script_name: String,
    /// `PATH_INFO`: the percent-decoded path with `SCRIPT_NAME` stripped.
    path: String,
    /// `wsgi.url_scheme`.
    scheme: &'static str,
}

/// The request's [`Route`]; an error when a trusted proxy's scheme headers disagree or the path is
/// outside `SCRIPT_NAME`.
fn route(info: &RequestInfo<'_>, config: &EnvironConfig) -> Result<Route, EnvironError> {
    let mut script_name = config.script_name.clone();
    let mut scheme = info.server.scheme;
    if config.trusted.trusts(info.peer) {
        if let Some(proxied) = proxy_script_name(&info.headers) {
            script_name = proxied;
        }
        if let Some(s) = forwarded_scheme(&info.headers, &config.secure_headers)? {
            scheme = s;
        }
    }
    let mut path = latin1(&percent_decode(info.path));
    if !script_name.is_empty() {
        let under = path
            .strip_prefix(script_name.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'));
        match under {
            Some(rest) => path = rest.to_string(),
            None => return Err(ScriptNameMismatch { path, script_name }.into()),
        }
    }
    Ok(Route {
        script_name,
        path,
        scheme,
    })
}

/// The last `SCRIPT_NAME` header field (latin-1, trimmed, without a trailing `/`), if any.
fn proxy_script_name(headers: &[(&str, &[u8])]) -> Option<String> {
    let (_, value) = headers
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case("script_name"))?;
    Some(latin1(value).trim().trim_end_matches('/').to_string())
}

/// `env[key] = value` as a native (latin-1) string.
fn set_str(env: &Bound<'_, PyDict>, key: &str, value: &str) -> PyResult<()> {
    env.set_item(key, PyString::new(env.py(), value))
}

/// The request line's keys: method, `SCRIPT_NAME`/`PATH_INFO`, query, raw target, protocol.
fn set_request_keys(
    env: &Bound<'_, PyDict>,
    info: &RequestInfo<'_>,
    route: &Route,
) -> PyResult<()> {
    set_str(env, "REQUEST_METHOD", info.method)?;
    set_str(env, "SCRIPT_NAME", &route.script_name)?;
    set_str(env, "PATH_INFO", &route.path)?;
    set_str(env, "QUERY_STRING", &latin1(info.query.as_bytes()))?;
    set_str(env, "RAW_URI", &latin1(info.target.as_bytes()))?;
    set_str(env, "SERVER_PROTOCOL", info.protocol)
}

/// `SERVER_NAME`, `SERVER_PORT` (from the `Host` header for unix-socket clients, else the
/// listener) and `wsgi.url_scheme`.
fn set_server_keys(env: &Bound<'_, PyDict>, info: &RequestInfo<'_>, scheme: &str) -> PyResult<()> {
    let host = info
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| latin1(v));
    match (info.peer, host) {
        (PeerAddr::Unix, Some(host)) => {
            let (name, port) = server_from_host(host.trim(), scheme);
            set_str(env, "SERVER_NAME", &name)?;
            set_str(env, "SERVER_PORT", &port)?;
        }
        _ => {
            set_str(env, "SERVER_NAME", &info.server.name)?;
            set_str(env, "SERVER_PORT", &info.server.port)?;
        }
    }
    set_str(env, "wsgi.url_scheme", scheme)
}

/// `REMOTE_ADDR` and `REMOTE_PORT` of the client.
fn set_remote_keys(env: &Bound<'_, PyDict>, peer: &PeerAddr) -> PyResult<()> {
    match peer {
        PeerAddr::Tcp(addr) => {
            set_str(env, "REMOTE_ADDR", &addr.ip().to_string())?;
            set_str(env, "REMOTE_PORT", &addr.port().to_string())
        }
        // gunicorn gives unix-socket clients an empty address and no port.
        PeerAddr::Unix => set_str(env, "REMOTE_ADDR", ""),
    }
}

/// The `HTTP_*` (and `CONTENT_TYPE`/`CONTENT_LENGTH`) keys, in first-seen order, duplicates joined
/// with "," (RFC 9110 list semantics).
fn set_header_keys(env: &Bound<'_, PyDict>, headers: &[(&str, &[u8])]) -> PyResult<()> {
    let mut fields: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let Some(key) = header_key(name) else {
            continue;
        };
        let value = latin1(value);
        match fields.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => fields.push((key, value)),
        }
    }
    for (key, value) in &fields {
        set_str(env, key, value)?;
    }
    Ok(())
}
