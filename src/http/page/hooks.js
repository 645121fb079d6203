// The chat page's hooks for integrators who serve their own copy of the page.

/**
 * The page's hooks (the policy allows same-origin scripts only). A script may
 * set them before or after the page's modules run, whole or one at a time:
 *
 *   window.chatkitPage = {
 *     actions: { "my.action": async (action, item) => {...} },
 *     tools: { get_time: async (args, item) => ({ time: new Date().toISOString() }) },
 *   };
 *   window.chatkitPage.tools.get_time = async (args) => ...;
 *
 * `actions` answers widget actions whose config says `handler: "client"`, by
 * action type; it gets the action (its payload holds the widget's form
 * values) and the widget item.
 *
 * `tools` answers client tool calls, by tool name: when a turn this tab sent
 * ends with a pending `client_tool_call`, the page calls the handler with the
 * call's arguments and the item, and sends what it answers (any JSON value)
 * as `threads.add_client_tool_output`. A call with no handler stays pending.
 *
 * The page looks a handler up in `window.chatkitPage` each time it needs one,
 * so a hook set (or an object replaced) after the page started counts too.
 */
window.chatkitPage = Object.assign({ actions: {}, tools: {} }, window.chatkitPage || {});

/** The handler `window.chatkitPage[kind][name]` as it is now ("actions" or "tools"), or null. */
export function hookFor(kind, name) {
  const page = window.chatkitPage;
  const table = page && typeof page === "object" ? page[kind] : null;
  const handler = table && typeof table === "object" ? table[name] : null;
  return typeof handler === "function" ? handler : null;
}
