// Client-side navigation, shared by the pages (main.js installs the function that renders a route).

let render = () => {};

export function setRenderer(fn) {
  render = fn;
}

/** Client-side navigation (pushState), used by links and by the run dialog after a 202. */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.scrollTo(0, 0);
  render();
}

/** Rewrite the current query string (filters) without re-rendering the page. */
export function replaceQuery(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  history.replaceState(null, "", window.location.pathname + (text ? `?${text}` : ""));
}
