//! Credentials never printed: URLs lose their userinfo before they reach a log line, an error,
//! an Event, a status or a termination message.

/// `scheme://user:password@host/path` -> `scheme://***@host/path`; anything that is not a URL
/// with userinfo is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    // The authority ends at the first '/', '?' or '#'; userinfo is what precedes its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else { return url.to_string() };
    let host = &authority[at + 1..];
    match scheme {
        Some(s) => format!("{s}://***@{host}{tail}"),
        None => format!("***@{host}{tail}"),
    }
}

/// Every URL inside free text (an error chain from an HTTP client) redacted.
pub fn redact_text(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|word| if word.contains("://") && word.contains('@') { redact_word(word) } else { word.to_string() })
        .collect()
}

fn redact_word(word: &str) -> String {
    let start = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
    let (prefix, rest) = word.split_at(start);
    format!("{prefix}{}", redact_url(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_and_everything_else_kept() {
        assert_eq!(redact_url("http://user:pa55@mirror.local:8080/hf?x=1"), "http://***@mirror.local:8080/hf?x=1");
        assert_eq!(redact_url("https://tok@proxy.corp"), "https://***@proxy.corp");
        assert_eq!(redact_url("user:pw@proxy:3128"), "***@proxy:3128");
        assert_eq!(
            redact_url("https://huggingface.co/a@b"),
            "https://huggingface.co/a@b",
            "an @ in the path is not userinfo"
        );
        assert_eq!(redact_url("http://u:p@ss@host/x"), "http://***@host/x", "the last @ ends the userinfo");
        assert_eq!(redact_url("no url"), "no url");
    }

    #[test]
    fn urls_inside_error_text_are_redacted() {
        let t = "error sending request for url (http://bob:hunter2@hub.local/api/models): connection refused";
        let r = redact_text(t);
        assert!(!r.contains("hunter2") && !r.contains("bob") && r.contains("hub.local/api/models"), "{r}");
        assert!(r.ends_with("connection refused"));
    }
}
