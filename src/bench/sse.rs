//! The server-sent-event stream of an OpenAI-compatible completion: lines in, content chunks and
//! `usage` out. Bytes come from the network, so lines are bounded and nothing panics.

use serde_json::Value;

/// Longest SSE line accepted; a chunk is a few hundred bytes, so anything near this is not one.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// What one `data:` event carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Generated text (a token, or a few).
    Content,
    /// Token counts from `stream_options.include_usage`.
    Usage {
        /// Prompt tokens.
        prompt: u64,
        /// Completion tokens.
        completion: u64,
    },
    /// `data: [DONE]`.
    Done,
    /// An error object in the stream.
    Error(String),
}

/// Splits a byte stream into SSE `data:` events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds bytes; returns the events of every completed line, or Err when a line is too long.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        self.buf.extend_from_slice(bytes);
        let mut events = vec![];
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            events.extend(parse_line(line.trim_end_matches(['\r', '\n'])));
        }
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(format!("an event line is over {MAX_LINE_BYTES} bytes"));
        }
        Ok(events)
    }

    /// Events of a last line that had no newline.
    pub fn finish(&mut self) -> Vec<Event> {
        let rest = std::mem::take(&mut self.buf);
        parse_line(String::from_utf8_lossy(&rest).trim_end()).into_iter().collect()
    }
}

fn parse_line(line: &str) -> Vec<Event> {
    let Some(data) = line.strip_prefix("data:") else { return vec![] };
    let data = data.trim();
    if data == "[DONE]" {
        return vec![Event::Done];
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else { return vec![] };
    let mut out = vec![];
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| e.to_string());
        return vec![Event::Error(msg)];
    }
    let has_content = v.get("choices").and_then(Value::as_array).is_some_and(|choices| {
        choices.iter().any(|c| {
            let text = c.get("delta").and_then(|d| d.get("content")).or_else(|| c.get("text"));
            text.and_then(Value::as_str).is_some_and(|t| !t.is_empty())
        })
    });
    if has_content {
        out.push(Event::Content);
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push(Event::Usage { prompt: n("prompt_tokens"), completion: n("completion_tokens") });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_completion_chunks_usage_and_done_are_recognised_across_reads() {
        let mut p = Parser::default();
        let mut ev =
            p.feed(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"de").unwrap();
        assert!(ev.is_empty(), "a role-only chunk is no token and half a line waits: {ev:?}");
        ev.extend(p.feed(b"lta\":{\"content\":\"Hi\"}}]}\r\n\r\n").unwrap());
        ev.extend(p.feed(b"data: {\"choices\":[{\"text\":\" there\"}]}\n\n").unwrap());
        ev.extend(
            p.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]")
                .unwrap(),
        );
        ev.extend(p.finish());
        assert_eq!(ev, vec![Event::Content, Event::Content, Event::Usage { prompt: 7, completion: 2 }, Event::Done]);
    }

    #[test]
    fn errors_in_the_stream_and_oversized_lines_are_reported() {
        let mut p = Parser::default();
        let ev = p.feed(b"data: {\"error\":{\"message\":\"overloaded\"}}\n").unwrap();
        assert_eq!(ev, vec![Event::Error("overloaded".into())]);
        let big = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(p.feed(&big).is_err());
    }
}
