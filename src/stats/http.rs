//! Plain HTTP on the stats port, sans-I/O: a request head in, a whole
//! response out. One request per connection (`Connection: close`): the
//! pages are small and scrapers reconnect cheaply.

/// The largest request head read; longer gets 431.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;

/// What the connection has so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    /// No blank line yet: read more (unless [`HEAD_BYTES_MAX`] is reached).
    Incomplete,
    Request {
        method: &'a str,
        path: &'a str,
    },
    /// Not HTTP/1.x: answer 400 and close.
    Bad,
    /// Head longer than [`HEAD_BYTES_MAX`]: answer 431 and close.
    TooLarge,
}

/// Parses the request head in `buf` (bytes received so far).
pub fn parse(buf: &[u8]) -> Parse<'_> {
    let Some(end) = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n")) else {
        return if buf.len() >= HEAD_BYTES_MAX {
            Parse::TooLarge
        } else {
            Parse::Incomplete
        };
    };
    if end > HEAD_BYTES_MAX {
        return Parse::TooLarge;
    }
    let Some(head) = buf.get(..end) else {
        return Parse::Bad;
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return Parse::Bad;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), Some(version), None)
            if version.starts_with("HTTP/1.") && path.starts_with('/') =>
        {
            Parse::Request { method, path }
        }
        _ => Parse::Bad,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Page,
    Metrics,
    Json,
    NotFound,
}

pub fn route(path: &str) -> Route {
    // A query string changes nothing (`/metrics?x=1` from some scrapers).
    match path.split('?').next().unwrap_or(path) {
        "/" | "/index.html" => Route::Page,
        "/metrics" => Route::Metrics,
        "/stats.json" => Route::Json,
        _ => Route::NotFound,
    }
}

pub fn content_type(route: Route) -> &'static str {
    match route {
        Route::Page => "text/html; charset=utf-8",
        Route::Metrics => "text/plain; version=0.0.4; charset=utf-8",
        Route::Json => "application/json",
        Route::NotFound => "text/plain; charset=utf-8",
    }
}

/// A whole response. `head_only`: for HEAD, the headers without the body.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// An error response with a one-line body.
pub fn error(status: u16, message: &str) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        &format!("{message}\n"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Parse::Incomplete
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parse::Request {
                method: "GET",
                path: "/metrics"
            }
        );
        assert_eq!(
            parse(b"HEAD / HTTP/1.0\n\n"),
            Parse::Request {
                method: "HEAD",
                path: "/"
            }
        );
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"GET / SPDY/3\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(&vec![b'a'; HEAD_BYTES_MAX]), Parse::TooLarge);
    }

    #[test]
    fn routes_and_responses() {
        assert_eq!(route("/metrics?name[]=x"), Route::Metrics);
        assert_eq!(route("/stats.json"), Route::Json);
        assert_eq!(route("/"), Route::Page);
        assert_eq!(route("/../etc/passwd"), Route::NotFound);
        let r = response(200, "application/json", "{}", false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
        let head = String::from_utf8(response(200, "text/plain", "abc", true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains("Content-Length: 3\r\n"));
    }
}
