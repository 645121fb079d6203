// The chat page's actions on the open thread from its header: rename (an
// inline form in place of the title) and delete (after a confirmation).

import { api } from "./api.js";
import { removeHistory } from "./history.js";
import { current, showNotice, titleOf, ui } from "./state.js";
import { newChat, renderThread, setThread } from "./thread.js";

export function startRename() {
  if (!current || !current.thread) {
    return;
  }
  ui.renameInput.value = titleOf(current.thread);
  ui.renameForm.hidden = false;
  ui.title.hidden = true;
  ui.rename.hidden = true;
  ui.renameInput.focus();
  ui.renameInput.select();
}

export function endRename() {
  ui.renameForm.hidden = true;
  ui.title.hidden = false;
  renderThread();
}

/** Saves the new title; an empty one changes nothing. */
export async function saveRename() {
  const state = current;
  const title = ui.renameInput.value.trim();
  if (!state || !title) {
    endRename();
    return;
  }
  try {
    const thread = await api("threads.update", { thread_id: state.id, title });
    setThread(state, thread);
  } catch (error) {
    showNotice(`Could not rename the thread: ${error.message}`);
  }
  endRename();
}

/** Asks whether to delete the open thread, in place of the header's buttons. */
export function askDelete() {
  ui.remove.hidden = true;
  ui.rename.hidden = true;
  ui.removeConfirm.hidden = false;
}

export function cancelDelete() {
  ui.removeConfirm.hidden = true;
  renderThread();
}

/** Deletes the open thread and, if it is still open, shows a new chat. */
export async function deleteThread() {
  const state = current;
  ui.removeConfirm.hidden = true;
  if (!state) {
    return;
  }
  try {
    await api("threads.delete", { thread_id: state.id });
    removeHistory(state.id);
    if (current === state) {
      newChat({ url: "replace" });
    }
  } catch (error) {
    showNotice(`Could not delete the thread: ${error.message}`);
    renderThread();
  }
}
