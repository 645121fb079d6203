// The attachment scenarios of e2e.mjs, against the echo responder:
//
// - `attach`: an image chosen with the Attach button previews in its chip
//   from its own bytes while it uploads, then from the server once its
//   progress bar reaches 100, goes with a message and shows as a thumbnail
//   in the sent message, and the stored message lists it; a second file
//   removed before sending is deleted (`attachments.delete`) and is not
//   in the message;
// - `attach-drop`: a text file dropped on the composer (a `drop` event with a
//   DataTransfer built in the page) highlights the composer and uploads; a
//   held upload keeps Send back with a notice (kept current until the upload
//   is done), a failed one says so on its chip and recovers with Retry; the
//   file alone (no text) is sent and shows as a chip with its name and type.

import { deflateSync } from "node:zlib";

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) {
    c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) {
    c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "ascii");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** A `size`×`size` RGB PNG of a diagonal gradient, made here so that the test depends on no image file. */
export function pngBuffer(size = 24) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8 bits per channel, truecolour, no interlace.
  const rows = [];
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 3); // Filter byte 0: the row as it is.
    for (let x = 0; x < size; x++) {
      row.set([Math.round((x / size) * 255), Math.round((y / size) * 255), 180], 1 + x * 3);
    }
    rows.push(row);
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    signature,
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** What the composer's chips show. */
function chipsProbe() {
  return [...document.querySelectorAll("#attachments .attachment")].map((li) => {
    const thumb = li.querySelector(".attachment-thumb");
    const bar = li.querySelector('[role="progressbar"]');
    return {
      id: li.dataset.attachmentId || null,
      state: li.dataset.state,
      name: li.querySelector(".attachment-name").textContent,
      size: li.querySelector(".attachment-size").textContent,
      thumb: thumb && !thumb.hidden ? { src: thumb.src.slice(0, 40), width: thumb.naturalWidth } : null,
      progress: bar ? Number(bar.getAttribute("aria-valuenow")) : null,
      error: li.querySelector(".attachment-error").hidden ? null : li.querySelector(".attachment-error").textContent,
    };
  });
}

/** Records every value the chips' progress bars take, from before the first file is chosen. */
function recordProgress() {
  window.__progress = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      if (change.type === "attributes" && change.attributeName === "aria-valuenow") {
        window.__progress.push(Number(change.target.getAttribute("aria-valuenow")));
      }
    }
  }).observe(document.getElementById("attachments"), { subtree: true, attributes: true, attributeFilter: ["aria-valuenow"] });
}

/** The `attachments.*` operations a tab posts, as `{type, params}`. */
function watchOperations(tab) {
  const seen = [];
  tab.page.on("request", (request) => {
    if (request.method() === "POST" && new URL(request.url()).pathname.endsWith("/chatkit")) {
      const body = JSON.parse(request.postData() || "{}");
      if (String(body.type).startsWith("attachments.")) {
        seen.push(body);
      }
    }
  });
  return seen;
}

/** The open thread's stored user messages, as `items.list` answers them to the test user. */
async function storedUserMessages(s, base, threadId) {
  const page = JSON.parse(await s.chatkit(base, "items.list", { thread_id: threadId, order: "asc", limit: 50 }));
  return page.data.filter((item) => item.type === "user_message");
}

export function attachScenarios(assert) {
  return {
    async attach(s) {
      const [base] = s.bases;
      const tab = await s.tab("attach-tab", s.pageUrl(base));
      const operations = watchOperations(tab);
      await tab.page.evaluate(recordProgress);

      // The image's upload is held until its chip shows the local preview, read before the upload ends.
      let release;
      const held = new Promise((resolve) => (release = resolve));
      await tab.page.route("**/chatkit/attachments/*/upload*", async (route) => {
        await held;
        await route.continue();
      });
      const png = pngBuffer();
      await tab.page.setInputFiles("#attach-input", { name: "gradient.png", mimeType: "image/png", buffer: png });
      await tab.until("the image's chip previews it from its own bytes while the upload runs", () => {
        const li = document.querySelector("#attachments .attachment");
        const thumb = li && li.querySelector(".attachment-thumb");
        return li !== null && li.dataset.state === "uploading" && !thumb.hidden &&
          thumb.src.startsWith("data:image/png;base64,") && thumb.naturalWidth > 0;
      });
      release();
      await tab.until("the image's chip shows the server's preview once uploaded", () => {
        const li = document.querySelector("#attachments .attachment");
        const thumb = li && li.querySelector(".attachment-thumb");
        return li !== null && li.dataset.state === "done" && thumb.src.startsWith("http") && thumb.complete && thumb.naturalWidth > 0;
      });
      const progress = await tab.page.evaluate(() => window.__progress);
      console.log(`[attach-tab] progress: ${JSON.stringify(progress)}`);
      assert(progress.includes(100), `the progress bar never read 100: ${JSON.stringify(progress)}`);
      assert(
        progress.every((value, i) => value >= 0 && value <= 100 && (i === 0 || value >= progress[i - 1] || value === 0)),
        `the progress bar went backwards or out of range: ${JSON.stringify(progress)}`,
      );
      const [image] = await tab.page.evaluate(chipsProbe);
      assert(image.name === "gradient.png" && image.size === `${png.length} B`, `the chip: ${JSON.stringify(image)}`);

      // A second file, removed before sending: its upload is deleted and it is not sent.
      await tab.page.setInputFiles("#attach-input", { name: "draft.txt", mimeType: "text/plain", buffer: Buffer.from("not this one\n") });
      await tab.until("the second file is uploaded", () =>
        [...document.querySelectorAll("#attachments .attachment")].some((li) => li.dataset.state === "done" && li.textContent.includes("draft.txt")),
      );
      await tab.shot("attach-two-chips");
      const draft = (await tab.page.evaluate(chipsProbe)).find((chip) => chip.name === "draft.txt");
      const deletion = tab.page.waitForRequest(
        (request) => {
          const operation = request.method() === "POST" && new URL(request.url()).pathname.endsWith("/chatkit");
          const body = operation ? JSON.parse(request.postData() || "{}") : {};
          return body.type === "attachments.delete" && body.params.attachment_id === draft.id;
        },
        { timeout: 10_000 },
      );
      await tab.page.getByRole("button", { name: "Remove draft.txt" }).click();
      await tab.until("the removed file's chip is gone", () => document.querySelectorAll("#attachments .attachment").length === 1);
      await tab.until("the status region says the file was removed", () =>
        document.getElementById("attach-status").textContent === "Removed draft.txt",
      );
      await deletion;
      console.log(`[attach-tab] attachments.delete sent for ${draft.id}`);

      const text = "Here is a picture";
      await tab.send(text);
      await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
      await tab.until(
        "the sent message shows the image as a thumbnail that decodes",
        () => {
          const img = document.querySelector("#messages .message.user .message-attachments img");
          return img !== null && img.alt === "gradient.png" && img.complete && img.naturalWidth > 0;
        },
      );
      await tab.untilMessages([
        { role: "user", text },
        { role: "assistant", text: `echo: ${text}` },
      ]);
      await tab.until("the chips are cleared", () =>
        document.getElementById("attachments").hidden && document.querySelectorAll("#attachments .attachment").length === 0,
      );
      await tab.shot("attach-sent");

      const [stored] = await storedUserMessages(s, base, tab.threadId());
      const ids = stored.attachments.map((a) => a.id);
      assert(
        ids.length === 1 && ids[0] === image.id && stored.attachments[0].type === "image" && stored.attachments[0].name === "gradient.png",
        `the stored message's attachments: ${JSON.stringify(stored.attachments)}`,
      );
      assert(!ids.includes(draft.id), "the removed file was sent");
      const sent = operations.filter((op) => op.type === "attachments.create").map((op) => op.params);
      assert(
        JSON.stringify(sent) ===
          JSON.stringify([
            { name: "gradient.png", size: png.length, mime_type: "image/png" },
            { name: "draft.txt", size: 13, mime_type: "text/plain" },
          ]),
        `attachments.create params: ${JSON.stringify(sent)}`,
      );
      s.finish();
    },

    async "attach-drop"(s) {
      const [base] = s.bases;
      const tab = await s.tab("drop-tab", s.pageUrl(base));
      // The upload is held until the test lets it go, then fails once, then goes through.
      let release;
      const held = new Promise((resolve) => (release = resolve));
      let uploads = 0;
      await tab.page.route("**/chatkit/attachments/*/upload*", async (route) => {
        uploads += 1;
        if (uploads === 1) {
          await held;
          await route.abort("failed");
        } else {
          await route.continue();
        }
      });

      const highlighted = await tab.page.evaluate(() => {
        const composer = document.getElementById("composer");
        const data = new DataTransfer();
        data.items.add(new File(["Meeting notes\n- attach files\n"], "notes.txt", { type: "text/plain" }));
        composer.dispatchEvent(new DragEvent("dragenter", { dataTransfer: data, bubbles: true, cancelable: true }));
        const during = composer.classList.contains("dropping");
        composer.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        return { during, after: composer.classList.contains("dropping") };
      });
      assert(highlighted.during && !highlighted.after, `the drop highlight: ${JSON.stringify(highlighted)}`);
      await tab.until("the dropped file is uploading", () =>
        document.querySelector('#attachments .attachment[data-state="uploading"]') !== null,
      );

      // Send (Enter, with no text) while the upload is held: refused with a notice, nothing sent.
      await tab.page.press("#input", "Enter");
      await tab.until("a notice says the upload is still under way", () =>
        (window.__e2e.notice() || "").includes("notes.txt is still uploading"),
      );
      assert(!new URLSearchParams(await tab.page.evaluate(() => location.search)).has("thread"), "a thread was made");

      release();
      await tab.until("the failed upload says so on its chip, with a Retry button", () => {
        const li = document.querySelector("#attachments .attachment");
        const error = li.querySelector(".attachment-error");
        return li.dataset.state === "failed" && !error.hidden && error.textContent.startsWith("Upload failed") &&
          !li.querySelector(".attachment-retry").hidden;
      });
      await tab.until("the notice that held the message back now asks to retry or remove the file", () =>
        (window.__e2e.notice() || "").includes("Retry or remove notes.txt"),
      );
      await tab.shot("drop-failed");
      await tab.page.getByRole("button", { name: "Retry notes.txt" }).click();
      await tab.until("the retried upload is done, and the notice is gone", () =>
        document.querySelector('#attachments .attachment[data-state="done"]') !== null && window.__e2e.notice() === null,
      );
      const [chip] = await tab.page.evaluate(chipsProbe);
      assert(chip.name === "notes.txt" && chip.thumb === null, `the file's chip: ${JSON.stringify(chip)}`);

      // The file alone, without text.
      await tab.page.press("#input", "Enter");
      await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
      await tab.until("the sent message shows the file with its name and type", () => {
        const file = document.querySelector("#messages .message.user .message-file");
        return file !== null && file.textContent.includes("notes.txt") && file.textContent.includes("text/plain");
      });
      await tab.until("the echo answers", () => window.__e2e.messages().some((m) => m.role === "assistant" && m.text === "echo:"));
      await tab.shot("drop-sent");
      const [stored] = await storedUserMessages(s, base, tab.threadId());
      assert(
        stored.attachments.length === 1 && stored.attachments[0].id === chip.id && stored.attachments[0].type === "file" &&
          stored.attachments[0].mime_type === "text/plain" && stored.content.length === 0,
        `the stored message: ${JSON.stringify(stored)}`,
      );
      s.finish();
    },
  };
}
