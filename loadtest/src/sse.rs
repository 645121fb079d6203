//! Incremental `text/event-stream` parsing, and the check that a ChatKit stream did its job.

use std::borrow::Cow;

use serde::Deserialize;

/// Splits a byte stream that arrives in arbitrary chunks into the `data` of each event.
///
/// It follows the HTML server-sent events rules that matter here: lines end in
/// `\n`, `\r\n` or `\r`; a blank line ends an event; several `data:` lines join
/// with `\n`; the `event` field names an event; comments and other fields are
/// skipped; an event that is not ended by a blank line before the stream closes is dropped.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The `data` collected for the event being read.
    data: Vec<u8>,
    /// Whether the event being read has any `data` line, since an empty one still counts.
    has_data: bool,
    /// The `event` field of the event being read; empty for an unnamed (`message`) event.
    name: Vec<u8>,
    /// Whether the last byte seen was `\r`, so a `\n` right after it ends no extra line.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk and calls `on_event` with the data of every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        self.feed_named(chunk, |_, data| on_event(data));
    }

    /// Like `feed`, but also passes each event's name (its `event` field, empty when it has none).
    pub fn feed_named(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8], &[u8])) {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (piece, tail) = rest.split_at(end);
            let terminator = tail[0];
            rest = &tail[1..];
            if terminator == b'\r' {
                match rest {
                    [b'\n', after @ ..] => rest = after,
                    [] => self.after_cr = true,
                    _ => {}
                }
            }
            // Most lines arrive whole within one chunk, so the copy into `line` is avoided then.
            if self.line.is_empty() {
                self.end_line(piece, &mut on_event);
            } else {
                self.line.extend_from_slice(piece);
                let line = std::mem::take(&mut self.line);
                self.end_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn end_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        if line.is_empty() {
            if self.has_data {
                on_event(&self.name, &self.data);
            }
            self.data.clear();
            self.name.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        } else if field == b"event" {
            self.name.clear();
            self.name.extend_from_slice(value);
        }
    }

    /// Whether bytes of an unfinished event are still buffered, which at the end of
    /// the stream means the server stopped in the middle of one.
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }
}

/// What the load tester needs from each event; serde skips everything else.
///
/// The strings are `Cow` so they borrow from the event in the usual case and
/// still parse when a server escapes characters in them.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    thread: Option<IdOnly>,
    #[serde(default, borrow)]
    item: Option<KindOnly<'a>>,
    /// Set on `error` events: whether the user may simply send again.
    #[serde(default)]
    allow_retry: bool,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct KindOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// Collects the facts about one response stream that decide whether it succeeded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamCheck {
    pub events: u32,
    pub stream_options: bool,
    pub assistant_done: bool,
    pub error_event: bool,
    /// Whether every `error` event allowed a retry (such as a write refused because another replica took the thread
    /// over), so that the turn is refused rather than failed.
    pub retryable_error: bool,
    /// The id from a `thread.created` event, if one came.
    pub thread_id: Option<String>,
    /// Events whose data was not a JSON object with a string `type`.
    pub malformed: u32,
}

impl StreamCheck {
    /// Records one event's data.
    pub fn observe(&mut self, data: &[u8]) {
        self.events += 1;
        let head: EventHead<'_> = match serde_json::from_slice(data) {
            Ok(head) => head,
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        match (&*head.kind, head.thread, head.item) {
            ("stream_options", ..) => self.stream_options = true,
            ("error", ..) => {
                self.retryable_error = head.allow_retry && (self.retryable_error || !self.error_event);
                self.error_event = true;
            }
            ("thread.item.done", _, Some(item)) if item.kind == "assistant_message" => self.assistant_done = true,
            ("thread.created", Some(thread), _) => self.thread_id = Some(thread.id),
            _ => {}
        }
    }

    /// Why a turn stream failed, or `None` when it has an answer, stream options and no error.
    pub fn turn_problem(&self) -> Option<&'static str> {
        if self.error_event {
            Some("stream has an error event")
        } else if self.malformed > 0 {
            Some("stream has an event that is not a JSON object with a type")
        } else if !self.stream_options {
            Some("stream has no stream_options event")
        } else if !self.assistant_done {
            Some("stream has no thread.item.done for an assistant_message")
        } else {
            None
        }
    }

    /// Why a `threads.create` stream failed: the turn rules plus a `thread.created` event.
    pub fn create_problem(&self) -> Option<&'static str> {
        self.turn_problem().or(if self.thread_id.is_none() { Some("stream has no thread.created event") } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |data| out.push(String::from_utf8(data.to_vec()).unwrap()));
        }
        out
    }

    #[test]
    fn splits_events_on_blank_lines() {
        let out = events_of(&[b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"]);
        assert_eq!(out, ["{\"a\":1}", "{\"b\":2}"]);
    }

    #[test]
    fn joins_events_split_across_chunks_at_any_byte() {
        let stream = b"data: {\"type\":\"x\"}\r\n\r\n: keep-alive\n\nevent: message\ndata:first\ndata: second\n\n";
        let whole = events_of(&[stream]);
        assert_eq!(whole, ["{\"type\":\"x\"}", "first\nsecond"]);
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(events_of(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_of(&bytes), whole);
    }

    #[test]
    fn names_events_by_their_event_field() {
        let stream = b"id: 7\ndata: {\"a\":1}\n\n: heartbeat\n\nevent: resync\ndata: {\"reason\":\"lagged\"}\n\nevent: x\n\ndata: b\n\n";
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed_named(stream, |name, data| {
            out.push((String::from_utf8(name.to_vec()).unwrap(), String::from_utf8(data.to_vec()).unwrap()))
        });
        let want = [("", "{\"a\":1}"), ("resync", "{\"reason\":\"lagged\"}"), ("", "b")];
        assert_eq!(out, want.map(|(name, data)| (name.to_string(), data.to_string())));
    }

    #[test]
    fn handles_bare_carriage_returns_and_empty_data() {
        assert_eq!(events_of(&[b"data: a\r\rdata\r\r"]), ["a", ""]);
        assert_eq!(events_of(&[b"data: a\r", b"\n\r", b"\n"]), ["a"]);
    }

    #[test]
    fn drops_an_unfinished_event_and_reports_it() {
        let mut parser = SseParser::new();
        let mut count = 0;
        parser.feed(b"data: {\"a\":1}\n\ndata: {\"b\"", |_| count += 1);
        assert_eq!(count, 1);
        assert!(parser.has_partial_event());
        let mut done = SseParser::new();
        done.feed(b": comment\n\n", |_| count += 1);
        assert!(!done.has_partial_event());
    }

    fn check_of(stream: &str) -> StreamCheck {
        let mut parser = SseParser::new();
        let mut check = StreamCheck::default();
        parser.feed(stream.as_bytes(), |data| check.observe(data));
        check
    }

    const GOOD_CREATE: &str = concat!(
        "data: {\"type\":\"thread.created\",\"thread\":{\"id\":\"thr_1\",\"created_at\":\"2025-01-01T00:00:00Z\",",
        "\"items\":{\"data\":[],\"has_more\":false}}}\n\n",
        "data: {\"type\":\"thread.item.done\",\"item\":{\"type\":\"user_message\",\"id\":\"msg_1\"}}\n\n",
        "data: {\"type\":\"stream_options\",\"stream_options\":{\"allow_cancel\":true}}\n\n",
        "data: {\"type\":\"thread.item.added\",\"item\":{\"type\":\"assistant_message\",\"id\":\"msg_2\",\"content\":[]}}\n\n",
        "data: {\"type\":\"thread.item.updated\",\"item_id\":\"msg_2\",\"update\":{\"type\":\"assistant_message.content_part.text_delta\",\"content_index\":0,\"delta\":\"hi\"}}\n\n",
        "data: {\"type\":\"thread.item.done\",\"item\":{\"id\":\"msg_2\",\"type\":\"assistant_message\",\"content\":[{\"type\":\"output_text\",\"text\":\"hi\",\"annotations\":[]}]}}\n\n",
    );

    #[test]
    fn accepts_a_complete_create_stream() {
        let check = check_of(GOOD_CREATE);
        assert_eq!(check.events, 6);
        assert_eq!(check.thread_id.as_deref(), Some("thr_1"));
        assert_eq!(check.create_problem(), None);
        assert_eq!(check.turn_problem(), None);
    }

    #[test]
    fn names_what_a_bad_stream_lacks() {
        let no_thread = GOOD_CREATE.split_once("\n\n").unwrap().1;
        assert_eq!(check_of(no_thread).turn_problem(), None);
        assert_eq!(check_of(no_thread).create_problem(), Some("stream has no thread.created event"));

        let no_options: String =
            GOOD_CREATE.split_inclusive("\n\n").filter(|e| !e.contains("stream_options")).collect();
        assert_eq!(check_of(&no_options).turn_problem(), Some("stream has no stream_options event"));

        let no_answer = GOOD_CREATE.replace("\"id\":\"msg_2\",\"type\":\"assistant_message\"", "\"type\":\"widget\"");
        assert_eq!(
            check_of(&no_answer).turn_problem(),
            Some("stream has no thread.item.done for an assistant_message")
        );

        let with_error = format!("{GOOD_CREATE}data: {{\"type\":\"error\",\"code\":\"stream.error\"}}\n\n");
        assert_eq!(check_of(&with_error).turn_problem(), Some("stream has an error event"));
        assert!(!check_of(&with_error).retryable_error);
        let retryable =
            format!("{GOOD_CREATE}data: {{\"type\":\"error\",\"code\":\"custom\",\"allow_retry\":true}}\n\n");
        assert!(check_of(&retryable).retryable_error);

        let garbage = format!("{GOOD_CREATE}data: not json\n\n");
        assert!(check_of(&garbage).turn_problem().unwrap().contains("not a JSON object"));
    }
}
