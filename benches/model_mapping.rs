//! What mapping a model's stream to ChatKit events costs, per 1,000 text deltas: the same answer recorded
//! as a Responses API stream and as a Chat Completions stream, each event parsed from its JSON text and
//! translated as a turn does (`responder::map_recorded_stream`), rounds alternating between the two.
//!
//! Run with `cargo bench --bench model_mapping`; it prints the median and p99 time of one 1,000-delta answer
//! for each API, and the Responses mapping's overhead over the Chat Completions one.

use std::time::{Duration, Instant};

use chatkit_gateway::config::Config;
use chatkit_gateway::responder::map_recorded_stream;
use serde_json::json;

const DELTAS: usize = 1_000;
const ROUNDS: usize = 400;

/// A Responses stream of one message whose text arrives in `DELTAS` deltas, as OpenAI sends it.
fn responses_stream() -> Vec<String> {
    let message =
        json!({"type": "message", "id": "msg_b", "status": "in_progress", "role": "assistant", "content": []});
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    let text: String = (0..DELTAS).map(|i| format!("w{i:03} ")).collect();
    let done_part = json!({"type": "output_text", "text": text, "annotations": []});
    let mut done = message.clone();
    done["status"] = json!("completed");
    done["content"] = json!([done_part]);
    let response = |status: &str, output| json!({"id": "resp_b", "object": "response", "created_at": 1, "status": status, "model": "m", "output": output});
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": message}),
        json!({"type": "response.content_part.added", "item_id": "msg_b", "output_index": 0, "content_index": 0, "part": part}),
    ];
    for i in 0..DELTAS {
        events.push(json!({"type": "response.output_text.delta", "item_id": "msg_b", "output_index": 0,
            "content_index": 0, "delta": format!("w{i:03} "), "logprobs": []}));
    }
    events.extend([
        json!({"type": "response.output_text.done", "item_id": "msg_b", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        json!({"type": "response.content_part.done", "item_id": "msg_b", "output_index": 0, "content_index": 0, "part": done_part}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": done}),
        json!({"type": "response.completed", "response": response("completed", json!([done]))}),
    ]);
    events
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let mut e = e.clone();
            e["sequence_number"] = json!(n);
            e.to_string()
        })
        .collect()
}

/// The same answer as Chat Completions chunks.
fn chat_stream() -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string()
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    chunks.extend((0..DELTAS).map(|i| chunk(json!({"content": format!("w{i:03} ")}), None)));
    chunks.push(chunk(json!({}), Some("stop")));
    chunks
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut config = Config::for_tests("unused".into());
    config.model.name = Some("m".into());
    config.model.openai_base_url = "http://127.0.0.1:9/v1".into();
    let settings = config.model.settings().expect("valid model settings").expect("a model responder");
    let streams = [("responses", true, responses_stream()), ("chat", false, chat_stream())];
    let mut times: [Vec<Duration>; 2] = [Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS)];
    // A warm-up round each, then rounds alternating, so that both see the same machine.
    for (_, responses, events) in &streams {
        map_recorded_stream(&settings, *responses, events).expect("the stream maps");
    }
    for _ in 0..ROUNDS {
        for (index, (_, responses, events)) in streams.iter().enumerate() {
            let started = Instant::now();
            let made = map_recorded_stream(&settings, *responses, events).expect("the stream maps");
            times[index].push(started.elapsed());
            assert!(made > DELTAS, "every delta became an event");
        }
    }
    println!("Mapping one answer of {DELTAS} text deltas to ChatKit events ({ROUNDS} rounds, alternating):");
    let mut medians = Vec::new();
    for (index, (name, _, _)) in streams.iter().enumerate() {
        times[index].sort();
        let (p50, p99) = (percentile(&times[index], 0.5), percentile(&times[index], 0.99));
        medians.push(p50);
        println!("  {name:<9} p50 {:>8.1} µs   p99 {:>8.1} µs", p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6);
    }
    let overhead = medians[0].as_secs_f64() - medians[1].as_secs_f64();
    println!("  Responses over Chat Completions: {:+.1} µs per {DELTAS} deltas (p50)", overhead * 1e6);
}
