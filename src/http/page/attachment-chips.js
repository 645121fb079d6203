// The chat page's attachment chips: how an attachment looks in the composer
// (a thumbnail or the file's type, its name and size, its upload progress,
// a failure's reason, Retry and Remove) and in a sent user message (images as
// thumbnails from their preview, other files as a chip with name and type).
// attachments.js runs the uploads and says when a chip changes; this module
// only draws, so that items.js can show a message's attachments without the
// composer's wiring.

import { el } from "./markdown.js";

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
export function reachable(url) {
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

/**
 * A composer chip's elements for an attachment entry of attachments.js, made
 * once; `updateChip` shows the entry's state in them, and `actions` answers
 * its Retry and Remove buttons.
 */
export function chipFor(entry, actions) {
  const root = el("li", "attachment");
  const thumb = el("img", "attachment-thumb");
  thumb.alt = "";
  thumb.hidden = true;
  const icon = el("span", "attachment-icon", fileLabel(entry.name, entry.mimeType));
  icon.setAttribute("aria-hidden", "true");
  const text = el("span", "attachment-text");
  const name = el("span", "attachment-name", entry.name);
  const size = el("span", "attachment-size", formatSize(entry.file.size));
  const progress = el("div", "attachment-progress");
  progress.setAttribute("role", "progressbar");
  progress.setAttribute("aria-label", `Upload of ${entry.name}`);
  progress.setAttribute("aria-valuemin", "0");
  progress.setAttribute("aria-valuemax", "100");
  const bar = el("div", "attachment-bar");
  progress.append(bar);
  const error = el("span", "attachment-error");
  text.append(name, size, progress, error);
  const retryButton = el("button", "attachment-retry", "Retry");
  retryButton.type = "button";
  retryButton.setAttribute("aria-label", `Retry ${entry.name}`);
  retryButton.addEventListener("click", () => actions.retry(entry));
  const removeButton = el("button", "attachment-remove", "×");
  removeButton.type = "button";
  removeButton.setAttribute("aria-label", `Remove ${entry.name}`);
  removeButton.title = `Remove ${entry.name}`;
  removeButton.addEventListener("click", () => actions.remove(entry));
  root.append(thumb, icon, text, retryButton, removeButton);
  return { root, thumb, icon, progress, bar, error, retry: retryButton, remove: removeButton };
}

/** The short type a file chip shows in place of a thumbnail: its extension, else its media subtype. */
function fileLabel(name, mimeType) {
  const dot = name.lastIndexOf(".");
  const label = dot > 0 && name.length - dot <= 5 ? name.slice(dot + 1) : mimeType.split("/").pop();
  return label.slice(0, 4).toUpperCase();
}

/** Shows an entry's state (creating, uploading, done or failed) and progress in its chip. */
export function updateChip(entry) {
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
export function showThumb(entry, src) {
  entry.chip.thumb.src = src;
  entry.chip.thumb.hidden = false;
  entry.chip.icon.hidden = true;
}

/** A sent user message's attachments: images as thumbnails from their preview, other files as a chip. */
export function renderMessageAttachments(attachments, afterText) {
  const list = el("ul", afterText ? "message-attachments after-text" : "message-attachments");
  list.setAttribute("aria-label", "Attachments");
  for (const attachment of attachments) {
    const item = el("li");
    if (attachment.type === "image" && attachment.preview_url) {
      const url = reachable(attachment.preview_url);
      const link = el("a", "message-image");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener";
      const image = el("img");
      image.src = url;
      image.alt = attachment.name;
      image.loading = "lazy";
      link.append(image);
      item.append(link);
    } else {
      const chip = el("span", "message-file");
      const icon = el("span", "attachment-icon", fileLabel(attachment.name, attachment.mime_type || ""));
      icon.setAttribute("aria-hidden", "true");
      chip.append(icon, el("span", "attachment-name", attachment.name));
      chip.append(el("span", "attachment-size", attachment.mime_type || "file"));
      item.append(chip);
    }
    list.append(item);
  }
  return list;
}
