// The chat page's composer: sending a message, and running a turn (a turn
// stream on `POST /chatkit`) for it or for a widget's action. A turn stream
// of this tab adds only what is idempotent and what no viewer sees (see
// `applyThreadEvent`): the open thread's viewer stream carries the rest.
// While it streams, turn-controls.js offers Stop and shows its progress;
// once it ends, interactive-items.js answers a client tool call it ended with.

import { identity, post, textInput } from "./api.js";
import { attachmentProblem, hasAttachments, restoreAttachments, takeAttachments } from "./attachments.js";
import { upsertHistory } from "./history.js";
import { clearNotice, creating, current, setCreating, showNotice, ui } from "./state.js";
import { applyThreadEvent, openThread, renderStatus } from "./thread.js";
import { answerPendingToolCall } from "./interactive-items.js";
import { endTurn, observeTurn, startTurn } from "./turn-controls.js";

const live = window.ChatKitLive;

/**
 * Runs a streaming operation and applies its events to `state`, the thread
 * it acts on (null for `threads.create`, whose new thread becomes the open
 * one if the user is still on the new chat).
 */
export async function runTurn(type, params, state) {
  let target = state;
  const turn = startTurn(state);
  try {
    const response = await post(type, params, turn.signal);
    await live.readStream(response, (message) => {
      if (message.event !== "message") {
        return;
      }
      const event = JSON.parse(message.data);
      if (event.type === "thread.created") {
        upsertHistory(event.thread, true);
        setCreating(false);
        if (current === null) {
          target = openThread(event.thread.id, { url: "replace", thread: event.thread });
          renderStatus();
        }
        return;
      }
      observeTurn(turn, event, target);
      if (target) {
        applyThreadEvent(target, event, true);
      }
    });
  } catch (error) {
    // The user's own Stop aborts the request: no error to show.
    if (!turn.stopped) {
      throw error;
    }
  } finally {
    endTurn(turn);
  }
  await answerPendingToolCall(turn, target);
}

/**
 * Sends the composer's text and attachments to the open thread, or creates a
 * thread with them; a failed send gives them back. Attachments still
 * uploading (or failed) hold the message back, with a notice saying why.
 */
export async function send() {
  const text = ui.input.value.trim();
  if ((!text && !hasAttachments()) || ui.input.disabled || creating || !identity) {
    return;
  }
  const state = current;
  if (state && (state.gone || !state.thread)) {
    return;
  }
  const problem = attachmentProblem();
  if (problem) {
    showNotice(problem, "info");
    return;
  }
  const files = takeAttachments();
  ui.input.value = "";
  clearNotice();
  try {
    if (state) {
      await runTurn("threads.add_user_message", { thread_id: state.id, input: textInput(text, files.ids) }, state);
    } else {
      setCreating(true);
      renderStatus();
      await runTurn("threads.create", { input: textInput(text, files.ids) }, null);
    }
  } catch (error) {
    showNotice(error.message);
    if (!ui.input.value) {
      ui.input.value = text;
    }
    restoreAttachments(files);
  } finally {
    if (creating) {
      setCreating(false);
      renderStatus();
    }
  }
}
