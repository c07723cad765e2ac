//! Secrets never leave the process. Passwords in URLs (`rtsp://admin:***@cam/stream`),
//! secret-named query parameters and GStreamer password properties are masked wherever text is
//! shown: the API, error and reason strings, `--check-config`, and every log line, which also
//! passes through [`Secrets`], the process-wide list of known secrets (tokens, TURN
//! credentials, the passwords of configured sources).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::{OnceLock, RwLock};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets (compared without case).
const SECRET_PARAMETERS: [&str; 11] =
    ["password", "passwd", "pass", "pwd", "secret", "token", "access_token", "auth", "key", "apikey", "credential"];
/// GStreamer properties that carry passwords (`rtspsrc user-pw=…`, `souphttpsrc proxy-pw=…`).
const SECRET_PROPERTIES: [&str; 2] = ["user-pw=", "proxy-pw="];
/// Shorter known secrets are not scrubbed from logs: they would mask ordinary words.
const MIN_SCRUBBED_LEN: usize = 4;

/// Characters that end a URL written inside other text.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']' | '}' | ',')
}

/// Masks every password this module knows how to find in `text`.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !SECRET_PROPERTIES.iter().any(|p| text.contains(p)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_url).unwrap_or(after.len());
        out.push_str(&redact_url_tail(&after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(redact_properties(&out))
}

/// `user:pass@host/path?password=x` (what follows `scheme://`) with its secrets masked.
fn redact_url_tail(tail: &str) -> String {
    let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    let (authority, path) = tail.split_at(authority_end);
    let mut out = String::with_capacity(tail.len());
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match path.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if SECRET_PARAMETERS.iter().any(|s| s.eq_ignore_ascii_case(name)) => {
                        format!("{name}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(path),
    }
    out
}

/// Masks the values of GStreamer password properties, quoted or not.
fn redact_properties(text: &str) -> String {
    let mut out = text.to_owned();
    for property in SECRET_PROPERTIES {
        let mut from = 0;
        while let Some(found) = out[from..].find(property) {
            let start = from + found + property.len();
            let value = &out[start..];
            let len = match value.strip_prefix('"') {
                Some(quoted) => quoted.find('"').map_or(value.len(), |end| end + 2),
                None => value.find(char::is_whitespace).unwrap_or(value.len()),
            };
            out.replace_range(start..start + len, MASK);
            from = start + MASK.len();
        }
    }
    out
}

/// The password of a URL, if it has one (to register it as a known secret).
pub fn url_password(url: &str) -> Option<&str> {
    let (_, tail) = url.split_once("://")?;
    let authority = &tail[..tail.find(['/', '?', '#']).unwrap_or(tail.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password).filter(|p| !p.is_empty())
}

/// Every secret the process knows, masked in each log line as a last line of defence.
#[derive(Default)]
pub struct Secrets {
    known: RwLock<Vec<String>>,
}

impl Secrets {
    pub fn global() -> &'static Secrets {
        static GLOBAL: OnceLock<Secrets> = OnceLock::new();
        GLOBAL.get_or_init(Secrets::default)
    }

    pub fn register(&self, secret: &str) {
        if secret.len() < MIN_SCRUBBED_LEN {
            return;
        }
        let mut known = self.known.write().expect("secrets lock");
        if !known.iter().any(|k| k == secret) {
            known.push(secret.to_owned());
            // Longest first, so a secret that contains another is masked whole.
            known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }

    /// `text` with every known secret and every URL password masked.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = redact(text);
        for secret in self.known.read().expect("secrets lock").iter() {
            if text.contains(secret.as_str()) {
                text = Cow::Owned(text.replace(secret.as_str(), MASK));
            }
        }
        text
    }
}

/// A secret setting (a token): shown as `***` by `Debug` and `Display`, registered with
/// [`Secrets`] as soon as it is parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty secret; accepted: a non-empty token".into());
        }
        Secrets::global().register(s);
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// A log writer that scrubs each formatted line before it reaches stderr.
pub struct ScrubbingStderr;

impl io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(Secrets::global().scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingStderr;
    fn make_writer(&'a self) -> ScrubbingStderr {
        ScrubbingStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords_anywhere_in_text() {
        assert_eq!(redact("rtsp://admin:secret@cam/stream"), "rtsp://admin:***@cam/stream");
        assert_eq!(redact("rtsp://cam/stream"), "rtsp://cam/stream");
        assert_eq!(redact("rtsp://admin@cam/stream"), "rtsp://admin@cam/stream", "no password, nothing to hide");
        assert_eq!(
            redact("rtspsrc location=\"rtsp://u:p@ss@10.0.0.2:554/s\" latency=200"),
            "rtspsrc location=\"rtsp://u:***@10.0.0.2:554/s\" latency=200",
            "the last @ ends the userinfo"
        );
        assert_eq!(
            redact("error at http://h/x?user=a&Password=b&x=1#f and https://k:v@h2"),
            "error at http://h/x?user=a&Password=***&x=1#f and https://k:***@h2"
        );
        assert_eq!(
            redact("rtspsrc user-id=a user-pw=\"p w\" ! x proxy-pw=q"),
            "rtspsrc user-id=a user-pw=*** ! x proxy-pw=***"
        );
    }

    #[test]
    fn finds_url_passwords() {
        assert_eq!(url_password("rtsp://admin:secret@cam/stream"), Some("secret"));
        assert_eq!(url_password("rtsp://admin@cam/stream"), None);
        assert_eq!(url_password("rtsp://cam/a:b@c"), None, "an @ in the path is not userinfo");
    }

    #[test]
    fn known_secrets_are_scrubbed_and_secret_settings_never_print() {
        let secrets = Secrets::default();
        secrets.register("tok-12345");
        secrets.register("ab");
        assert_eq!(secrets.scrub("token tok-12345 for ab"), "token *** for ab");
        let token: Secret = "hunter22".parse().unwrap();
        assert_eq!(format!("{token} {token:?}"), "*** ***");
        assert_eq!(token.expose(), "hunter22");
        assert!(Secrets::global().scrub("x hunter22 y").contains("x *** y"), "parsing registers it");
    }
}
