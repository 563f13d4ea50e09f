//! Registry locations and the operator's `--allowed-registries` list, parsed into host, port and
//! whole path segments. Nothing here compares references as strings: `acme/../evil` is refused
//! at parse time (a `..` segment would be normalised away by the HTTP client and reach a
//! repository outside the allowed prefix), and an entry covers a reference only when host, port
//! and every entry segment are equal.
//!
//! An allow-list entry is `host[:port][/path]` (TLS only) or `http://host[:port][/path]` (plain
//! HTTP is also permitted for what it covers). A per-service `insecure: true` is honoured only
//! under an `http://` entry; loopback registries always speak plain HTTP (traffic never leaves
//! the operator's host).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A registry and repository prefix: `host[:port][/segment...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Host name (lowercased), IPv4 address, or IPv6 address in brackets.
    pub host: String,
    /// Explicit port; `None` is the scheme's default.
    pub port: Option<u16>,
    /// Repository path segments, each an OCI path component.
    pub path: Vec<String>,
}

/// Why a reference or allow-list entry does not parse. The message names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct BadReference {
    /// What was given.
    pub input: String,
    /// What is wrong with it and what is expected.
    pub reason: String,
}

impl Location {
    /// Parses `host[:port][/path]`; a scheme is not accepted here (see [`AllowEntry::parse`]).
    pub fn parse(input: &str) -> Result<Location, BadReference> {
        let bad = |reason: String| BadReference { input: input.to_string(), reason };
        if input.contains("://") {
            return Err(bad("a registry reference has no scheme; write host[:port]/path".into()));
        }
        let (authority, path) = input.split_once('/').unwrap_or((input, ""));
        let (host, port) = parse_authority(authority).map_err(bad)?;
        let mut segments = vec![];
        if input.contains('/') {
            for s in path.split('/') {
                check_segment(s).map_err(bad)?;
                segments.push(s.to_string());
            }
        }
        Ok(Location { host, port, path: segments })
    }

    /// `host[:port]`, as registries and docker config files key it.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The path joined with `/`, possibly empty.
    pub fn prefix(&self) -> String {
        self.path.join("/")
    }

    /// `localhost`, `127.0.0.0/8` or `[::1]`.
    pub fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
            || h.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())?;
        for s in &self.path {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

fn parse_authority(a: &str) -> Result<(String, Option<u16>), String> {
    if a.is_empty() {
        return Err("the registry host is empty; expected host[:port], e.g. registry.example.com:5000".into());
    }
    if a.contains('@') {
        return Err("credentials do not belong in a registry reference; use a dockerconfigjson Secret".into());
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("an IPv6 host needs a closing ']'")?;
        v6.parse::<Ipv6Addr>().map_err(|_| format!("[{v6}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected :port after the IPv6 host")?),
        };
        (format!("[{v6}]"), port)
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (a.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
        ),
    };
    if !host.starts_with('[') {
        check_host_name(&host)?;
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A DNS name (labels of letters, digits and inner hyphens) or an IPv4 address.
fn check_host_name(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > 253 || !h.split('.').all(label_ok) {
        return Err(format!(
            "host {h:?} is not a DNS name or IP address (letters, digits, inner '-', dot-separated labels)"
        ));
    }
    Ok(())
}

/// One repository path component as the OCI distribution spec defines it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, with a specific message for the dangerous cases.
fn check_segment(s: &str) -> Result<(), String> {
    let reason = match s {
        "" => Some("an empty path segment ('//' or a trailing '/')"),
        "." | ".." => Some("a '.' or '..' path segment"),
        _ if s.contains('%') => Some("a percent-encoded path segment"),
        _ => None,
    };
    if let Some(r) = reason {
        return Err(format!("{r} is not allowed in a repository path"));
    }
    if !is_path_component(s) {
        return Err(format!(
            "path segment {s:?} is not a repository name component (lowercase letters and digits, joined by '.', '_', '__' or '-')"
        ));
    }
    Ok(())
}

fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// One `--allowed-registries` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// What it covers.
    pub location: Location,
    /// Written as `http://...`: a service may ask for plain HTTP (`insecure: true`) here.
    pub plain_http: bool,
}

impl AllowEntry {
    /// Parses `host[:port][/path]`, `https://host...` (the same) or `http://host...`.
    pub fn parse(input: &str) -> Result<AllowEntry, BadReference> {
        let trimmed = input.trim().trim_end_matches('/');
        let (plain_http, rest) = if let Some(r) = trimmed.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = trimmed.strip_prefix("https://") {
            (false, r)
        } else {
            (false, trimmed)
        };
        let location =
            Location::parse(rest).map_err(|e| BadReference { input: input.to_string(), reason: e.reason })?;
        Ok(AllowEntry { location, plain_http })
    }

    /// Same host, same port, and the reference's path starts with every segment of the entry.
    pub fn covers(&self, r: &Location) -> bool {
        self.location.host == r.host
            && self.location.port == r.port
            && r.path.len() >= self.location.path.len()
            && self.location.path.iter().zip(&r.path).all(|(a, b)| a == b)
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plain_http {
            f.write_str("http://")?;
        }
        self.location.fmt(f)
    }
}

/// Parses a whole allow-list; the first bad entry is the error.
pub fn parse_allow_list(entries: &[String]) -> Result<Vec<AllowEntry>, BadReference> {
    entries.iter().map(|e| AllowEntry::parse(e)).collect()
}

/// How the operator may talk to an allowed registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS.
    Tls,
    /// Plain HTTP: loopback, or `insecure: true` under an `http://` entry.
    PlainHttp,
}

/// Decides whether a service may use `reference` (with `insecure` as its spec asks) under
/// `allowed`, and over which transport. Unparseable entries cover nothing (the operator refuses
/// them at start). The error is a sentence for the service's status.
pub fn admit(reference: &Location, insecure: bool, allowed: &[String]) -> Result<Transport, String> {
    let entries: Vec<AllowEntry> = allowed.iter().filter_map(|e| AllowEntry::parse(e).ok()).collect();
    let covering: Vec<&AllowEntry> = entries.iter().filter(|e| e.covers(reference)).collect();
    if covering.is_empty() {
        let list = if allowed.is_empty() { "empty".to_string() } else { allowed.join(", ") };
        return Err(format!(
            "registry {reference} is not on the operator's --allowed-registries ({list}); ask the platform team to allow it, or remove spec.profile.source to use the default registry"
        ));
    }
    if reference.is_loopback() {
        return Ok(Transport::PlainHttp);
    }
    if !insecure {
        return Ok(Transport::Tls);
    }
    if covering.iter().any(|e| e.plain_http) {
        return Ok(Transport::PlainHttp);
    }
    Err(format!(
        "spec.profile.source.insecure: the operator allows {reference} over HTTPS only (its --allowed-registries entry is {}); remove insecure, or ask the platform team to allow plain HTTP with an entry http://{}",
        covering[0], covering[0].location
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Location {
        Location::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn references_parse_into_host_port_and_segments() {
        let l = loc("Registry.Example.com:5000/acme/profiles");
        assert_eq!(
            (l.host.as_str(), l.port, l.path.clone()),
            ("registry.example.com", Some(5000), list(&["acme", "profiles"]))
        );
        assert_eq!(l.to_string(), "registry.example.com:5000/acme/profiles");
        assert_eq!(loc("[::1]:5000/x").authority(), "[::1]:5000");
        assert!(loc("[::1]:5000").is_loopback() && loc("127.0.0.2").is_loopback() && !loc("ghcr.io").is_loopback());
        assert_eq!(loc("ghcr.io").path, Vec::<String>::new());
    }

    #[test]
    fn traversal_empty_and_encoded_segments_are_refused_with_the_reason() {
        for (bad, says) in [
            ("ghcr.io/acme/../evil", "'..'"),
            ("ghcr.io/acme/./x", "'.'"),
            ("ghcr.io/acme//x", "empty path segment"),
            ("ghcr.io/acme/", "empty path segment"),
            ("ghcr.io/acme/%2e%2e/evil", "percent-encoded"),
            ("ghcr.io/Acme", "not a repository name component"),
            ("ghcr.io/acme-/x", "not a repository name component"),
            ("user:pw@ghcr.io/acme", "credentials"),
            ("ghcr.io:0/x", "port"),
            ("ghcr.io:99999", "port"),
            ("ghcr.io:5000:1", "port"),
            ("evil..com/x", "not a DNS name"),
            ("https://ghcr.io/acme", "no scheme"),
            ("", "empty"),
        ] {
            let e = Location::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_allow_list_matches_whole_segments_and_the_port() {
        let allowed = list(&["ghcr.io/acme", "registry.local:5000"]);
        let ok = |r: &str| admit(&loc(r), false, &allowed).is_ok();
        assert!(ok("ghcr.io/acme") && ok("ghcr.io/acme/profiles") && ok("GHCR.io/acme/x"));
        assert!(!ok("ghcr.io/acme-evil") && !ok("ghcr.io/acmex/y") && !ok("ghcr.io/other") && !ok("ghcr.io"));
        assert!(!ok("ghcr.io:443/acme"), "an explicit port is another registry");
        assert!(ok("registry.local:5000/anything") && !ok("registry.local:5001/x") && !ok("registry.local/x"));
        let e = admit(&loc("evil.io/acme"), false, &allowed).unwrap_err();
        assert!(
            e.contains("evil.io/acme") && e.contains("--allowed-registries (ghcr.io/acme, registry.local:5000)"),
            "{e}"
        );
    }

    #[test]
    fn insecure_is_honoured_only_under_an_http_entry() {
        let allowed = list(&["registry.local:5000/tls", "http://registry.local:5000/lab", "127.0.0.1:5000"]);
        assert_eq!(admit(&loc("registry.local:5000/tls/x"), false, &allowed), Ok(Transport::Tls));
        let e = admit(&loc("registry.local:5000/tls/x"), true, &allowed).unwrap_err();
        assert!(e.contains("HTTPS only") && e.contains("http://registry.local:5000/tls"), "{e}");
        assert_eq!(admit(&loc("registry.local:5000/lab/x"), true, &allowed), Ok(Transport::PlainHttp));
        assert_eq!(admit(&loc("registry.local:5000/lab/x"), false, &allowed), Ok(Transport::Tls), "HTTP is opt-in");
        assert_eq!(admit(&loc("127.0.0.1:5000/p"), false, &allowed), Ok(Transport::PlainHttp), "loopback");
    }

    #[test]
    fn allow_entries_take_an_optional_scheme_and_refuse_traversal() {
        let e = AllowEntry::parse("http://reg.local:5000/lab/").unwrap();
        assert!(e.plain_http && e.location.prefix() == "lab" && e.to_string() == "http://reg.local:5000/lab");
        assert!(!AllowEntry::parse("https://reg.local/lab").unwrap().plain_http);
        assert!(AllowEntry::parse("reg.local/../x").is_err());
        assert!(parse_allow_list(&list(&["ok.io", "bad.io/%41"])).unwrap_err().to_string().contains("bad.io/%41"));
    }
}
