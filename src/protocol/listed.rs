//! Threads in a listing, written as wire JSON straight from the JSON their
//! metadata is stored as, so that listing neither parses a `ThreadMetadata`
//! (with its metadata map) nor serializes a `Thread` for each of them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{Page, ThreadMetadata, ThreadStatus, Timestamp};

/// One thread of a listing: its id (the listing's cursor) and the JSON a
/// client receives for it, byte for byte what `ThreadMetadata::to_wire` with
/// no items would serialize to.
#[derive(Clone, Debug)]
pub struct ListedThread {
    pub id: String,
    json: Box<RawValue>,
}

/// The fields of a stored `ThreadMetadata` that a listing shows, borrowed as
/// the JSON they are stored as; `metadata` and fields a later version may
/// add are skipped unread.
#[derive(Deserialize)]
struct StoredFields<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    title: Option<&'a RawValue>,
    /// Read as a timestamp and written again, since records of other
    /// writers may spell it otherwise than a client is sent it.
    created_at: Timestamp,
    /// Read and written again, for the same reason, and because it is small.
    #[serde(default)]
    status: Option<ThreadStatus>,
    #[serde(borrow, default)]
    allowed_image_domains: Option<&'a RawValue>,
}

/// A field's stored JSON, unless it is absent or `null` (which mean the same).
fn present(value: Option<&RawValue>) -> Option<&str> {
    value.map(RawValue::get).filter(|text| *text != "null")
}

/// What a thread's `items` are in a listing: an empty page.
const NO_ITEMS: &str = r#""metadata":{},"items":{"data":[],"has_more":false}}"#;

impl ListedThread {
    /// Reads the JSON of a stored `ThreadMetadata`. Stored records were
    /// written by `ThreadMetadata`'s own serializer, so their values are
    /// already in wire form and are copied as they are (the timestamp aside);
    /// a field stored as `null` is what an absent one means.
    pub fn from_stored(stored: &str) -> Result<ListedThread, serde_json::Error> {
        let fields: StoredFields = serde_json::from_str(stored)?;
        let mut json = String::with_capacity(stored.len() + NO_ITEMS.len());
        json.push_str("{\"id\":");
        json.push_str(&serde_json::to_string(&fields.id)?);
        if let Some(title) = present(fields.title) {
            json.push_str(",\"title\":");
            json.push_str(title);
        }
        json.push_str(",\"created_at\":");
        json.push_str(&serde_json::to_string(&fields.created_at)?);
        json.push_str(",\"status\":");
        json.push_str(&serde_json::to_string(&fields.status.unwrap_or_default())?);
        if let Some(domains) = present(fields.allowed_image_domains) {
            json.push_str(",\"allowed_image_domains\":");
            json.push_str(domains);
        }
        json.push(',');
        json.push_str(NO_ITEMS);
        Ok(ListedThread { id: fields.id.into_owned(), json: RawValue::from_string(json)? })
    }

    /// The same, from a thread in hand (for stores that keep no JSON).
    pub fn from_metadata(thread: &ThreadMetadata) -> Result<ListedThread, serde_json::Error> {
        let json = serde_json::value::to_raw_value(&thread.to_wire(Page::default()))?;
        Ok(ListedThread { id: thread.id.clone(), json })
    }

    pub fn json(&self) -> &str {
        self.json.get()
    }
}

impl Serialize for ListedThread {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What the typed path (parse the record, `to_wire`, serialize) gives.
    fn typed(stored: &str) -> String {
        let thread: ThreadMetadata = serde_json::from_str(stored).expect("a stored thread");
        serde_json::to_string(&thread.to_wire(Page::default())).expect("serializable")
    }

    #[test]
    fn listed_json_is_byte_for_byte_what_the_typed_path_writes() {
        let mut full = ThreadMetadata::new("thr_1".into());
        full.title = Some("Quote \" backslash \\ tab \t é 漢字 \u{1F600}".into());
        full.status = crate::protocol::ThreadStatus::Locked { reason: Some("held \"here\"".into()) };
        full.allowed_image_domains = Some(vec!["a.example".into(), "b.example".into()]);
        full.metadata.insert("secret".into(), json!({"nested": [1, 2, {"deep": "x"}]}));
        let bare = ThreadMetadata::new("thr_\u{e9}2".into());
        for thread in [full, bare] {
            let stored = serde_json::to_string(&thread).unwrap();
            let listed = ListedThread::from_stored(&stored).unwrap();
            assert_eq!(listed.json(), typed(&stored), "from {stored}");
            assert_eq!(listed.id, thread.id);
            assert_eq!(listed.json(), ListedThread::from_metadata(&thread).unwrap().json());
        }
    }

    #[test]
    fn absent_and_null_fields_read_as_the_typed_defaults() {
        let stored = r#"{"id":"thr_3","created_at":"2026-12-06T10:00:00.000000Z","title":null,
            "allowed_image_domains":null,"extra":{"from":"a later version"}}"#;
        let locked = r#"{"id":"thr_4","created_at":"2026-12-06T10:00:00","status":{"reason":null,"type":"locked"}}"#;
        assert_eq!(ListedThread::from_stored(locked).unwrap().json(), typed(locked));
        let listed = ListedThread::from_stored(stored).unwrap();
        assert_eq!(listed.json(), typed(stored));
        assert!(!listed.json().contains("metadata\":{\"") && !listed.json().contains("later"), "{}", listed.json());
    }

    #[test]
    fn a_record_that_is_not_a_thread_is_an_error() {
        for broken in ["{}", "[]", r#"{"id":"thr_4"}"#, "not json", r#"{"id":5,"created_at":"x"}"#] {
            assert!(ListedThread::from_stored(broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn a_page_of_listed_threads_serializes_each_as_its_json() {
        let stored = serde_json::to_string(&ThreadMetadata::new("thr_5".into())).unwrap();
        let page = Page { data: vec![ListedThread::from_stored(&stored).unwrap()], has_more: true, after: None };
        let text = serde_json::to_string(&page).unwrap();
        assert_eq!(text, format!(r#"{{"data":[{}],"has_more":true}}"#, typed(&stored)));
    }
}
