// The chat page's side of the protocol: who the page acts for (the user
// header in dev mode, a client secret with sessions) and the JSON operations
// and turn streams on `POST /chatkit`. Every URL is relative, so the page
// works unchanged under a base path.

const meta = (name) => {
  const element = document.querySelector(`meta[name="${name}"]`);
  return element ? element.content : null;
};

/** How the gateway authenticates, as the page was told: "header" or "session". */
export const AUTH = meta("chatkit-auth") === "session" ? "session" : "header";
const USER_HEADER = meta("chatkit-user-header") || "x-user-id";
const USER_KEY = "chatkit-gateway.user";
const SECRET_KEY = "chatkit-gateway.client_secret";

function randomId() {
  const bytes = new Uint8Array(4);
  crypto.getRandomValues(bytes);
  return "user_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The headers that say who this page acts for, or null when it cannot tell. */
function identify() {
  const params = new URLSearchParams(location.search);
  if (AUTH === "header") {
    let user = (params.get("user") || "").trim();
    if (user) {
      localStorage.setItem(USER_KEY, user);
    } else {
      user = localStorage.getItem(USER_KEY) || randomId();
      localStorage.setItem(USER_KEY, user);
    }
    return { headers: { [USER_HEADER]: user }, label: `Signed in as ${user} (dev mode: ?user=<id> to switch)` };
  }
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("client_secret");
  if (fromHash) {
    sessionStorage.setItem(SECRET_KEY, fromHash);
    // The secret stays out of the address bar, links and history.
    history.replaceState(history.state, "", location.pathname + location.search);
  }
  const secret = sessionStorage.getItem(SECRET_KEY);
  if (!secret) {
    return null;
  }
  return { headers: { authorization: `Bearer ${secret}` }, label: "Signed in with a client secret" };
}

/** Who the page acts for (`headers`, and a `label` to show), or null when it cannot tell. */
export const identity = identify();

/** A fresh copy of the identity headers, for a request or a stream (re)connect. */
export const authHeaders = () => Object.assign({}, identity ? identity.headers : {});

/** A refused operation, with the HTTP status and the gateway's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Posts one operation and answers its response: JSON, or a turn stream for
 * streaming operations. `signal` (an AbortSignal) stops it, for a user's Stop.
 */
export async function post(type, params, signal) {
  const headers = authHeaders();
  headers["content-type"] = "application/json";
  const response = await fetch("chatkit", { method: "POST", headers, body: JSON.stringify({ type, params }), signal });
  if (!response.ok) {
    let message = `${type} failed: HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        message = body.error.message;
      }
    } catch (_) {
      // Not JSON: keep the status.
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

/** Runs a JSON operation and answers its body. */
export async function api(type, params) {
  const response = await post(type, params);
  return response.json();
}

/** A user message's input: its text (none for a message of attachments only) and the ids of its attachments. */
export function textInput(text, attachments = []) {
  const content = text ? [{ type: "input_text", text }] : [];
  return { content, attachments, inference_options: {} };
}
