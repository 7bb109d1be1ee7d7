// What both playground pages use: element lookup, the API key typed in the page's header,
// and an error answer's message.
"use strict";
const $ = (id) => document.getElementById(id);

/** `extra` headers, with `Authorization` when an API key was typed in. */
function headers(extra) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

/** The message of an error answer, JSON or not. */
async function errorText(response) {
  try {
    const body = await response.json();
    return body.error && body.error.message ? body.error.message : response.statusText;
  } catch (_) {
    return response.statusText;
  }
}
