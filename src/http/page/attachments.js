// The chat page's attachments: ChatKit.js's two-phase upload from the
// composer (the Attach button's file picker, files dropped on the composer,
// pasted images), a chip per file with its progress, preview and remove
// button, and how a sent user message shows the attachments it holds.
//
// Each file is registered with `attachments.create` (`{name, size,
// mime_type}`), which answers where to send the bytes (`upload_descriptor`)
// and, for an image, a `preview_url`. The bytes go there with XMLHttpRequest,
// since fetch reports no upload progress. Upload and preview URLs are
// capability URLs: they carry no identity header. The composer sends the ids
// of finished uploads with the message (`takeAttachments`), and refuses to
// send while one is under way or failed (`attachmentProblem`).

import { api } from "./api.js";
import { showNotice, ui } from "./state.js";

const $ = (id) => document.getElementById(id);
const tray = $("attachments");
const picker = $("attach-input");
const attachButton = $("attach");
const announcer = $("attach-status");

/** Images larger than this get no local preview, as a `data:` URL of them would be huge; the server's follows the upload. */
const LOCAL_PREVIEW_LIMIT = 8 * 1024 * 1024;

/**
 * The composer's attachments in the order added. Each entry holds the file,
 * the server's attachment once registered, its `state` ("creating",
 * "uploading", "done" or "failed"), the upload's `progress` (0 to 100), the
 * reason of a failure, the running upload and its chip.
 */
let entries = [];

/** A size as people read it. */
export function formatSize(bytes) {
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  if (bytes < 1024 * 1024) {
    return `${(bytes / 1024).toFixed(1)} KB`;
  }
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/**
 * A URL of this gateway as the page can reach it. The gateway names its
 * upload and preview URLs after its public URL; when the page was opened
 * under another name of the same gateway (localhost for 127.0.0.1), the
 * page's policy (`connect-src 'self'`) would refuse them, so the path under
 * `chatkit/attachments/` is taken relative to the page instead.
 */
function reachable(url) {
  let parsed;
  try {
    parsed = new URL(url, document.baseURI);
  } catch (_) {
    return url;
  }
  const marker = "/chatkit/attachments/";
  const at = parsed.pathname.lastIndexOf(marker);
  if (parsed.origin === location.origin || at < 0) {
    return parsed.href;
  }
  return `chatkit/attachments/${parsed.pathname.slice(at + marker.length)}${parsed.search}`;
}

/** Says `text` through the composer's status region, which screen readers announce. */
function announce(text) {
  announcer.textContent = text;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
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
    entry.chip = chipFor(entry);
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
  update(entry);
  let attachment;
  try {
    attachment = await api("attachments.create", { name: entry.name, size: entry.file.size, mime_type: entry.mimeType });
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
  update(entry);
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
      update(entry);
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
  update(entry);
  announce(`${entry.name} uploaded`);
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
  update(entry);
  announce(`Upload of ${entry.name} failed: ${reason}`);
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
// Chips.
// ---------------------------------------------------------------------------

/** A chip's elements, made once; `update` shows the entry's state in them. */
function chipFor(entry) {
  const root = element("li", "attachment");
  const thumb = element("img", "attachment-thumb");
  thumb.alt = "";
  thumb.hidden = true;
  const icon = element("span", "attachment-icon", fileLabel(entry.name, entry.mimeType));
  icon.setAttribute("aria-hidden", "true");
  const text = element("span", "attachment-text");
  const name = element("span", "attachment-name", entry.name);
  const size = element("span", "attachment-size", formatSize(entry.file.size));
  const progress = element("div", "attachment-progress");
  progress.setAttribute("role", "progressbar");
  progress.setAttribute("aria-label", `Upload of ${entry.name}`);
  progress.setAttribute("aria-valuemin", "0");
  progress.setAttribute("aria-valuemax", "100");
  const bar = element("div", "attachment-bar");
  progress.append(bar);
  const error = element("span", "attachment-error");
  text.append(name, size, progress, error);
  const retryButton = element("button", "attachment-retry", "Retry");
  retryButton.type = "button";
  retryButton.setAttribute("aria-label", `Retry ${entry.name}`);
  retryButton.addEventListener("click", () => retry(entry));
  const removeButton = element("button", "attachment-remove", "×");
  removeButton.type = "button";
  removeButton.setAttribute("aria-label", `Remove ${entry.name}`);
  removeButton.title = `Remove ${entry.name}`;
  removeButton.addEventListener("click", () => remove(entry));
  root.append(thumb, icon, text, retryButton, removeButton);
  return { root, thumb, icon, progress, bar, error, retry: retryButton, remove: removeButton };
}

/** The short type a file chip shows in place of a thumbnail: its extension, else its media subtype. */
function fileLabel(name, mimeType) {
  const dot = name.lastIndexOf(".");
  const label = dot > 0 && name.length - dot <= 5 ? name.slice(dot + 1) : mimeType.split("/").pop();
  return label.slice(0, 4).toUpperCase();
}

function update(entry) {
  const chip = entry.chip;
  chip.root.dataset.state = entry.state;
  chip.progress.setAttribute("aria-valuenow", String(entry.progress));
  // A finished upload's bar has nothing more to say once it reads 100; the status region says it is done.
  chip.progress.hidden = entry.state === "done" || entry.state === "failed";
  // Scaled rather than sized, since the page's policy refuses inline style attributes but not the CSSOM.
  chip.bar.style.transform = `scaleX(${entry.progress / 100})`;
  chip.error.textContent = entry.state === "failed" ? `Upload failed: ${entry.error}` : "";
  chip.error.hidden = entry.state !== "failed";
  chip.retry.hidden = entry.state !== "failed";
}

/** Shows an image in the chip in place of the file's type. */
function showThumb(entry, src) {
  entry.chip.thumb.src = src;
  entry.chip.thumb.hidden = false;
  entry.chip.icon.hidden = true;
}

// ---------------------------------------------------------------------------
// What the composer asks.
// ---------------------------------------------------------------------------

/** Whether the composer holds attachments, so that a message without text may be sent. */
export function hasAttachments() {
  return entries.length > 0;
}

/** Why the message cannot go yet (uploads under way or failed), or null. */
export function attachmentProblem() {
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
// Attachments in the thread.
// ---------------------------------------------------------------------------

/** A sent user message's attachments: images as thumbnails from their preview, other files as a chip. */
export function renderMessageAttachments(attachments) {
  const list = element("ul", "message-attachments");
  list.setAttribute("aria-label", "Attachments");
  for (const attachment of attachments) {
    const item = element("li");
    if (attachment.type === "image" && attachment.preview_url) {
      const url = reachable(attachment.preview_url);
      const link = element("a", "message-image");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener";
      const image = element("img");
      image.src = url;
      image.alt = attachment.name;
      image.loading = "lazy";
      link.append(image);
      item.append(link);
    } else {
      const chip = element("span", "message-file");
      const icon = element("span", "attachment-icon", fileLabel(attachment.name, attachment.mime_type || ""));
      icon.setAttribute("aria-hidden", "true");
      chip.append(icon, element("span", "attachment-name", attachment.name));
      chip.append(element("span", "attachment-size", attachment.mime_type || "file"));
      item.append(chip);
    }
    list.append(item);
  }
  return list;
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
