// The chat page's attachments in the composer: ChatKit.js's two-phase upload
// of the files the Attach button's picker chooses, dropped on the composer or
// pasted into the message box, each with a chip (attachment-chips.js draws
// it) showing its progress and preview, with Retry and Remove.
//
// Each file is registered with `attachments.create` (`{name, size,
// mime_type}`), which answers where to send the bytes (`upload_descriptor`)
// and, for an image, a `preview_url`. The bytes go there with XMLHttpRequest,
// since fetch reports no upload progress. Upload and preview URLs are
// capability URLs: they carry no identity header. The composer sends the ids
// of finished uploads with the message (`takeAttachments`), and refuses to
// send while one is under way or failed (`attachmentProblem`).

import { api } from "./api.js";
import { chipFor, reachable, showThumb, updateChip } from "./attachment-chips.js";
import { clearNotice, showNotice, ui } from "./state.js";

const $ = (id) => document.getElementById(id);
const tray = $("attachments");
const picker = $("attach-input");
const attachButton = $("attach");
const announcer = $("attach-status");

/**
 * Images larger than this get no local preview, as a `data:` URL of them
 * would be huge: the server's preview follows the upload.
 */
const LOCAL_PREVIEW_LIMIT = 8 * 1024 * 1024;

/**
 * The composer's attachments in the order added. Each entry holds the file,
 * the server's attachment once registered, its `state` ("creating",
 * "uploading", "done" or "failed"), the upload's `progress` (0 to 100), the
 * reason of a failure, the running upload and its chip.
 */
let entries = [];

/** The notice `attachmentProblem` last gave the composer to show, or null. */
let heldNotice = null;

/** Says `text` through the composer's status region, which screen readers announce. */
function announce(text) {
  announcer.textContent = text;
}

// ---------------------------------------------------------------------------
// Adding, uploading, retrying and removing.
// ---------------------------------------------------------------------------

/** Adds files to the composer and starts their uploads (not while the composer is disabled). */
export function addFiles(files) {
  if (ui.input.disabled) {
    return;
  }
  for (const file of files) {
    const entry = {
      file,
      name: file.name || "pasted file",
      // A file the browser cannot type goes as bytes; the upload's part then says the same.
      mimeType: file.type || "application/octet-stream",
      attachment: null,
      state: "creating",
      progress: 0,
      error: "",
      xhr: null,
      removed: false,
      chip: null,
    };
    entries.push(entry);
    entry.chip = chipFor(entry, { retry, remove });
    tray.append(entry.chip.root);
    readPreview(entry);
    start(entry);
  }
  tray.hidden = entries.length === 0;
}

/** Shows an image's own bytes in its chip at once, before the upload ends. */
function readPreview(entry) {
  if (!entry.mimeType.startsWith("image/") || entry.file.size > LOCAL_PREVIEW_LIMIT) {
    return;
  }
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    // A preview from the server may have come first: it stays.
    if (!entry.removed && !entry.chip.thumb.src) {
      showThumb(entry, reader.result);
    }
  });
  reader.readAsDataURL(entry.file);
}

/** Registers the file with `attachments.create`, then uploads it. */
async function start(entry) {
  entry.state = "creating";
  entry.progress = 0;
  entry.error = "";
  updateChip(entry);
  let attachment;
  try {
    const params = { name: entry.name, size: entry.file.size, mime_type: entry.mimeType };
    attachment = await api("attachments.create", params);
  } catch (error) {
    fail(entry, error.message);
    return;
  }
  if (entry.removed) {
    // Removed while it was being registered: the registration goes too.
    deleteQuietly(attachment.id);
    return;
  }
  entry.attachment = attachment;
  entry.chip.root.dataset.attachmentId = attachment.id;
  upload(entry);
}

/** Sends the bytes where the attachment's upload descriptor says, reporting progress. */
function upload(entry) {
  const descriptor = entry.attachment.upload_descriptor;
  if (!descriptor) {
    // Nothing to upload: the server took the bytes with the registration.
    finish(entry, entry.attachment);
    return;
  }
  entry.state = "uploading";
  updateChip(entry);
  announce(`Uploading ${entry.name}`);
  const xhr = new XMLHttpRequest();
  entry.xhr = xhr;
  xhr.open(descriptor.method || "POST", reachable(descriptor.url));
  for (const [name, value] of Object.entries(descriptor.headers || {})) {
    xhr.setRequestHeader(name, value);
  }
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable && event.total > 0) {
      // The last percent waits for the server's answer: the bytes are stored only then.
      entry.progress = Math.min(99, Math.floor((event.loaded / event.total) * 100));
      updateChip(entry);
    }
  });
  xhr.addEventListener("load", () => {
    entry.xhr = null;
    if (xhr.status >= 200 && xhr.status < 300) {
      finish(entry, parsed(xhr.responseText) || entry.attachment);
    } else {
      const body = parsed(xhr.responseText);
      fail(entry, (body && body.error && body.error.message) || `HTTP ${xhr.status}`);
    }
  });
  xhr.addEventListener("error", () => {
    entry.xhr = null;
    fail(entry, "the connection failed");
  });
  const form = new FormData();
  form.append("file", entry.file, entry.name);
  xhr.send(form);
}

function parsed(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch (_) {
    return null;
  }
}

/** The bytes are stored: the chip shows the server's preview, and the attachment can be sent. */
function finish(entry, attachment) {
  if (entry.removed) {
    return;
  }
  entry.attachment = Object.assign({}, entry.attachment, attachment.id ? attachment : {});
  entry.state = "done";
  entry.progress = 100;
  updateChip(entry);
  announce(`${entry.name} uploaded`);
  refreshHeldNotice();
  const preview = entry.attachment.preview_url;
  if (preview) {
    // Swapped in once it loads, so the chip never shows a broken image.
    const image = new Image();
    image.addEventListener("load", () => showThumb(entry, image.src));
    image.src = reachable(preview);
  }
}

function fail(entry, reason) {
  if (entry.removed) {
    return;
  }
  entry.state = "failed";
  entry.error = reason;
  updateChip(entry);
  announce(`Upload of ${entry.name} failed: ${reason}`);
  refreshHeldNotice();
}

/** Starts a failed attachment again: its registration goes (an upload URL works once) and a new one is made. */
function retry(entry) {
  if (entry.attachment) {
    deleteQuietly(entry.attachment.id);
    entry.attachment = null;
  }
  start(entry);
  entry.chip.remove.focus();
}

/** Takes an attachment out of the composer: the upload stops and the server forgets it. */
async function remove(entry) {
  const index = entries.indexOf(entry);
  entry.removed = true;
  if (entry.xhr) {
    entry.xhr.abort();
    entry.xhr = null;
  }
  entries = entries.filter((other) => other !== entry);
  entry.chip.root.remove();
  tray.hidden = entries.length === 0;
  // Focus stays in the tray when another chip is left, else returns to the Attach button.
  const next = entries[Math.min(index, entries.length - 1)];
  (next ? next.chip.remove : attachButton).focus();
  announce(`Removed ${entry.name}`);
  refreshHeldNotice();
  if (entry.attachment) {
    try {
      await api("attachments.delete", { attachment_id: entry.attachment.id });
    } catch (error) {
      showNotice(`Could not delete ${entry.name} on the server: ${error.message}`);
    }
  }
}

function deleteQuietly(id) {
  api("attachments.delete", { attachment_id: id }).catch(() => {
    // The gateway's sweeper deletes uploads no message holds.
  });
}

// ---------------------------------------------------------------------------
// What the composer asks.
// ---------------------------------------------------------------------------

/** Whether the composer holds attachments, so that a message without text may be sent. */
export function hasAttachments() {
  return entries.length > 0;
}

/**
 * Why the message cannot go yet (uploads under way or failed), or null. The
 * composer shows the answer as a notice, which this module then keeps
 * current as uploads end (`refreshHeldNotice`).
 */
export function attachmentProblem() {
  heldNotice = problemNow();
  return heldNotice;
}

function problemNow() {
  const failed = entries.filter((entry) => entry.state === "failed");
  if (failed.length > 0) {
    return `Retry or remove ${failed.map((entry) => entry.name).join(", ")} before sending: the upload failed.`;
  }
  const busy = entries.filter((entry) => entry.state !== "done");
  if (busy.length > 0) {
    const what = busy.length === 1 ? `${busy[0].name} is` : `${busy.length} files are`;
    return `Wait a moment: ${what} still uploading. Send again once the upload is done.`;
  }
  return null;
}

/** The notice that held a message back, if it still shows: it says what holds it now, or goes. */
function refreshHeldNotice() {
  if (heldNotice === null || ui.notice.hidden || ui.notice.textContent !== heldNotice) {
    heldNotice = null;
    return;
  }
  heldNotice = problemNow();
  if (heldNotice) {
    showNotice(heldNotice, "info");
  } else {
    clearNotice();
  }
}

/** Takes the finished attachments out of the composer for a message: their ids, and the entries to give back. */
export function takeAttachments() {
  const taken = entries;
  entries = [];
  tray.replaceChildren();
  tray.hidden = true;
  return { ids: taken.map((entry) => entry.attachment.id), entries: taken };
}

/** Puts attachments back into the composer after their message failed to go. */
export function restoreAttachments(taken) {
  entries = taken.entries.concat(entries);
  tray.replaceChildren(...entries.map((entry) => entry.chip.root));
  tray.hidden = entries.length === 0;
}

// ---------------------------------------------------------------------------
// Wiring: the Attach button, drag and drop, paste.
// ---------------------------------------------------------------------------

const carriesFiles = (event) => Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");

attachButton.addEventListener("click", () => picker.click());
picker.addEventListener("change", () => {
  addFiles([...picker.files]);
  // The same file may be chosen again later.
  picker.value = "";
});
for (const type of ["dragenter", "dragover"]) {
  ui.composer.addEventListener(type, (event) => {
    if (carriesFiles(event) && !ui.input.disabled) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      ui.composer.classList.add("dropping");
    }
  });
}
ui.composer.addEventListener("dragleave", (event) => {
  if (!ui.composer.contains(event.relatedTarget)) {
    ui.composer.classList.remove("dropping");
  }
});
ui.composer.addEventListener("drop", (event) => {
  ui.composer.classList.remove("dropping");
  if (carriesFiles(event)) {
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  }
});
// A file dropped beside the composer would otherwise replace the page with itself.
window.addEventListener("dragover", (event) => carriesFiles(event) && event.preventDefault());
window.addEventListener("drop", (event) => carriesFiles(event) && event.preventDefault());
ui.input.addEventListener("paste", (event) => {
  const files = event.clipboardData ? [...event.clipboardData.files] : [];
  if (files.length > 0) {
    addFiles(files);
    // A copied image may come with its text too: that still pastes.
    if (![...event.clipboardData.types].includes("text/plain")) {
      event.preventDefault();
    }
  }
});
// The Attach button follows the message box: disabled on a locked thread or without an identity.
new MutationObserver(() => {
  attachButton.disabled = ui.input.disabled;
}).observe(ui.input, { attributes: true, attributeFilter: ["disabled"] });
attachButton.disabled = ui.input.disabled;
