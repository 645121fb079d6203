// The chat page's hooks for integrators who serve their own copy of the page.

/**
 * The page's hooks (the policy allows same-origin scripts only). A script may
 * set them before or after the page's modules run:
 *
 *   window.chatkitPage = { actions: { "my.action": async (action, item) => {...} } };
 *
 * `actions` answers widget actions whose config says `handler: "client"`, by
 * action type; it gets the action (its payload holds the widget's form
 * values) and the widget item.
 */
export const hooks = (window.chatkitPage = Object.assign({ actions: {} }, window.chatkitPage || {}));
