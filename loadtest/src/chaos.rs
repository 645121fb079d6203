//! The store check of the chaos run (`--check-store`): after a mixed run during which replicas were killed, paused
//! and Redis restarted, every thread is read back from the replicas' PostgreSQL database and held against the
//! writers' books and what each viewer received.
//!
//! A turn counts as completed when its client read its stream to the end with an answer and no error; refused when
//! the stream ended with an `error` event that allows a retry (such as the one a replica whose thread was taken over
//! sends); failed otherwise (a broken connection, a timeout, another error). The check holds when:
//!
//! - every completed turn's user message and answer are stored (else it is lost), and no turn's user message or
//!   answer is stored twice (else it is duplicated);
//! - in each thread every answer directly follows its own user message, and a user message follows an unanswered
//!   one only when that one's turn did not complete (a refused or failed turn may leave its user message alone, or a
//!   partial answer) (else the thread is interleaved);
//! - a completed turn is stored before every turn sent after its client saw it end (else it is out of order);
//! - no stored message carries a marker the books do not know (else it is unknown);
//! - every viewer received each completed turn's user message and answer, or an `event: resync` (or the end of its
//!   stream, as on a killed replica) after the turn was sent (else it missed it).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;
use sqlx::Connection as _;

use crate::mixed::{find_marker, Turn, MARKER_PREFIX};
use crate::multi::{Answer, Thread, ViewerEnd};
use crate::replicas::lock;

/// How many problems are described one by one.
const SAMPLES: usize = 10;

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoreCheck {
    pub attempted: u64,
    pub completed: u64,
    pub refused: u64,
    pub failed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub interleaved: u64,
    pub out_of_order: u64,
    pub unknown: u64,
    /// Viewers whose stream was read to the stop or ended early, and of those, the ones that ended early (a killed
    /// replica) and the ones that received a `resync`.
    pub viewers: u64,
    pub viewers_ended: u64,
    pub viewers_resynced: u64,
    /// Messages a viewer lacked with no `resync` or stream end after them, and the viewers that lacked any.
    pub viewer_misses: u64,
    pub viewers_missing: u64,
    /// The first problems, in words.
    pub samples: Vec<String>,
}

impl StoreCheck {
    /// Whether the run kept every promise: nothing lost, duplicated, interleaved, out of order, unknown or missed.
    pub fn passed(&self) -> bool {
        self.lost + self.duplicated + self.interleaved + self.out_of_order + self.unknown + self.viewer_misses == 0
    }

    fn problem(&mut self, text: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(text);
        }
    }

    /// The check as a Markdown table, with the first problems below it.
    pub fn table(&self) -> String {
        let mut out = String::from("\nStore check (PostgreSQL, read after the run):\n\n");
        out.push_str(
            "| turns attempted | completed | refused (retryable error) | failed otherwise | lost | duplicated | \
             interleaved | out of order | unknown items | viewers (ended / resynced) | viewer misses |\n",
        );
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({} / {}) | {} |",
            self.attempted,
            self.completed,
            self.refused,
            self.failed,
            self.lost,
            self.duplicated,
            self.interleaved,
            self.out_of_order,
            self.unknown,
            self.viewers,
            self.viewers_ended,
            self.viewers_resynced,
            self.viewer_misses
        );
        for sample in &self.samples {
            let _ = writeln!(out, "- {sample}");
        }
        let _ = writeln!(out, "\nStore check: {}", if self.passed() { "passed" } else { "FAILED" });
        out
    }

    /// The check's counts as JSON fields (`"check_lost":0,…`), to append to the run's JSON line.
    pub fn json_fields(&self) -> String {
        let fields = [
            ("attempted", self.attempted),
            ("completed", self.completed),
            ("refused", self.refused),
            ("failed", self.failed),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("interleaved", self.interleaved),
            ("out_of_order", self.out_of_order),
            ("unknown", self.unknown),
            ("viewers", self.viewers),
            ("viewers_ended", self.viewers_ended),
            ("viewers_resynced", self.viewers_resynced),
            ("viewer_misses", self.viewer_misses),
            ("viewers_missing", self.viewers_missing),
        ];
        let mut out = String::new();
        for (name, value) in fields {
            let _ = write!(out, "\"check_{name}\":{value},");
        }
        let _ = write!(out, "\"check_passed\":{}", self.passed());
        out
    }
}

/// One stored item, as far as the check reads it.
#[derive(Debug, Deserialize)]
pub struct StoredItem {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// A message's content parts. Other items hold other content, e.g. the text of the `sdk_hidden_context`
    /// note a cancelled turn leaves: the check reads no parts from those.
    #[serde(default, deserialize_with = "parts_if_any")]
    pub content: Vec<StoredPart>,
}

/// The content parts of a stored item, or none when its `content` is not a list of them.
fn parts_if_any<'de, D: serde::Deserializer<'de>>(content: D) -> Result<Vec<StoredPart>, D::Error> {
    Ok(serde_json::Value::deserialize(content)
        .ok()
        .and_then(|value| serde_json::from_value(value).ok())
        .unwrap_or_default())
}

#[derive(Debug, Deserialize)]
pub struct StoredPart {
    #[serde(default)]
    pub text: Option<String>,
}

/// Reads every thread of the run from the database at `url` and checks it and the viewers' records.
pub async fn check(url: &str, threads: &[Thread<Vec<Turn>>], viewers: &[ViewerEnd]) -> Result<StoreCheck, String> {
    let mut connection =
        sqlx::PgConnection::connect(url).await.map_err(|e| format!("--check-store cannot connect: {e}"))?;
    let ids: Vec<String> = threads.iter().map(|thread| thread.id.clone()).collect();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT thread_id, data FROM items WHERE thread_id = ANY($1) ORDER BY thread_id, seq")
            .bind(&ids)
            .fetch_all(&mut connection)
            .await
            .map_err(|e| format!("--check-store cannot read the items: {e}"))?;
    let _ = connection.close().await;
    let mut stored: HashMap<String, Vec<StoredItem>> = HashMap::new();
    for (thread_id, data) in rows {
        let item =
            serde_json::from_str(&data).map_err(|e| format!("a stored item of {thread_id} is unreadable: {e}"))?;
        stored.entry(thread_id).or_default().push(item);
    }
    let mut result = StoreCheck::default();
    for (index, thread) in threads.iter().enumerate() {
        let turns = lock(&thread.book);
        check_thread(&mut result, index, &thread.id, &turns, stored.get(&thread.id).map_or(&[], Vec::as_slice));
    }
    for viewer in viewers {
        check_viewer(&mut result, viewer, &lock(&threads[viewer.thread].book));
    }
    Ok(result)
}

/// The turn of thread `index` whose marker `item` carries, if the books know it.
fn turn_of(item: &StoredItem, index: usize, turns: &[Turn]) -> Option<usize> {
    let mark = item.content.iter().filter_map(|part| part.text.as_deref()).find_map(find_marker)?;
    (mark.thread == index && turns.get(mark.turn).is_some_and(|turn| turn.sent.sent_us == mark.sent_us))
        .then_some(mark.turn)
}

/// Checks one thread's stored items, in store order, against its book.
pub fn check_thread(result: &mut StoreCheck, index: usize, id: &str, turns: &[Turn], items: &[StoredItem]) {
    let completed = |slot: usize| turns[slot].sent.answer == Answer::Ok;
    let mut users = vec![0u32; turns.len()];
    let mut answers = vec![0u32; turns.len()];
    // The turns whose user message is stored, in store order.
    let mut order = Vec::new();
    // The turn whose user message came last and has no answer yet.
    let mut open: Option<usize> = None;
    for item in items {
        // The message each thread was created with, and its answer, are the setup's, not the writers'.
        if !item.content.iter().filter_map(|part| part.text.as_deref()).any(|text| text.contains(MARKER_PREFIX)) {
            continue;
        }
        match item.kind.as_str() {
            "user_message" => {
                let Some(slot) = turn_of(item, index, turns) else {
                    result.unknown += 1;
                    result.problem(format!("{id}: user message {} matches no turn sent", item.id));
                    continue;
                };
                users[slot] += 1;
                if let Some(previous) = open.filter(|&previous| completed(previous)) {
                    result.interleaved += 1;
                    result.problem(format!(
                        "{id}: turn {slot}'s user message comes between completed turn {previous}'s and its answer"
                    ));
                }
                open = Some(slot);
                order.push(slot);
            }
            "assistant_message" => match turn_of(item, index, turns) {
                Some(slot) => {
                    answers[slot] += 1;
                    if open != Some(slot) {
                        result.interleaved += 1;
                        result.problem(format!(
                            "{id}: turn {slot}'s answer {} does not follow its user message",
                            item.id
                        ));
                    }
                    open = None;
                }
                // A partial answer, cut off when its turn was cancelled: only a turn that did not complete has one.
                None if open.is_some_and(|slot| !completed(slot)) => open = None,
                None => {
                    result.unknown += 1;
                    result.problem(format!("{id}: answer {} matches no turn sent, or not the one before it", item.id));
                }
            },
            // Hidden context notes and other items the echo responder does not make for these turns.
            _ => {}
        }
    }
    for (slot, turn) in turns.iter().enumerate() {
        result.attempted += 1;
        match turn.sent.answer {
            Answer::Ok => result.completed += 1,
            _ if turn.retryable => result.refused += 1,
            _ => result.failed += 1,
        }
        if users[slot] > 1 || answers[slot] > 1 {
            result.duplicated += 1;
            result.problem(format!(
                "{id}: turn {slot} is stored {} times, its answer {} times",
                users[slot], answers[slot]
            ));
        }
        if completed(slot) && (users[slot] == 0 || answers[slot] == 0) {
            result.lost += 1;
            result.problem(format!(
                "{id}: completed turn {slot} is missing from the store ({} user messages, {} answers)",
                users[slot], answers[slot]
            ));
        }
    }
    // A turn sent after another completed must come after it: walk the store order backwards, keeping the earliest
    // end of a completed turn seen so far (which is stored later than the turn at hand).
    let mut earliest_end_after = u64::MAX;
    for &slot in order.iter().rev() {
        if earliest_end_after < turns[slot].sent.sent_us {
            result.out_of_order += 1;
            result.problem(format!("{id}: turn {slot} is stored before a turn that had completed before it was sent"));
        }
        if completed(slot) {
            earliest_end_after = earliest_end_after.min(turns[slot].ended_us);
        }
    }
}

/// Checks what one viewer received against its thread's book: each completed turn's user message and answer, unless
/// a `resync` or the end of its stream came after the turn was sent.
pub fn check_viewer(result: &mut StoreCheck, viewer: &ViewerEnd, turns: &[Turn]) {
    result.viewers += 1;
    match viewer.last_cut_us {
        u64::MAX => result.viewers_ended += 1,
        0 => {}
        _ => result.viewers_resynced += 1,
    }
    let mut missed = 0;
    for (slot, turn) in turns.iter().enumerate() {
        if turn.sent.answer != Answer::Ok || viewer.last_cut_us >= turn.sent.sent_us {
            continue;
        }
        let seen = viewer.seen.get(slot).copied().unwrap_or(0);
        missed += u64::from(seen & 1 == 0) + u64::from(seen & 2 == 0);
    }
    if missed > 0 {
        result.viewer_misses += missed;
        result.viewers_missing += 1;
        result.problem(format!(
            "a viewer of thread {} on replica {} missed {missed} messages with no resync after them",
            viewer.thread,
            viewer.replica + 1
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixed::marker;

    /// Thread 0's book: turn 0 completed (sent at 10, ended at 20), turn 1 refused, turn 2 completed (sent at 30).
    fn book() -> Vec<Turn> {
        vec![
            Turn::answered(0, 10, Answer::Ok, 20, false),
            Turn::answered(1, 12, Answer::Failed, 25, true),
            Turn::answered(2, 30, Answer::Ok, 40, false),
        ]
    }

    fn user(turn: usize, sent_us: u64) -> StoredItem {
        let text = marker(0, turn, sent_us);
        StoredItem {
            id: format!("u{turn}"),
            kind: "user_message".into(),
            content: vec![StoredPart { text: Some(text) }],
        }
    }

    fn answer(turn: usize, sent_us: u64) -> StoredItem {
        let text = format!("echo: {}", marker(0, turn, sent_us));
        StoredItem {
            id: format!("a{turn}"),
            kind: "assistant_message".into(),
            content: vec![StoredPart { text: Some(text) }],
        }
    }

    fn checked(items: &[StoredItem]) -> StoreCheck {
        let mut result = StoreCheck::default();
        check_thread(&mut result, 0, "thr_0", &book(), items);
        result
    }

    #[test]
    fn a_cancelled_turns_hidden_note_is_read_and_passed_over() {
        let note = r#"{"id":"h","thread_id":"thr_0","created_at":"2026-12-07T00:00:00","type":"sdk_hidden_context","content":"The user cancelled the stream. Stop responding to the prior request."}"#;
        let note: StoredItem = serde_json::from_str(note).expect("a hidden context item reads");
        assert!(note.content.is_empty());
        let result = checked(&[user(0, 10), answer(0, 10), note, user(1, 12), user(2, 30), answer(2, 30)]);
        assert!(result.passed(), "{result:?}");
    }

    #[test]
    fn a_refused_turn_may_leave_its_user_message_alone() {
        let setup = StoredItem {
            id: "s".into(),
            kind: "user_message".into(),
            content: vec![StoredPart { text: Some("hi".into()) }],
        };
        let result = checked(&[setup, user(0, 10), answer(0, 10), user(1, 12), user(2, 30), answer(2, 30)]);
        assert_eq!((result.attempted, result.completed, result.refused, result.failed), (3, 2, 1, 0));
        assert!(result.passed(), "{result:?}");
    }

    #[test]
    fn counts_lost_duplicated_interleaved_and_reordered_turns() {
        let lost = checked(&[user(0, 10), answer(0, 10), user(2, 30)]);
        assert_eq!(lost.lost, 1);
        let duplicated = checked(&[user(0, 10), answer(0, 10), user(0, 10), answer(0, 10), user(2, 30), answer(2, 30)]);
        assert_eq!(duplicated.duplicated, 1);
        let interleaved = checked(&[user(0, 10), user(2, 30), answer(0, 10), answer(2, 30)]);
        assert!(interleaved.interleaved >= 2);
        let reordered = checked(&[user(2, 30), answer(2, 30), user(0, 10), answer(0, 10)]);
        assert_eq!(reordered.out_of_order, 1);
        let unknown = checked(&[user(0, 11), answer(0, 10)]);
        assert!(unknown.unknown >= 1);
        assert!(![lost, duplicated, interleaved, reordered, unknown].iter().any(StoreCheck::passed));
    }

    #[test]
    fn a_viewer_may_miss_only_what_a_resync_or_its_stream_end_came_after() {
        let turns = book();
        let viewer = |seen: Vec<u8>, last_cut_us| ViewerEnd { thread: 0, replica: 0, seen, last_cut_us };
        let mut result = StoreCheck::default();
        check_viewer(&mut result, &viewer(vec![3, 0, 3], 0), &turns);
        check_viewer(&mut result, &viewer(vec![3], 35), &turns);
        check_viewer(&mut result, &viewer(vec![], u64::MAX), &turns);
        assert_eq!((result.viewers, result.viewers_resynced, result.viewers_ended, result.viewer_misses), (3, 1, 1, 0));
        check_viewer(&mut result, &viewer(vec![1, 0, 3], 0), &turns);
        check_viewer(&mut result, &viewer(vec![3], 20), &turns);
        assert_eq!((result.viewer_misses, result.viewers_missing), (3, 2));
    }
}
