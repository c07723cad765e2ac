//! One `Config`, resolved from four layers: flags > `LIVEGATE_*` environment > TOML file >
//! defaults. Every layer is the same [`Settings`] struct, so a setting is declared once and
//! parsed by the same code whatever layer it comes from.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::redact::{redact, Secret, Secrets};

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443);
pub const DEFAULT_STREAM_NAME: &str = "live";
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FPS: u32 = 30;
pub const DEFAULT_BITRATE: Bitrate = Bitrate { kbps: 2000 };
/// The one UDP port every viewer's media uses (MediaMTX's default too).
pub const DEFAULT_WEBRTC_PORT: u16 = 8189;
pub const DEFAULT_WEBRTC_BIND: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
pub const DEFAULT_MAX_VIEWERS: usize = 200;
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 8;
/// A source that sends no frame for this long is replaced by the slate.
pub const DEFAULT_SOURCE_TIMEOUT_S: f64 = 2.0;
pub const DEFAULT_SIGNALLING_RATE: u32 = 10;
/// Prefix of every environment variable livegate reads.
pub const ENV_PREFIX: &str = "LIVEGATE_";
/// Separator between the items of a list setting given in the environment.
pub const ENV_LIST_SEPARATOR: char = ';';

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Flags(#[from] clap::Error),
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid setting `{setting}` = {value:?}: {accepted}")]
    Invalid { setting: &'static str, value: String, accepted: String },
}

fn invalid(setting: &'static str, value: impl fmt::Display, accepted: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, value: value.to_string(), accepted: accepted.into() }
}

/// The command line: the settings plus what only makes sense on a command line.
#[derive(Debug, Parser)]
#[command(name = "livegate", version, about = "Live video to browsers over WebRTC and HLS, from one HTTPS binary")]
pub struct Cli {
    /// TOML config file (env LIVEGATE_CONFIG).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Load and validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// One layer of settings. Every field is optional: an absent field falls through to the next
/// layer down.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTPS listen address [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// A stream, repeatable: NAME=SOURCE, SOURCE one of test, v4l2:/dev/videoN, rtsp://…,
    /// file:PATH, gst:<launch fragment>, whep:https://… [default: live=test].
    #[arg(long = "stream", value_name = "NAME=SOURCE")]
    #[serde(rename = "stream")]
    pub streams: Option<Vec<StreamSpec>>,
    /// Publish a stream to a WHIP server, repeatable: NAME=URL (https://…, or http:// to a
    /// loopback address); a bearer token goes in the config file's [[publish]] table.
    #[arg(long = "publish", value_name = "NAME=URL")]
    pub publish: Option<Vec<PublishSpec>>,
    /// Encoded width in pixels [default: 1280].
    #[arg(long)]
    pub width: Option<u32>,
    /// Encoded height in pixels [default: 720].
    #[arg(long)]
    pub height: Option<u32>,
    /// Frames per second [default: 30].
    #[arg(long)]
    pub fps: Option<u32>,
    /// Video bitrate in bit/s, with an optional k or M suffix [default: 2M].
    #[arg(long)]
    pub bitrate: Option<Bitrate>,
    /// H.264 encoder [default: auto].
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderChoice>,
    /// Seconds without a frame before the slate replaces a source, 0.5 to 60 [default: 2].
    #[arg(long, value_name = "SECONDS")]
    pub source_timeout: Option<f64>,
    /// Sound: auto carries it wherever the source has some, off drops it [default: auto].
    #[arg(long, value_enum)]
    pub audio: Option<AudioMode>,
    /// Microphone for V4L2 cameras: auto (the sound card of the camera's own USB device),
    /// an ALSA device (hw:1,0, plughw:CARD=C920), or a PulseAudio/PipeWire source name.
    #[arg(long, value_name = "DEVICE")]
    pub audio_device: Option<AudioDevice>,
    /// Video from RTSP and file sources: auto forwards H.264 browsers can decode untouched and
    /// transcodes the rest, always transcodes, never refuses what it cannot forward [default: auto].
    #[arg(long, value_enum)]
    pub transcode: Option<TranscodeMode>,
    /// PEM certificates that sign WHEP origins' certificates (a private CA), for every whep:
    /// source without a source_ca of its own.
    #[arg(long, value_name = "PATH")]
    pub source_ca: Option<PathBuf>,
    /// Draw the latency strip on every source, not only the test source.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub latency_strip: Option<bool>,
    /// HLS output folder [default: a fresh temporary folder, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub hls_dir: Option<PathBuf>,
    /// Folder for state kept across restarts (the self-signed certificate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve the player from this folder instead of the copy built into the binary.
    #[arg(long, value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// TLS certificate chain, PEM.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Extra name or address for the self-signed certificate, repeatable.
    #[arg(long, value_name = "NAME")]
    pub tls_san: Option<Vec<String>>,
    /// Serve plain HTTP (behind a TLS-terminating proxy only).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_tls: Option<bool>,
    /// UDP port for every viewer's WebRTC media [default: 8189].
    #[arg(long, value_name = "PORT")]
    pub webrtc_port: Option<u16>,
    /// TCP port for WebRTC media over ICE-TCP, for viewers whose networks block UDP; 0 turns it
    /// off [default: the UDP port's number].
    #[arg(long, value_name = "PORT")]
    pub webrtc_tcp_port: Option<u16>,
    /// UDP port range for WebRTC media, one port per viewer, instead of --webrtc-port.
    #[arg(long, value_name = "LOW-HIGH")]
    pub webrtc_ports: Option<PortRange>,
    /// Address WebRTC media binds to [default: 0.0.0.0, every interface].
    #[arg(long, value_name = "IP")]
    pub webrtc_bind: Option<IpAddr>,
    /// Address advertised in host candidates instead of the bound one (1:1 NAT).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<IpAddr>,
    /// STUN/TURN server for browsers, repeatable: stun:host:port or turn:user:pass@host:port.
    #[arg(long, value_name = "URL")]
    #[serde(alias = "ice_servers")]
    pub ice_server: Option<Vec<IceServer>>,
    /// Most WebRTC viewers per stream [default: 200].
    #[arg(long, value_name = "N")]
    pub max_viewers: Option<usize>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// A token that lets its holder watch every stream, repeatable.
    #[arg(long, value_name = "TOKEN")]
    pub viewer_token: Option<Vec<Secret>>,
    /// A token that gives its holder the admin role (and every stream), repeatable.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<Vec<Secret>>,
    /// File of viewer tokens, one per line; re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub viewer_token_file: Option<PathBuf>,
    /// File of admin tokens, one per line; re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the HS256 secret that signs JWTs; re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWKS file (RS256, ES256 public keys) that signs JWTs; re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (https://, or http:// on loopback); cached, refreshed on an unknown key id.
    #[arg(long, value_name = "URL")]
    pub jwks_url: Option<JwksUrl>,
    /// Required `aud` claim of JWTs.
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim of JWTs.
    #[arg(long, value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Most unconnected WebRTC sessions one client address may hold [default: 8].
    #[arg(long, value_name = "N")]
    pub max_pending_per_ip: Option<usize>,
    /// Signalling requests (WHEP, WebSocket) per second per client address; bursts of twice
    /// that pass [default: 10].
    #[arg(long, value_name = "N")]
    pub signalling_rate: Option<u32>,
    /// Proxy whose X-Forwarded-For names the client, repeatable: CIDR or address.
    #[arg(long, value_name = "CIDR")]
    pub trusted_proxy: Option<Vec<Cidr>>,
    /// Origin allowed to call WHEP, HLS and the API from its pages, repeatable: * or
    /// https://host[:port] [default: * (never * for admin answers)].
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Option<Vec<CorsOrigin>>,
}

macro_rules! layer_fields {
    ($upper:expr, $lower:expr; $($field:ident),*) => {
        Settings { $($field: $upper.$field.or($lower.$field)),* }
    };
}

impl Settings {
    /// `self` wins wherever it has a value.
    fn over(self, lower: Settings) -> Settings {
        layer_fields!(self, lower; listen, streams, publish, source_ca, width, height, fps, bitrate, encoder, source_timeout,
            audio, audio_device, transcode, latency_strip, hls_dir, state_dir, web_dir, tls_cert, tls_key, tls_san, no_tls,
            webrtc_port, webrtc_tcp_port, webrtc_ports, webrtc_bind, public_ip, ice_server, max_viewers, log_format, viewer_token,
            admin_token, viewer_token_file, admin_token_file, jwt_secret_file, jwks_file, jwks_url,
            jwt_audience, jwt_issuer, max_pending_per_ip, signalling_rate, trusted_proxy, cors_origin)
    }

    /// Reads `LIVEGATE_<FLAG>` variables through the same parser as the flags.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let command = Settings::augment_args(clap::Command::new("env").no_binary_name(true));
        let mut argv = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let var = env_var_name(long);
            let Some(value) = lookup(&var) else { continue };
            let multiple = matches!(arg.get_action(), clap::ArgAction::Append);
            let values: Vec<&str> = if multiple {
                value.split(ENV_LIST_SEPARATOR).map(str::trim).filter(|v| !v.is_empty()).collect()
            } else {
                vec![value.as_str()]
            };
            for value in values {
                argv.push(format!("--{long}={value}"));
            }
        }
        let matches = command
            .try_get_matches_from(&argv)
            .map_err(|err| ConfigError::Env { var: "LIVEGATE_*".into(), message: err.to_string() })?;
        Ok(Settings::from_arg_matches(&matches)?)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::ParseFile { path: path.to_owned(), message: err.to_string() })
    }
}

pub fn env_var_name(long_flag: &str) -> String {
    format!("{ENV_PREFIX}{}", long_flag.to_uppercase().replace('-', "_"))
}

/// A source of raw video, as written in `--stream NAME=SOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Test,
    V4l2 {
        device: PathBuf,
    },
    Rtsp {
        url: String,
    },
    File {
        path: PathBuf,
    },
    Gst {
        launch: String,
    },
    /// Another livegate, or any WHEP server: taken as a WHEP viewer.
    Whep(Upstream),
}

pub const ACCEPTED_SOURCES: &str = "one of test, v4l2:/dev/videoN, rtsp://…, rtsps://…, file:PATH, \
     gst:<launch fragment>, whep:https://…, whep+insecure:https://…";

/// A server livegate connects to (a WHEP origin, a WHIP ingest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub url: ServerUrl,
    pub token: Option<BearerToken>,
    /// Accept any certificate (`whep+insecure:`): for a self-signed origin on a trusted network.
    pub insecure: bool,
    /// PEM certificates, one of which signs the server's.
    pub ca: Option<PathBuf>,
}

impl Upstream {
    fn new(url: ServerUrl) -> Upstream {
        Upstream { url, token: None, insecure: false, ca: None }
    }
}

/// The URL of a server livegate connects to: `https:`, or `http:` to a loopback address (a
/// token must not cross a network in clear text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(pub reqwest::Url);

pub const ACCEPTED_SERVER_URLS: &str =
    "an https:// URL, or http:// to a loopback address (127.0.0.1, [::1], localhost)";

impl FromStr for ServerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(s.trim())
            .map_err(|err| format!("{:?} is not a URL ({err}); accepted: {ACCEPTED_SERVER_URLS}", redact(s)))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url.scheme() {
            "https" => Ok(ServerUrl(url)),
            "http" if loopback => Ok(ServerUrl(url)),
            _ => Err(format!("{:?}: accepted: {ACCEPTED_SERVER_URLS}", redact(s))),
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_str()))
    }
}

/// A bearer token for a server livegate connects to: given in the config, or read from a file
/// at each connection (so a mounted Secret can rotate it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerToken {
    Given(Secret),
    File(PathBuf),
}

impl BearerToken {
    /// Either `token` or `token_file`, not both.
    fn from_settings(token: Option<String>, token_file: Option<PathBuf>) -> Result<Option<BearerToken>, String> {
        match (token, token_file) {
            (Some(_), Some(file)) => {
                Err(format!("both token and token_file ({}); accepted: one of them", file.display()))
            }
            (Some(token), None) => Ok(Some(BearerToken::Given(token.parse()?))),
            (None, Some(file)) => Ok(Some(BearerToken::File(file))),
            (None, None) => Ok(None),
        }
    }

    /// The token now: a file is read again each time.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            BearerToken::Given(token) => Ok(token.clone()),
            BearerToken::File(path) => std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read token_file {}: {err}", path.display()))?
                .parse()
                .map_err(|err| format!("token_file {}: {err}", path.display())),
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let non_empty = |rest: &str, what: &str| {
            if rest.trim().is_empty() {
                Err(format!("{what} is empty; accepted: {ACCEPTED_SOURCES}"))
            } else {
                Ok(rest.trim().to_owned())
            }
        };
        if s == "test" {
            Ok(Source::Test)
        } else if let Some(rest) = s.strip_prefix("v4l2:") {
            Ok(Source::V4l2 { device: non_empty(rest, "v4l2 device")?.into() })
        } else if s.starts_with("rtsp://") || s.starts_with("rtsps://") {
            if let Some(password) = crate::redact::url_password(s) {
                Secrets::global().register(password);
            }
            Ok(Source::Rtsp { url: s.to_owned() })
        } else if let Some(rest) = s.strip_prefix("file:") {
            Ok(Source::File { path: non_empty(rest, "file path")?.into() })
        } else if let Some(rest) = s.strip_prefix("gst:") {
            Ok(Source::Gst { launch: non_empty(rest, "gst launch fragment")? })
        } else if let Some(rest) = s.strip_prefix("whep+insecure:") {
            Ok(Source::Whep(Upstream { insecure: true, ..Upstream::new(rest.parse()?) }))
        } else if let Some(rest) = s.strip_prefix("whep:") {
            Ok(Source::Whep(Upstream::new(rest.parse()?)))
        } else {
            Err(format!("unknown source {s:?}; accepted: {ACCEPTED_SOURCES}"))
        }
    }
}

/// Shows the source as configured, with its passwords masked: this is what the API, the log
/// and `--check-config` print.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Test => f.write_str("test"),
            Source::V4l2 { device } => write!(f, "v4l2:{}", device.display()),
            Source::Rtsp { url } => f.write_str(&redact(url)),
            Source::File { path } => write!(f, "file:{}", path.display()),
            Source::Gst { launch } => write!(f, "gst:{}", redact(launch)),
            Source::Whep(upstream) if upstream.insecure => write!(f, "whep+insecure:{}", upstream.url),
            Source::Whep(upstream) => write!(f, "whep:{}", upstream.url),
        }
    }
}

/// `NAME=SOURCE` on the command line, `{ name, source }` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub source: Source,
}

pub const ACCEPTED_STREAM_NAMES: &str = "1 to 64 characters from a-z A-Z 0-9 _ -";

impl StreamSpec {
    fn new(name: &str, source: &str) -> Result<StreamSpec, String> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(format!("stream name {name:?} is not {ACCEPTED_STREAM_NAMES}"));
        }
        Ok(StreamSpec { name: name.to_owned(), source: source.parse()? })
    }
}

impl FromStr for StreamSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, source) =
            s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=SOURCE; SOURCE is {ACCEPTED_SOURCES}"))?;
        StreamSpec::new(name.trim(), source.trim())
    }
}

impl<'de> Deserialize<'de> for StreamSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Short(String),
            Table(Table),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            name: String,
            source: String,
            token: Option<String>,
            token_file: Option<PathBuf>,
            source_ca: Option<PathBuf>,
        }
        let table = match Raw::deserialize(d)? {
            Raw::Short(s) => return s.parse().map_err(serde::de::Error::custom),
            Raw::Table(table) => table,
        };
        let mut spec = StreamSpec::new(&table.name, &table.source).map_err(serde::de::Error::custom)?;
        let token = BearerToken::from_settings(table.token, table.token_file).map_err(serde::de::Error::custom)?;
        match &mut spec.source {
            Source::Whep(upstream) => {
                upstream.token = token;
                upstream.ca = table.source_ca;
            }
            _ if token.is_some() || table.source_ca.is_some() => {
                return Err(serde::de::Error::custom(format!(
                    "stream {}: token, token_file and source_ca are for whep: sources only",
                    table.name
                )))
            }
            _ => {}
        }
        Ok(spec)
    }
}

/// A stream published to a WHIP server: `NAME=URL` on the command line, a `[[publish]]`
/// table (`stream`, `url`, `token` or `token_file`) in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    pub stream: String,
    pub to: Upstream,
}

impl FromStr for PublishSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (stream, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not NAME=URL; URL is {ACCEPTED_SERVER_URLS}", redact(s)))?;
        Ok(PublishSpec { stream: stream.trim().to_owned(), to: Upstream::new(url.parse()?) })
    }
}

impl<'de> Deserialize<'de> for PublishSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            stream: String,
            url: String,
            token: Option<String>,
            token_file: Option<PathBuf>,
        }
        let table = Table::deserialize(d)?;
        let url = table.url.parse().map_err(serde::de::Error::custom)?;
        let token = BearerToken::from_settings(table.token, table.token_file).map_err(serde::de::Error::custom)?;
        Ok(PublishSpec { stream: table.stream, to: Upstream { token, ..Upstream::new(url) } })
    }
}

/// Video bitrate, kept in kbit/s because that is what encoders take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bitrate {
    pub kbps: u32,
}

pub const ACCEPTED_BITRATES: &str = "bit/s from 100k to 100M, e.g. 2000000, 2500k or 2M";

impl FromStr for Bitrate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (digits, scale) = match s.char_indices().last() {
            Some((i, 'k' | 'K')) => (&s[..i], 1_000f64),
            Some((i, 'm' | 'M')) => (&s[..i], 1_000_000f64),
            _ => (s, 1f64),
        };
        let value: f64 =
            digits.parse().map_err(|_| format!("{s:?} is not a bitrate; accepted: {ACCEPTED_BITRATES}"))?;
        let bits = value * scale;
        if !(100_000.0..=100_000_000.0).contains(&bits) {
            return Err(format!("{s:?} is out of range; accepted: {ACCEPTED_BITRATES}"));
        }
        Ok(Bitrate { kbps: (bits / 1000.0).round() as u32 })
    }
}

impl fmt::Display for Bitrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}k", self.kbps)
    }
}

/// Inclusive UDP port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.high - self.low) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let accepted = "LOW-HIGH with 1 <= LOW <= HIGH <= 65535, e.g. 50000-50099";
        let parse = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        match s.split_once('-').map(|(l, h)| (parse(l), parse(h))) {
            Some((Some(low), Some(high))) if low <= high => Ok(PortRange { low, high }),
            _ => Err(format!("{s:?} is not a port range; accepted: {accepted}")),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// A STUN or TURN server handed to browsers, as `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl FromStr for IceServer {
    type Err = String;
    /// `turn:user:pass@host:3478?transport=udp` carries its credentials before the `@`.
    fn from_str(s: &str) -> Result<Self, String> {
        let accepted = "stun:HOST[:PORT], stuns:…, turn:[USER:PASS@]HOST[:PORT][?transport=udp|tcp], turns:…";
        let (scheme, rest) = s
            .split_once(':')
            .filter(|(scheme, rest)| matches!(*scheme, "stun" | "stuns" | "turn" | "turns") && !rest.is_empty())
            .ok_or_else(|| format!("{s:?} is not an ICE server URL; accepted: {accepted}"))?;
        match rest.rsplit_once('@') {
            Some((credentials, host)) if scheme.starts_with("turn") => {
                let (user, pass) = credentials
                    .split_once(':')
                    .ok_or_else(|| format!("{s:?}: TURN credentials must be USER:PASS@; accepted: {accepted}"))?;
                // Browsers get TURN credentials from /api/config; logs never do.
                Secrets::global().register(pass);
                Ok(IceServer {
                    urls: vec![format!("{scheme}:{host}")],
                    username: Some(user.to_owned()),
                    credential: Some(pass.to_owned()),
                })
            }
            Some(_) => Err(format!("{s:?}: only TURN servers take credentials; accepted: {accepted}")),
            None => Ok(IceServer { urls: vec![s.to_owned()], username: None, credential: None }),
        }
    }
}

macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw { Text(String), Number(u64) }
                let text = match Raw::deserialize(d)? {
                    Raw::Text(text) => text,
                    Raw::Number(n) => n.to_string(),
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Bitrate, PortRange, IceServer, Secret, JwksUrl, Cidr, CorsOrigin);

/// Where JWT signing keys are fetched: HTTPS, or plain HTTP to a loopback address (a sidecar,
/// a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl(pub String);

impl FromStr for JwksUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let accepted = "an https:// URL, or http:// to localhost or a loopback address";
        let host = |rest: &str| {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
                None => host.split(':').next().unwrap_or_default().to_owned(),
            }
        };
        let loopback = |host: &str| host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match s.split_once("://") {
            Some(("https", rest)) if !host(rest).is_empty() => Ok(JwksUrl(s.to_owned())),
            Some(("http", rest)) if loopback(&host(rest)) => Ok(JwksUrl(s.to_owned())),
            _ => Err(format!("{:?} is not a JWKS URL; accepted: {accepted}", crate::redact::redact(s))),
        }
    }
}

/// An address block (`10.0.0.0/8`) or one address (`10.0.0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>().or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from)).map(Cidr).map_err(|_| {
            format!("{s:?} is not an address block; accepted: CIDR like 10.0.0.0/8 or fd00::/8, or one address")
        })
    }
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

/// A web origin allowed to call livegate from its pages, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigin {
    Any,
    Exactly(String),
}

impl FromStr for CorsOrigin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('/');
        if s == "*" {
            return Ok(CorsOrigin::Any);
        }
        let valid = s.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains(['/', '?', '#', '@', ' '])
        });
        if valid {
            Ok(CorsOrigin::Exactly(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is not an origin; accepted: * or scheme://host[:port], e.g. https://dash.example.org"))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    /// A working hardware encoder if there is one, else x264.
    Auto,
    X264,
    /// Video4Linux2 stateful encoder (Raspberry Pi, many ARM boards).
    V4l2,
    /// VA-API through the `va` plugin.
    Va,
    /// VA-API through gstreamer-vaapi.
    Vaapi,
    /// NVIDIA NVENC.
    Nvh264,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AudioMode {
    /// Sound wherever the source has some.
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TranscodeMode {
    /// Forward H.264 that browsers decode; transcode anything else.
    #[default]
    Auto,
    Always,
    /// Forward H.264 that browsers decode; refuse anything else.
    Never,
}

/// Where a V4L2 camera's sound comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AudioDevice {
    /// The sound card on the camera's own USB device, if it has one.
    Auto,
    /// An ALSA PCM: `hw:…`, `plughw:…`, `default`, `sysdefault…`.
    Alsa(String),
    /// A PulseAudio (or PipeWire-Pulse) source name.
    Pulse(String),
}

pub const ACCEPTED_AUDIO_DEVICES: &str =
    "auto, an ALSA device (hw:1,0, plughw:CARD=C920, default) or a PulseAudio/PipeWire source name";

impl FromStr for AudioDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let alsa =
            ["hw:", "plughw:", "sysdefault", "dsnoop:"].iter().any(|prefix| s.starts_with(prefix)) || s == "default";
        match s {
            "" => Err(format!("the audio device is empty; accepted: {ACCEPTED_AUDIO_DEVICES}")),
            "auto" => Ok(AudioDevice::Auto),
            _ if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') => {
                Err(format!("{s:?} is not a device name; accepted: {ACCEPTED_AUDIO_DEVICES}"))
            }
            _ if alsa => Ok(AudioDevice::Alsa(s.to_owned())),
            _ => Ok(AudioDevice::Pulse(s.to_owned())),
        }
    }
}

impl TryFrom<String> for AudioDevice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<AudioDevice> for String {
    fn from(device: AudioDevice) -> String {
        device.to_string()
    }
}

impl fmt::Display for AudioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioDevice::Auto => f.write_str("auto"),
            AudioDevice::Alsa(name) | AudioDevice::Pulse(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Size, rate and bitrate of every encoded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VideoSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { extra_names: Vec<String> },
    Off,
}

/// Where WebRTC media is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPorts {
    /// One UDP socket (and one TCP listener, for ICE-TCP) for every viewer.
    Shared { udp: u16, tcp: Option<u16> },
    /// A UDP port of its own for each viewer.
    PerViewer(PortRange),
}

impl fmt::Display for MediaPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaPorts::Shared { udp, tcp: Some(tcp) } => write!(f, "{udp}/udp and {tcp}/tcp (shared)"),
            MediaPorts::Shared { udp, tcp: None } => write!(f, "{udp}/udp (shared, no ICE-TCP)"),
            MediaPorts::PerViewer(range) => write!(f, "{range} (one per viewer)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebRtcSettings {
    pub ports: MediaPorts,
    pub bind: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub ice_servers: Vec<IceServer>,
    pub max_viewers: usize,
}

/// Who may watch and administer. Everything is open when nothing is configured.
#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    pub viewer_tokens: Vec<Secret>,
    pub admin_tokens: Vec<Secret>,
    pub viewer_token_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<JwksUrl>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
}

impl AccessSettings {
    /// True when any credential is configured, so anonymous callers are turned away.
    pub fn is_enabled(&self) -> bool {
        !self.viewer_tokens.is_empty()
            || !self.admin_tokens.is_empty()
            || self.viewer_token_file.is_some()
            || self.admin_token_file.is_some()
            || self.uses_jwt()
    }

    pub fn uses_jwt(&self) -> bool {
        self.jwt_secret_file.is_some() || self.jwks_file.is_some() || self.jwks_url.is_some()
    }
}

/// What one client address may do to signalling.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_pending_per_ip: usize,
    /// Requests per second; bursts of twice as many pass.
    pub signalling_rate: u32,
    pub trusted_proxies: Vec<Cidr>,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub streams: Vec<StreamSpec>,
    pub publish: Vec<PublishSpec>,
    pub video: VideoSettings,
    pub encoder: EncoderChoice,
    pub latency_strip: bool,
    pub source_timeout: std::time::Duration,
    pub audio: AudioMode,
    pub audio_device: Option<AudioDevice>,
    pub transcode: TranscodeMode,
    pub hls_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub web_dir: Option<PathBuf>,
    pub tls: TlsMode,
    pub webrtc: WebRtcSettings,
    pub log_format: LogFormat,
    pub access: AccessSettings,
    pub limits: ClientLimits,
    /// Empty means any origin.
    pub cors_origins: Vec<CorsOrigin>,
}

/// What `load` returns besides the config: whether to only check it.
pub struct Loaded {
    pub config: Config,
    pub check_only: bool,
}

impl Config {
    /// Parses the process's flags, environment and config file.
    pub fn load() -> Result<Loaded, ConfigError> {
        Self::load_from(std::env::args_os(), |var| std::env::var(var).ok())
    }

    pub fn load_from<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let env_settings = Settings::from_env(&env)?;
        let config_path = cli.config.clone().or_else(|| env("LIVEGATE_CONFIG").map(PathBuf::from));
        let file_settings = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })?;
                Settings::from_toml(path, &text)?
            }
            None => Settings::default(),
        };
        let merged = cli.settings.over(env_settings).over(file_settings);
        Ok(Loaded { config: Config::resolve(merged, &env)?, check_only: cli.check_config })
    }

    /// Fills defaults and validates.
    pub fn resolve(s: Settings, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut streams =
            s.streams.unwrap_or_else(|| vec![StreamSpec { name: DEFAULT_STREAM_NAME.into(), source: Source::Test }]);
        for stream in &mut streams {
            if let Source::Whep(upstream) = &mut stream.source {
                upstream.ca = upstream.ca.take().or_else(|| s.source_ca.clone());
            }
        }
        let mut names = HashSet::new();
        for stream in &streams {
            if !names.insert(stream.name.as_str()) {
                return Err(invalid("stream", &stream.name, "each stream name once"));
            }
        }
        if streams.is_empty() {
            return Err(invalid("stream", "[]", "at least one stream"));
        }
        let publish = s.publish.unwrap_or_default();
        if let Some(unknown) = publish.iter().find(|p| !names.contains(p.stream.as_str())) {
            let known: Vec<&str> = names.iter().copied().collect();
            return Err(invalid("publish", &unknown.stream, format!("the name of a stream: {}", known.join(", "))));
        }

        let width = s.width.unwrap_or(DEFAULT_WIDTH);
        let height = s.height.unwrap_or(DEFAULT_HEIGHT);
        let fps = s.fps.unwrap_or(DEFAULT_FPS);
        for (setting, value, max) in [("width", width, 7680), ("height", height, 4320)] {
            if value < 64 || value > max || value % 2 != 0 {
                return Err(invalid(setting, value, format!("an even number of pixels from 64 to {max}")));
            }
        }
        if !(1..=120).contains(&fps) {
            return Err(invalid("fps", fps, "1 to 120 frames per second"));
        }
        let source_timeout = s.source_timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT_S);
        if !(0.5..=60.0).contains(&source_timeout) {
            return Err(invalid("source_timeout", source_timeout, "0.5 to 60 seconds"));
        }

        let tls = match (s.no_tls.unwrap_or(false), s.tls_cert, s.tls_key) {
            (true, None, None) => TlsMode::Off,
            (true, cert, key) => {
                let given = cert.or(key).unwrap_or_default();
                return Err(invalid("no_tls", given.display(), "either --no-tls or --tls-cert/--tls-key, not both"));
            }
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfSigned { extra_names: s.tls_san.unwrap_or_default() },
            (false, Some(cert), None) => {
                return Err(invalid(
                    "tls_key",
                    "(missing)",
                    format!("a PEM key to go with tls_cert {}", cert.display()),
                ))
            }
            (false, None, Some(key)) => {
                return Err(invalid(
                    "tls_cert",
                    "(missing)",
                    format!("a PEM certificate to go with tls_key {}", key.display()),
                ))
            }
        };

        let max_viewers = s.max_viewers.unwrap_or(DEFAULT_MAX_VIEWERS);
        if max_viewers == 0 {
            return Err(invalid("max_viewers", 0, "at least 1"));
        }
        let media_ports = match (s.webrtc_port, s.webrtc_ports) {
            (Some(0), _) => return Err(invalid("webrtc_port", 0, "a port from 1 to 65535")),
            (Some(port), Some(range)) => {
                return Err(invalid(
                    "webrtc_ports",
                    range,
                    format!("either webrtc_port ({port}, one port for all) or webrtc_ports (one per viewer), not both"),
                ))
            }
            (_, Some(range)) if s.webrtc_tcp_port.is_some_and(|port| port != 0) => {
                let tcp = s.webrtc_tcp_port.unwrap_or_default();
                return Err(invalid(
                    "webrtc_tcp_port",
                    tcp,
                    format!("0 (off) with webrtc_ports ({range}): ICE-TCP needs the shared webrtc_port"),
                ));
            }
            (_, Some(range)) => MediaPorts::PerViewer(range),
            (port, None) => {
                let udp = port.unwrap_or(DEFAULT_WEBRTC_PORT);
                MediaPorts::Shared { udp, tcp: Some(s.webrtc_tcp_port.unwrap_or(udp)).filter(|port| *port != 0) }
            }
        };
        if let Some(ip) = s.public_ip.filter(|ip| ip.is_unspecified()) {
            return Err(invalid("public_ip", ip, "a concrete address other peers can reach"));
        }
        let access = AccessSettings {
            viewer_tokens: s.viewer_token.unwrap_or_default(),
            admin_tokens: s.admin_token.unwrap_or_default(),
            viewer_token_file: s.viewer_token_file,
            admin_token_file: s.admin_token_file,
            jwt_secret_file: s.jwt_secret_file,
            jwks_file: s.jwks_file,
            jwks_url: s.jwks_url,
            jwt_audience: s.jwt_audience,
            jwt_issuer: s.jwt_issuer,
        };
        for (setting, value) in [("jwt_audience", &access.jwt_audience), ("jwt_issuer", &access.jwt_issuer)] {
            if let Some(value) = value.as_ref().filter(|_| !access.uses_jwt()) {
                return Err(invalid(setting, value, "only with jwt_secret_file, jwks_file or jwks_url"));
            }
        }
        let max_pending_per_ip = s.max_pending_per_ip.unwrap_or(DEFAULT_MAX_PENDING_PER_IP);
        if max_pending_per_ip == 0 {
            return Err(invalid("max_pending_per_ip", 0, "at least 1"));
        }
        let signalling_rate = s.signalling_rate.unwrap_or(DEFAULT_SIGNALLING_RATE);
        if signalling_rate == 0 {
            return Err(invalid("signalling_rate", 0, "at least 1 request per second"));
        }
        let cors_origins = s.cors_origin.unwrap_or_default();
        let cors_origins = if cors_origins.contains(&CorsOrigin::Any) { Vec::new() } else { cors_origins };

        Ok(Config {
            listen: s.listen.unwrap_or(DEFAULT_LISTEN),
            streams,
            publish,
            video: VideoSettings { width, height, fps, bitrate_kbps: s.bitrate.unwrap_or(DEFAULT_BITRATE).kbps },
            encoder: s.encoder.unwrap_or(EncoderChoice::Auto),
            latency_strip: s.latency_strip.unwrap_or(false),
            source_timeout: std::time::Duration::from_secs_f64(source_timeout),
            audio: s.audio.unwrap_or_default(),
            audio_device: s.audio_device,
            transcode: s.transcode.unwrap_or_default(),
            hls_dir: s.hls_dir,
            state_dir: s.state_dir.unwrap_or_else(|| default_state_dir(&env)),
            web_dir: s.web_dir,
            tls,
            webrtc: WebRtcSettings {
                ports: media_ports,
                bind: s.webrtc_bind.unwrap_or(DEFAULT_WEBRTC_BIND),
                public_ip: s.public_ip,
                ice_servers: s.ice_server.unwrap_or_default(),
                max_viewers,
            },
            log_format: s.log_format.unwrap_or_default(),
            access,
            limits: ClientLimits {
                max_pending_per_ip,
                signalling_rate,
                trusted_proxies: s.trusted_proxy.unwrap_or_default(),
            },
            cors_origins,
        })
    }
}

/// systemd's `$STATE_DIRECTORY`, else the XDG state folder, else one under /tmp.
fn default_state_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_STATE_HOME") {
        return Path::new(&dir).join("livegate");
    }
    match env("HOME") {
        Some(home) => Path::new(&home).join(".local/state/livegate"),
        None => std::env::temp_dir().join("livegate-state"),
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.video;
        writeln!(f, "listen = {}", self.listen)?;
        for stream in &self.streams {
            writeln!(f, "stream {} = {}", stream.name, stream.source)?;
        }
        for publication in &self.publish {
            writeln!(f, "publish {} to {}", publication.stream, publication.to.url)?;
        }
        writeln!(f, "video = {}x{} @ {} fps, {} kbit/s", v.width, v.height, v.fps, v.bitrate_kbps)?;
        writeln!(
            f,
            "encoder = {:?}, latency_strip = {}, source_timeout = {} s",
            self.encoder,
            self.latency_strip,
            self.source_timeout.as_secs_f64()
        )?;
        writeln!(
            f,
            "audio = {:?}, audio_device = {}, transcode = {:?}",
            self.audio,
            self.audio_device.as_ref().map_or("(none)".into(), ToString::to_string),
            self.transcode
        )?;
        writeln!(f, "hls_dir = {}", self.hls_dir.as_deref().map_or("(temporary)".into(), |p| p.display().to_string()))?;
        writeln!(f, "state_dir = {}", self.state_dir.display())?;
        writeln!(f, "tls = {:?}", self.tls)?;
        let w = &self.webrtc;
        writeln!(f, "webrtc ports = {}, bind = {}, public_ip = {:?}", w.ports, w.bind, w.public_ip)?;
        writeln!(f, "ice_servers = {:?}", w.ice_servers.iter().map(|s| &s.urls).collect::<Vec<_>>())?;
        writeln!(f, "max_viewers = {}, log_format = {:?}", w.max_viewers, self.log_format)?;
        let a = &self.access;
        let file = |path: &Option<PathBuf>| path.as_deref().map_or("-".into(), |p| p.display().to_string());
        writeln!(
            f,
            "access control = {}: {} viewer and {} admin tokens, viewer_token_file = {}, admin_token_file = {}",
            if a.is_enabled() { "on" } else { "off (anyone may watch)" },
            a.viewer_tokens.len(),
            a.admin_tokens.len(),
            file(&a.viewer_token_file),
            file(&a.admin_token_file),
        )?;
        writeln!(
            f,
            "jwt_secret_file = {}, jwks_file = {}, jwks_url = {}, jwt_audience = {:?}, jwt_issuer = {:?}",
            file(&a.jwt_secret_file),
            file(&a.jwks_file),
            a.jwks_url.as_ref().map_or("-".into(), |u| crate::redact::redact(&u.0).into_owned()),
            a.jwt_audience,
            a.jwt_issuer,
        )?;
        let l = &self.limits;
        writeln!(
            f,
            "max_pending_per_ip = {}, signalling_rate = {}/s, trusted_proxies = {:?}",
            l.max_pending_per_ip,
            l.signalling_rate,
            l.trusted_proxies.iter().map(|c| c.0.to_string()).collect::<Vec<_>>()
        )?;
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| match o {
                CorsOrigin::Any => "*".into(),
                CorsOrigin::Exactly(origin) => origin.clone(),
            })
            .collect();
        write!(f, "cors_origins = {}", if origins.is_empty() { "*".into() } else { origins.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv = std::iter::once("livegate").chain(args.iter().copied());
        Config::load_from(argv, |k| env.get(k).cloned()).map(|l| l.config)
    }

    fn write_toml(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.streams, vec![StreamSpec { name: "live".into(), source: Source::Test }]);
        assert_eq!(c.video, VideoSettings { width: 1280, height: 720, fps: 30, bitrate_kbps: 2000 });
        assert_eq!(c.webrtc.ports, MediaPorts::Shared { udp: 8189, tcp: Some(8189) });
        let c = load(&["--webrtc-port", "9000", "--webrtc-tcp-port", "0"], &[]).unwrap();
        assert_eq!(c.webrtc.ports, MediaPorts::Shared { udp: 9000, tcp: None }, "0 turns ICE-TCP off");
        assert_eq!(c.webrtc.max_viewers, 200);
        assert!(matches!(c.tls, TlsMode::SelfSigned { .. }));
        assert_eq!(c.encoder, EncoderChoice::Auto);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = write_toml("width = 640\nheight = 360\nfps = 15\nbitrate = \"1M\"\n[[stream]]\nname = \"cam\"\nsource = \"v4l2:/dev/video0\"\n");
        let path = file.path().to_str().unwrap();
        let c = load(&["--config", path, "--width", "1920"], &[("LIVEGATE_WIDTH", "800"), ("LIVEGATE_HEIGHT", "1080")])
            .unwrap();
        assert_eq!(c.video.width, 1920, "flag beats env");
        assert_eq!(c.video.height, 1080, "env beats file");
        assert_eq!(c.video.fps, 15, "file beats default");
        assert_eq!(c.video.bitrate_kbps, 1000);
        assert_eq!(c.streams[0].source, Source::V4l2 { device: "/dev/video0".into() });
        let c = load(&[], &[("LIVEGATE_CONFIG", path)]).unwrap();
        assert_eq!(c.video.width, 640, "LIVEGATE_CONFIG names the file");
    }

    #[test]
    fn env_lists_and_booleans() {
        let c = load(
            &[],
            &[
                ("LIVEGATE_STREAM", "a=test; b=gst:videotestsrc is-live=true ! video/x-raw,width=320"),
                ("LIVEGATE_LATENCY_STRIP", "true"),
                ("LIVEGATE_NO_TLS", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.streams.len(), 2);
        assert_eq!(
            c.streams[1].source,
            Source::Gst { launch: "videotestsrc is-live=true ! video/x-raw,width=320".into() }
        );
        assert!(c.latency_strip);
        assert_eq!(c.tls, TlsMode::Off);
        let c = load(&["--latency-strip", "--stream", "x=test"], &[]).unwrap();
        assert!(c.latency_strip);
    }

    #[test]
    fn stream_forms() {
        let file = write_toml("stream = [\"one=test\", { name = \"two\", source = \"rtsp://cam/1\" }]\n");
        let c = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap();
        assert_eq!(c.streams[1].source, Source::Rtsp { url: "rtsp://cam/1".into() });
        assert_eq!("f=file:/x.mp4".parse::<StreamSpec>().unwrap().source, Source::File { path: "/x.mp4".into() });
    }

    #[test]
    fn rejections_name_the_setting_and_what_is_accepted() {
        let cases: &[(&[&str], &str)] = &[
            (&["--stream", "cam=usb0"], "accepted: one of test, v4l2:"),
            (&["--stream", "bad name=test"], ACCEPTED_STREAM_NAMES),
            (&["--stream", "a=test", "--stream", "a=test"], "each stream name once"),
            (&["--width", "641"], "`width`"),
            (&["--fps", "0"], "1 to 120"),
            (&["--bitrate", "fast"], ACCEPTED_BITRATES),
            (&["--bitrate", "10"], "out of range"),
            (&["--webrtc-ports", "6000-5000"], "LOW-HIGH"),
            (&["--webrtc-port", "0"], "1 to 65535"),
            (&["--webrtc-port", "9000", "--webrtc-ports", "5000-5001"], "not both"),
            (&["--webrtc-ports", "5000-5001", "--webrtc-tcp-port", "5002"], "ICE-TCP needs the shared webrtc_port"),
            (&["--tls-cert", "/c.pem"], "`tls_key`"),
            (&["--no-tls", "--tls-cert", "/c", "--tls-key", "/k"], "not both"),
            (&["--max-viewers", "0"], "at least 1"),
            (&["--source-timeout", "0.1"], "0.5 to 60 seconds"),
            (&["--ice-server", "http://x"], "stun:HOST"),
            (&["--encoder", "magic"], "x264"),
            (&["--public-ip", "0.0.0.0"], "`public_ip`"),
        ];
        for (args, expected) in cases {
            let err = load(args, &[]).expect_err(&format!("{args:?} must be rejected")).to_string();
            assert!(err.contains(expected), "{args:?}: {err:?} should mention {expected:?}");
        }
        let err = load(&[], &[("LIVEGATE_FPS", "many")]).unwrap_err().to_string();
        assert!(err.contains("LIVEGATE_") && err.contains("many"), "{err}");
        let file = write_toml("colour = \"blue\"\n");
        let err = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn value_parsers() {
        assert_eq!("2M".parse::<Bitrate>().unwrap().kbps, 2000);
        assert_eq!("2500k".parse::<Bitrate>().unwrap().kbps, 2500);
        assert_eq!("1500000".parse::<Bitrate>().unwrap().kbps, 1500);
        assert_eq!("50000-50000".parse::<PortRange>().unwrap().len(), 1);
        let turn: IceServer = "turn:alice:secret@turn.example.org:3478?transport=udp".parse().unwrap();
        assert_eq!(turn.urls, vec!["turn:turn.example.org:3478?transport=udp"]);
        assert_eq!(turn.username.as_deref(), Some("alice"));
        assert_eq!(turn.credential.as_deref(), Some("secret"));
        assert!("stun:alice:x@host".parse::<IceServer>().is_err());
    }

    #[test]
    fn audio_devices_are_alsa_pulse_or_auto() {
        assert_eq!("auto".parse::<AudioDevice>(), Ok(AudioDevice::Auto));
        assert_eq!("plughw:CARD=C920".parse::<AudioDevice>(), Ok(AudioDevice::Alsa("plughw:CARD=C920".into())));
        assert_eq!("hw:1,0".parse::<AudioDevice>(), Ok(AudioDevice::Alsa("hw:1,0".into())));
        assert_eq!(
            "alsa_input.usb-046d_C920-02.analog-stereo".parse::<AudioDevice>(),
            Ok(AudioDevice::Pulse("alsa_input.usb-046d_C920-02.analog-stereo".into()))
        );
        let err = "a\"b".parse::<AudioDevice>().unwrap_err();
        assert!(err.contains(ACCEPTED_AUDIO_DEVICES), "{err}");
        let c = load(&["--audio", "off", "--transcode", "never", "--audio-device", "hw:2"], &[]).unwrap();
        assert_eq!((c.audio, c.transcode), (AudioMode::Off, TranscodeMode::Never));
        assert_eq!(c.audio_device, Some(AudioDevice::Alsa("hw:2".into())));
    }

    #[test]
    fn publications_and_whep_sources_name_servers_livegate_may_send_a_token_to() {
        let c = load(&["--publish", "live=https://ingest.example.net/whip/cam1"], &[]).unwrap();
        assert_eq!(c.publish[0].stream, "live");
        assert_eq!(c.publish[0].to.url.0.as_str(), "https://ingest.example.net/whip/cam1");
        assert!(load(&["--publish", "live=http://127.0.0.1:8889/whip"], &[]).is_ok(), "plain HTTP on loopback");
        let err = load(&["--publish", "live=http://ingest.example.net/whip"], &[]).unwrap_err().to_string();
        assert!(err.contains(ACCEPTED_SERVER_URLS), "{err}");
        let err = load(&["--publish", "cam=https://ingest.example.net/whip"], &[]).unwrap_err().to_string();
        assert!(err.contains("cam") && err.contains("live"), "names the unknown stream and the known: {err}");
        let c = load(&["--stream", "r=whep:https://origin.example.net/whep/live", "--source-ca", "/etc/ca.pem"], &[]);
        let Source::Whep(upstream) = &c.unwrap().streams[0].source else { panic!("not a whep: source") };
        assert_eq!(upstream.ca.as_deref(), Some(Path::new("/etc/ca.pem")), "--source-ca serves every whep: source");

        let toml = r#"
            [[stream]]
            name = "relayed"
            source = "whep+insecure:https://origin.example.net:8443/whep/live"
            token_file = "/run/secrets/origin-token"
            source_ca = "/etc/ca.pem"
            [[publish]]
            stream = "relayed"
            url = "https://ingest.example.net/whip/relayed"
            token = "publish-token-7"
        "#;
        let s = Settings::from_toml(Path::new("t.toml"), toml).unwrap();
        let c = Config::resolve(s, |_| None).unwrap();
        let Source::Whep(upstream) = &c.streams[0].source else { panic!("{:?}", c.streams[0].source) };
        assert!(upstream.insecure);
        assert_eq!(upstream.token, Some(BearerToken::File("/run/secrets/origin-token".into())));
        assert_eq!(upstream.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.publish[0].to.token.as_ref().unwrap().read().unwrap().expose(), "publish-token-7");
        assert!(!c.to_string().contains("publish-token-7"), "the token is never shown");
        let both =
            "[[publish]]\nstream = \"live\"\nurl = \"https://a.example/w\"\ntoken = \"x\"\ntoken_file = \"/f\"\n";
        assert!(Settings::from_toml(Path::new("t.toml"), both).is_err());
        let not_whep = "[[stream]]\nname = \"cam\"\nsource = \"test\"\ntoken = \"x\"\n";
        assert!(Settings::from_toml(Path::new("t.toml"), not_whep).is_err());
    }
}
