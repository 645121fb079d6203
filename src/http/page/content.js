// The renderers of a turn's content on the gateway's chat page: assistant
// messages (Markdown with citations, through markdown.js), workflows and their
// tasks (reasoning, web searches, files, images, custom steps) with live
// status, standalone task items, and generated images; plus the pure function
// that applies a streamed `thread.item.updated` update to such an item. The
// item shapes are openai-chatkit's (`chatkit/types.py`, 1.6.5). The page keeps
// the items, applies updates with applyContentUpdate and renders the changed
// item again; every renderer returns a fresh element, never throws, and shows
// what it can of a malformed item. Styles live in content.css (`c-` classes).

import { createCitations, el, isPageImage, renderMarkdown, renderSources, webUrl } from "./markdown.js";

// ---------------------------------------------------------------------------
// Assistant messages
// ---------------------------------------------------------------------------

/**
 * An assistant message (`AssistantMessageItem`): each content part as
 * Markdown with its citation markers, numbered across the whole message, then
 * one Sources list for all parts.
 */
export function renderAssistant(item) {
  const root = el("div", "c-assistant");
  tagItem(root, item);
  const citations = createCitations();
  for (const part of list(item?.content)) {
    if (!part || typeof part !== "object") {
      continue;
    }
    const text = typeof part.text === "string" ? part.text : "";
    root.append(renderMarkdown(text, { annotations: list(part.annotations), citations }));
  }
  const sources = renderSources(citations);
  if (sources) {
    root.append(sources);
  }
  return root;
}

// ---------------------------------------------------------------------------
// Workflows and tasks
// ---------------------------------------------------------------------------

/**
 * A workflow (`WorkflowItem`) as a `details.c-workflow`: its summary line says
 * "Working…" while a task is loading, else the workflow's summary (a custom
 * title or the duration); its body lists the tasks with their status. It opens
 * as `options.expanded` says, else as the workflow's `expanded`: a page that
 * re-renders it on every update passes the element's current `open` so the
 * user's choice sticks.
 */
export function renderWorkflow(item, options = {}) {
  const workflow = item?.workflow && typeof item.workflow === "object" ? item.workflow : {};
  const tasks = list(workflow.tasks).filter((task) => task && typeof task === "object");
  const loading = tasks.some((task) => task.status_indicator === "loading");
  const details = el("details", "c-workflow");
  tagItem(details, item);
  details.dataset.workflowType = workflow.type === "reasoning" ? "reasoning" : "custom";
  details.open = typeof options?.expanded === "boolean" ? options.expanded : workflow.expanded === true;
  if (loading) {
    details.setAttribute("aria-busy", "true");
  }

  const summary = el("summary", "c-workflow-summary");
  summary.append(statusIcon(loading ? "loading" : workflow.summary ? "complete" : "none"));
  summary.append(el("span", "c-workflow-title", summaryText(workflow, tasks, loading)));
  details.append(summary);

  const steps = el("ol", "c-tasks");
  for (const task of tasks) {
    const step = el("li", "c-task");
    step.dataset.taskType = String(task.type ?? "unknown");
    step.dataset.status = statusOf(task);
    step.append(statusIcon(statusOf(task)), taskBody(task));
    steps.append(step);
  }
  details.append(steps);
  return details;
}

/** A task shown on its own (`TaskItem`); its status shows only inside workflows, as types.py says. */
export function renderTask(item) {
  const root = el("div", "c-task-item");
  tagItem(root, item);
  const task = item?.task && typeof item.task === "object" ? item.task : {};
  root.dataset.taskType = String(task.type ?? "unknown");
  root.append(taskBody(task));
  return root;
}

function summaryText(workflow, tasks, loading) {
  if (loading) {
    return "Working…";
  }
  const summary = workflow.summary;
  const reasoning = workflow.type === "reasoning";
  if (typeof summary?.title === "string" && summary.title.trim()) {
    return summary.title.trim();
  }
  if (Number.isFinite(summary?.duration)) {
    return `${reasoning ? "Thought" : "Worked"} for ${duration(summary.duration)}`;
  }
  if (reasoning) {
    return "Thought";
  }
  return tasks.length === 1 ? "1 step" : `${tasks.length} steps`;
}

/** Seconds as "45s" or "2m 5s". */
function duration(seconds) {
  const whole = Math.max(0, Math.round(seconds));
  const minutes = Math.floor(whole / 60);
  return minutes ? `${minutes}m ${whole % 60}s` : `${whole}s`;
}

function statusOf(task) {
  return ["loading", "complete"].includes(task?.status_indicator) ? task.status_indicator : "none";
}

/** A spinner (in progress), a check mark (done) or a plain dot; the first two are named for screen readers. */
function statusIcon(status) {
  const icon = el("span", `c-status c-status-${status}`);
  if (status === "loading") {
    icon.setAttribute("role", "img");
    icon.setAttribute("aria-label", "In progress");
  } else if (status === "complete") {
    icon.setAttribute("role", "img");
    icon.setAttribute("aria-label", "Done");
    icon.textContent = "✓";
  } else {
    icon.setAttribute("aria-hidden", "true");
  }
  return icon;
}

/** A task's title and content, by its type; an unknown type shows its title. */
function taskBody(task) {
  const body = el("div", "c-task-body");
  const title = (fallback) => {
    const text = typeof task.title === "string" && task.title.trim() ? task.title.trim() : fallback;
    body.append(el("div", "c-task-title", text));
  };
  switch (task.type) {
    case "custom":
      title("Step");
      if (typeof task.content === "string" && task.content) {
        body.append(renderMarkdown(task.content));
      }
      break;
    case "thought": {
      title("Thought");
      // Reasoning reads as the model's notes, set apart from the answer.
      const thought = el("div", "c-thought");
      thought.setAttribute("aria-label", "Reasoning");
      thought.setAttribute("role", "note");
      thought.append(renderMarkdown(typeof task.content === "string" ? task.content : ""));
      body.append(thought);
      break;
    }
    case "web_search": {
      const query = typeof task.title_query === "string" && task.title_query ? task.title_query : null;
      title(query ? `Searched for “${query}”` : "Searched the web");
      const queries = list(task.queries).filter((q) => typeof q === "string" && q);
      if (queries.length) {
        const chips = el("ul", "c-queries");
        chips.setAttribute("aria-label", "Search queries");
        chips.append(...queries.map((q) => el("li", "c-query", q)));
        body.append(chips);
      }
      body.append(...sourceList(list(task.sources)));
      break;
    }
    case "file":
      title("Read files");
      body.append(...sourceList(list(task.sources)));
      break;
    case "image":
      // ImageTask carries only a title in openai-chatkit 1.6.5; the image itself
      // arrives as a separate GeneratedImageItem.
      title("Image");
      if (task.status_indicator === "loading") {
        body.append(el("div", "c-image-placeholder c-image-placeholder-small", "Generating image…"));
      }
      break;
    default:
      title(typeof task.type === "string" ? task.type : "Step");
  }
  return body;
}

/** A task's URL or file sources as a list (none when it has none). */
function sourceList(sources) {
  const items = sources.filter((source) => source && typeof source === "object").map((source) => {
    const item = el("li", "c-task-source");
    const name = [source.title, source.filename, source.url].find((v) => typeof v === "string" && v.trim()) ?? "Source";
    const href = source.type !== "file" ? webUrl(source.url) : null;
    if (href) {
      const link = el("a", null, name);
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer nofollow";
      item.append(link, el("span", "c-source-meta", new URL(href).host));
    } else {
      item.append(el("span", "c-source-title", name));
      if (typeof source.filename === "string" && source.filename && source.filename !== name) {
        item.append(el("span", "c-source-meta", source.filename));
      }
    }
    return item;
  });
  if (!items.length) {
    return [];
  }
  const listElement = el("ul", "c-task-sources");
  listElement.setAttribute("aria-label", "Sources");
  listElement.append(...items);
  return [listElement];
}

// ---------------------------------------------------------------------------
// Generated images
// ---------------------------------------------------------------------------

/**
 * A generated image (`GeneratedImageItem`): the image when its URL is a data:
 * image or same-origin (the only ones the page's CSP loads), a link to it
 * otherwise, and a loading placeholder while there is no image yet.
 * `options.progress` (0..1, from `generated_image.updated`) shows how far a
 * partial image is.
 */
export function renderGeneratedImage(item, options = {}) {
  const figure = el("figure", "c-generated-image");
  tagItem(figure, item);
  const url = typeof item?.image?.url === "string" ? item.image.url : "";
  const progress = Number.isFinite(options?.progress) ? Math.min(1, Math.max(0, options.progress)) : null;
  if (url && isPageImage(url)) {
    const image = el("img", "c-image");
    image.src = url;
    image.alt = "Generated image";
    image.decoding = "async";
    if (progress !== null && progress < 1) {
      image.classList.add("c-image-partial");
    }
    figure.append(image);
  } else if (url && webUrl(url)) {
    const link = el("a", "c-image-link", "Open the generated image");
    link.href = webUrl(url);
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
    figure.append(link);
  } else {
    const placeholder = el("div", "c-image-placeholder");
    placeholder.setAttribute("role", "status");
    placeholder.append(statusIcon("loading"));
    const label = progress !== null ? `Generating image… ${Math.round(progress * 100)}%` : "Generating image…";
    placeholder.append(el("span", null, label));
    figure.append(placeholder);
    figure.setAttribute("aria-busy", "true");
  }
  return figure;
}

// ---------------------------------------------------------------------------
// Streamed updates (pure)
// ---------------------------------------------------------------------------

/**
 * Applies one streamed update (a `thread.item.updated` event's `update`, or
 * the event itself) to an item and returns the new item. It never changes
 * `item`: the changed path is copied, the rest is shared. An update that does
 * not fit the item (another item type, a bad index, a widget update) returns
 * `item` unchanged. The semantics follow chatkit's server: content parts are
 * padded up to `content_index`, an annotation is inserted at its index, a new
 * task goes at `task_index` (appended past the end, replaced if that index is
 * already there, so a replayed update changes nothing).
 */
export function applyContentUpdate(item, update) {
  if (!item || typeof item !== "object") {
    return item;
  }
  const change = update?.type === "thread.item.updated" ? update.update : update;
  if (!change || typeof change !== "object") {
    return item;
  }
  switch (change.type) {
    case "assistant_message.content_part.added":
    case "assistant_message.content_part.done":
      return withPart(item, change.content_index, (part) => (change.content && typeof change.content === "object" ? change.content : part));
    case "assistant_message.content_part.text_delta":
      return withPart(item, change.content_index, (part) => ({ ...part, text: `${typeof part.text === "string" ? part.text : ""}${change.delta ?? ""}` }));
    case "assistant_message.content_part.annotation_added":
      return withPart(item, change.content_index, (part) => {
        const annotations = [...list(part.annotations)];
        const at = Number.isInteger(change.annotation_index) && change.annotation_index >= 0 ? change.annotation_index : annotations.length;
        annotations.splice(Math.min(at, annotations.length), 0, change.annotation);
        return { ...part, annotations };
      });
    case "workflow.task.added":
    case "workflow.task.updated":
      return withTask(item, change);
    case "generated_image.updated":
      return item.type === "generated_image" && change.image && typeof change.image === "object" ? { ...item, image: change.image } : item;
    default:
      return item;
  }
}

function withPart(item, index, change) {
  if (item.type !== "assistant_message" || !Number.isInteger(index) || index < 0) {
    return item;
  }
  const content = [...list(item.content)];
  while (content.length <= index) {
    content.push({ type: "output_text", text: "", annotations: [] });
  }
  const part = content[index] && typeof content[index] === "object" ? content[index] : { type: "output_text", text: "", annotations: [] };
  content[index] = change(part);
  return { ...item, content };
}

function withTask(item, change) {
  if (item.type !== "workflow" || !item.workflow || !change.task || typeof change.task !== "object") {
    return item;
  }
  const tasks = [...list(item.workflow.tasks)];
  const index = change.task_index;
  const valid = Number.isInteger(index) && index >= 0;
  if (change.type === "workflow.task.updated") {
    if (!valid || index >= tasks.length) {
      return item;
    }
    tasks[index] = change.task;
  } else if (valid && index < tasks.length) {
    tasks[index] = change.task;
  } else {
    tasks.push(change.task);
  }
  return { ...item, workflow: { ...item.workflow, tasks } };
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function list(value) {
  return Array.isArray(value) ? value : [];
}

/** Marks an item's element with its id, so the page can find it to replace it. */
function tagItem(element, item) {
  if (typeof item?.id === "string") {
    element.dataset.itemId = item.id;
  }
}
