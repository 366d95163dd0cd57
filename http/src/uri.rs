//! Request-target forms (RFC 9112 §3.2) and authority checks.

use std::ops::Range;

use crate::chars::is_reg_name_char;
use crate::error::RequestError;

/// Where the path and query sit inside the target text.
pub(crate) struct Target {
    pub(crate) path: Range<usize>,
    pub(crate) query: Range<usize>,
}

/// Check the target's form against the method and locate its path and query.
pub(crate) fn parse_target(target: &str, method: &[u8]) -> Result<Target, RequestError> {
    let bytes = target.as_bytes();
    let connect = method == b"CONNECT";
    if connect {
        // authority-form is the only form CONNECT takes, and only CONNECT takes it.
        check_authority(bytes, false, true)?;
        return Ok(Target {
            path: 0..0,
            query: 0..0,
        });
    }
    if bytes == b"*" {
        if method != b"OPTIONS" {
            return Err(RequestError::BadRequest(
                "asterisk-form target for a method other than OPTIONS",
            ));
        }
        return Ok(Target {
            path: 0..0,
            query: 0..0,
        });
    }
    let path_start = if bytes.first() == Some(&b'/') {
        0
    } else {
        // absolute-form: scheme "://" authority path-abempty [ "?" query ]
        let Some(colon) = target.find("://") else {
            return Err(RequestError::BadRequest(
                "request-target is not origin, absolute, authority or asterisk form",
            ));
        };
        let scheme = &bytes[..colon];
        let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(RequestError::BadRequest(
                "invalid scheme in absolute-form target",
            ));
        }
        let auth_start = colon + 3;
        let auth_end = bytes[auth_start..]
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .map_or(bytes.len(), |i| auth_start + i);
        check_authority(&bytes[auth_start..auth_end], true, false)?;
        auth_end
    };
    // A fragment is not part of a request-target, but clients do send one; it is never part of
    // the path or the query.
    let end = bytes[path_start..]
        .iter()
        .position(|&b| b == b'#')
        .map_or(bytes.len(), |i| path_start + i);
    let (path, query) = match bytes[path_start..end].iter().position(|&b| b == b'?') {
        Some(q) => (path_start..path_start + q, path_start + q + 1..end),
        None => (path_start..end, end..end),
    };
    Ok(Target { path, query })
}

/// `[ userinfo "@" ] host [ ":" port ]`, host a reg-name or an IP literal in brackets.
pub(crate) fn check_authority(
    auth: &[u8],
    allow_userinfo: bool,
    require_port: bool,
) -> Result<(), RequestError> {
    let bad = Err(RequestError::BadRequest(
        "invalid authority in request-target",
    ));
    let host_port = match auth.iter().rposition(|&b| b == b'@') {
        Some(at) if allow_userinfo => {
            if !auth[..at]
                .iter()
                .all(|&b| is_reg_name_char(b) || b == b':' || b == b'%')
            {
                return bad;
            }
            &auth[at + 1..]
        }
        Some(_) => return bad,
        None => auth,
    };
    match split_host_port(host_port) {
        Some((host, port))
            if !host.is_empty() && (!require_port || port.is_some_and(|p| !p.is_empty())) =>
        {
            Ok(())
        }
        _ => bad,
    }
}

/// The Host field: empty (allowed when the target has no authority) or `host [ ":" port ]`.
pub(crate) fn check_host_header(value: &[u8]) -> Result<(), RequestError> {
    if value.is_empty() || split_host_port(value).is_some_and(|(h, _)| !h.is_empty()) {
        Ok(())
    } else {
        Err(RequestError::BadRequest("invalid Host"))
    }
}

/// Split and check `host [ ":" port ]`; `None` if either part has a character it may not.
fn split_host_port(v: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (host, rest) = if v.first() == Some(&b'[') {
        let close = v.iter().position(|&b| b == b']')?;
        let inner = &v[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&v[..=close], &v[close + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let host = &v[..end];
        if !host.iter().all(|&b| is_reg_name_char(b) || b == b'%') {
            return None;
        }
        (host, &v[end..])
    };
    match rest {
        [] => Some((host, None)),
        [b':', port @ ..] if port.iter().all(u8::is_ascii_digit) => Some((host, Some(port))),
        _ => None,
    }
}
