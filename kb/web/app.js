// kb search page: plain ES2020, no dependencies, no build step.
// Data reaches the DOM only through textContent and attributes, never innerHTML, so a stored
// document cannot inject markup. Paths are relative so the page also works under a prefix.
"use strict";

const KEY_STORAGE = "kb.apiKey";
const TEXT_PREVIEW_CHARS = 1200;
const CHIP_PREVIEW_CHARS = 120; // a metadata value longer than this is cut in its chip
const SEARCH_TIMEOUT_S = 60; // a search not answered by then is given up, and said so
// What the page assumes of a server without GET /info (it predates API keys).
const FALLBACK_INFO = Object.freeze({
  auth_required: false,
  role: "write",
  threshold: { min_score: 0.4, source: "configured" },
  top_k: 5,
  max_top_k: 100,
  search_mode: "hybrid",
});
const FILTER_KEYS = ["category", "difficulty"];
const DATE_KEY = "date";
// The address's parameters for the date fields. With q, the filters, min_score and top_k they
// are the page's own: it rewrites them on each search and leaves any other parameter alone.
const DATE_PARAMS = { "date-from": "from", "date-to": "to" };
const PAGE_PARAMS = ["q", ...FILTER_KEYS, ...Object.values(DATE_PARAMS), "min_score", "top_k"];
const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;

const state = {
  info: { ...FALLBACK_INFO },
  infoLoaded: false,
  infoFailed: false, // /info's error is shown in the filters' note
  lastAsked: null, // the search last sent, answered or not (a key given later runs it again)
  stats: null,
  lastRequest: null,
  searchSeq: 0,
  checkedKey: "", // the key the server last judged (/info, or a 401 / 403)
  thresholdTouched: false,
  exactThreshold: null, // a threshold from the address the slider's 0.01 steps cannot show
  topKTouched: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Characters that show as nothing or reorder the text around them (format characters such as
// U+202E RIGHT-TO-LEFT OVERRIDE or U+200B ZERO WIDTH SPACE, line and paragraph separators):
// in an id they could make it look like another one, so ids show them as \u escapes. So do
// the other default-ignorable code points (U+034F COMBINING GRAPHEME JOINER, the variation
// selectors, U+115F HANGUL CHOSEONG FILLER): a font draws them as nothing, or as a blank.
const HIDDEN_CHARS = /[\p{Cf}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}]/gu;

function escapeHidden(char) {
  const code = char.codePointAt(0).toString(16).toUpperCase();
  return code.length > 4 ? `\\u{${code}}` : `\\u${code.padStart(4, "0")}`;
}

// Characters that change the direction of the text after them: the bidi controls and the
// right-to-left scripts' blocks (Hebrew to NKo and their presentation forms, and the
// supplementary planes' right-to-left ranges).
const BIDI_CHARS =
  /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069\u0590-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFF\u{10800}-\u{10FFF}\u{1E800}-\u{1EFFF}]/u;

// A stored value inside text of the page's own (an option's "value (count)"): one holding such
// a character goes between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE, so that it cannot
// reorder the rest ("spam\u202E0001 (1)" read "spam(1) 1000").
function isolated(value) {
  return BIDI_CHARS.test(value) ? `\u2068${value}\u2069` : value;
}

function visibleId(id) {
  return String(id).replace(HIDDEN_CHARS, escapeHidden);
}

// The id as text nodes, each hidden character as a marked escape (told apart from a "\u"
// typed into the id).
function idNodes(id) {
  const nodes = [];
  let last = 0;
  for (const found of String(id).matchAll(HIDDEN_CHARS)) {
    if (found.index > last) nodes.push(document.createTextNode(id.slice(last, found.index)));
    const mark = el("span", "hidden-char", escapeHidden(found[0]));
    mark.title = "an invisible or direction-changing character";
    nodes.push(mark);
    last = found.index + found[0].length;
  }
  if (last < id.length) nodes.push(document.createTextNode(id.slice(last)));
  return nodes;
}

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

// ------------------------------------------------------------------ the API key

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled: the key then lives only as long as the field's value
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // ignored: see storedKey
  }
}

// The key in the field is the one sent (it starts as the stored one): what the page shows is
// what it uses. It is stored only once /info has accepted it (onKey).
function currentKey() {
  return $("api-key").value.trim();
}

// JSON.stringify writes a whole number past 2**53 in digits, which the server reads as an
// integer (past 64 bits, refused: a 422 for the value 1e+20 /stats listed). Such a number here
// is a float's (a typed filter value: digits alone stay text), so it goes in exponent form,
// which the server reads as the float it is. The mark's nonce keeps it from any typed text.
const FLOAT_MARK = `kb-float-${Math.random().toString(36).slice(2)}-`;
const FLOAT_MARKED = new RegExp(`"${FLOAT_MARK}([^"]+)"`, "g");

function requestJson(body) {
  const marked = (_, value) =>
    typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)
      ? `${FLOAT_MARK}${value.toExponential()}`
      : value;
  return JSON.stringify(body, marked).replace(FLOAT_MARKED, "$1");
}

// What kb takes as a key (kb.auth.sendable): printable ASCII, no spaces.
function sendableKey(key) {
  return /^[\x21-\x7e]+$/.test(key);
}

// A 200 that is not kb's JSON (a proxy's or captive portal's HTML page, say).
function unexpectedAnswer(status) {
  return new ApiError(
    status,
    "unexpected_answer",
    "Unexpected answer from the server: it did not come from kb, or kb does not match this page. " +
      "Reload the page, or check the address.",
    [],
  );
}

// A request to kb; with timeoutS, one not answered within that many seconds fails as such
// (for searches only: a write given up on might still land).
async function api(path, { method = "GET", body, timeoutS } = {}) {
  const headers = { Accept: "application/json" };
  const key = currentKey();
  if (key && !sendableKey(key)) {
    // fetch refuses such a header itself, which read as "could not reach the server"
    throw new ApiError(0, "invalid_key", "The API key holds a character a key cannot hold.", []);
  }
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = requestJson(body);
  }
  let response;
  const abort = new AbortController();
  const timer = timeoutS && setTimeout(() => abort.abort(), timeoutS * 1000);
  init.signal = abort.signal;
  try {
    response = await fetch(path, init);
  } catch {
    if (abort.signal.aborted) {
      const said = `The server did not answer within ${timeoutS} seconds. Try again later.`;
      throw new ApiError(0, "timeout", said, []);
    }
    throw new ApiError(0, "network_error", "Could not reach the kb server. Is it running?", []);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  // What the answer says of the key counts only while that key is still the field's: a late
  // answer to a request sent with an older key (a 401 for a rejected key arriving after a
  // newer key was accepted) must not turn the key's state back.
  const current = key === currentKey();
  if (response.ok) {
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      throw unexpectedAnswer(response.status);
    }
    if (path === "info" && current) state.checkedKey = key;
    return data;
  }
  const error = (data && data.error) || {};
  const failure = new ApiError(
    response.status,
    error.code || "http_error",
    error.message || `The server answered ${response.status} ${response.statusText}.`.trim(),
    Array.isArray(error.details) ? error.details : [],
  );
  // The server is the authority on what this key may do: follow it, whatever /info said.
  if (current && (response.status === 401 || response.status === 403)) state.checkedKey = key;
  if (current && response.status === 401) {
    state.info = { ...state.info, auth_required: true, role: null };
    applyRole();
  } else if (current && response.status === 403 && state.info.role === "write") {
    state.info = { ...state.info, role: "read" };
    applyRole();
  }
  throw failure;
}

function errorText(err) {
  if (err.status === 401) {
    return currentKey()
      ? "The API key was not accepted. Check it and enter it again at the top of the page."
      : "This server needs an API key: enter it at the top of the page.";
  }
  if (err.status === 403) {
    return "This key is read-only: it can search, but adding and deleting need a read-write key.";
  }
  return err.message;
}

// A note's kind: an error is an alert, read out at once, anything else a polite status (an
// explicit aria-live on the element follows suit: "polite" left there would tame the alert).
function markNote(target, error) {
  target.classList.toggle("error", error);
  target.setAttribute("role", error ? "alert" : "status");
  if (target.hasAttribute("aria-live")) {
    target.setAttribute("aria-live", error ? "assertive" : "polite");
  }
}

function showError(target, err) {
  target.replaceChildren();
  markNote(target, true);
  // A message quotes what was sent (an id): its hidden characters shown as escapes, as in
  // the cards, so an override in an id cannot reverse the message around it.
  target.append(el("p", "", visibleId(errorText(err))));
  // One detail repeats the message; several are worth listing field by field.
  if (err.status !== 401 && err.status !== 403 && err.details && err.details.length > 1) {
    const list = el("ul", "details");
    for (const detail of err.details) {
      list.append(el("li", "", visibleId(`${detail.field}: ${detail.message}`)));
    }
    target.append(list);
  }
  if (err.status === 401) $("api-key").focus();
}

function clearNote(target) {
  markNote(target, false);
  target.replaceChildren();
}

function showMessage(target, text) {
  markNote(target, false);
  target.replaceChildren(el("p", "", text));
}

function updateKeyStatus() {
  const { auth_required: authRequired, role } = state.info;
  const key = currentKey();
  let text;
  if (key && !sendableKey(key)) {
    text =
      "This key holds a character an API key cannot (keys are visible ASCII: letters, " +
      "digits and punctuation, no spaces): check it, it was not sent.";
  } else if (authRequired === null) {
    text = "Whether this server needs a key is not known: it did not answer (see below).";
  } else if (authRequired && key !== state.checkedKey) {
    text = key
      ? "This key is not checked yet: press Use key (searches already send it)."
      : "This server needs an API key. Enter it to search.";
  } else if (!authRequired) {
    text = key
      ? "This server is open: no key is needed (the key is ignored)."
      : "This server is open: no key is needed to search, add or delete.";
  } else if (role === "write") {
    text = "Read-write key: you can search, add and delete.";
  } else if (role === "read") {
    text = "Read-only key: you can search; adding and deleting need a read-write key.";
  } else if (key) {
    text = "The API key was not accepted. Check it and try again.";
  } else {
    text = "This server needs an API key. Enter it to search.";
  }
  $("key-status").textContent = text;
}

function applyRole() {
  const canWrite = state.info.role === "write";
  $("add-section").hidden = !canWrite;
  for (const button of document.querySelectorAll(".delete-button")) button.hidden = !canWrite;
  updateKeyStatus();
}

async function loadInfo() {
  state.infoFailed = false;
  try {
    const info = (await api("info")) || {};
    state.info = {
      ...FALLBACK_INFO,
      ...info,
      threshold: { ...FALLBACK_INFO.threshold, ...(info.threshold || {}) },
    };
  } catch (err) {
    if (err.status === 404) {
      state.info = { ...FALLBACK_INFO };
    } else if (err.status === 401) {
      state.info = { ...FALLBACK_INFO, auth_required: true, role: null };
    } else {
      // not known whether the server needs a key (unreachable, 5xx, a key fetch refused)
      state.info = { ...FALLBACK_INFO, auth_required: null, role: null };
      state.infoFailed = true;
      showError($("filters-note"), err);
    }
  }
  state.infoLoaded = true;
  applyInfo();
}

function applyInfo() {
  const { threshold, top_k: topK, max_top_k: maxTopK } = state.info;
  const slider = $("min-score");
  slider.min = String(Math.min(0, threshold.min_score));
  if (!state.thresholdTouched) slider.value = String(threshold.min_score);
  $("min-score-default").textContent =
    `Default ${thresholdText(threshold.min_score)} (${threshold.source})`;
  showThreshold();
  const topKInput = $("top-k");
  topKInput.max = String(maxTopK);
  if (!state.topKTouched) topKInput.value = String(topK);
  applyRole();
}

function showThreshold() {
  // untouched, the server's default applies as it is, whatever step the slider shows
  const value = state.thresholdTouched
    ? (state.exactThreshold ?? Number($("min-score").value))
    : state.info.threshold.min_score;
  const text = thresholdText(value);
  $("min-score-value").textContent = text;
  $("min-score").setAttribute("aria-valuetext", text);
}

// ------------------------------------------------------------------ filters from /stats

async function loadStats() {
  try {
    state.stats = await api("stats");
    // an error of an earlier load of the stats is over; one of /info's stays shown
    if (!state.infoFailed) clearNote($("filters-note"));
  } catch (err) {
    state.stats = null;
    if (err.status !== 401) showError($("filters-note"), err);
  }
  fillFilters();
}

function fieldStats(key) {
  const metadata = (state.stats && state.stats.metadata) || {};
  return metadata[key] || null;
}

function fillFilters() {
  for (const key of FILTER_KEYS) {
    const stats = fieldStats(key);
    const values = stats ? Object.keys(stats.values).sort((a, b) => a.localeCompare(b)) : [];
    const select = $(key);
    const chosen = select.value;
    const any = select.options[0];
    select.replaceChildren(any);
    for (const value of values) {
      const option = el("option", "", `${isolated(value)} (${stats.values[value]})`);
      option.value = value;
      select.append(option);
    }
    // Kept even when no longer listed: refreshed stats must not change the search behind
    // the user's back (or drop a value a link chose).
    selectValue(select, chosen);
    select.disabled = select.options.length === 1;
    const list = $(`${key}-values`);
    list.replaceChildren(
      ...values.map((value) => {
        const option = el("option");
        option.value = value;
        return option;
      }),
    );
  }
  const dates = fieldStats(DATE_KEY);
  const hint = $("date-hint");
  for (const id of ["date-from", "date-to"]) {
    const input = $(id);
    // /stats gives a range only when every value is a date; datetimes keep their day.
    input.min = dates && typeof dates.min === "string" ? dates.min.slice(0, 10) : "";
    input.max = dates && typeof dates.max === "string" ? dates.max.slice(0, 10) : "";
  }
  hint.textContent =
    dates && typeof dates.min === "string"
      ? `Documents are dated from ${dates.min.slice(0, 10)} to ${dates.max.slice(0, 10)}.`
      : "";
}

// Selects `value`, adding it as an option (its text the value alone) when the list lacks it:
// /stats lists only the most common values, and a link may name any other.
function selectValue(select, value) {
  if (value && ![...select.options].some((option) => option.value === value)) {
    const option = el("option", "", isolated(value));
    option.value = value;
    select.append(option);
    select.disabled = false;
  }
  select.value = value;
}

// ------------------------------------------------------------------ search

const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

// /stats lists values as text, so "2" stands for a stored 2 as well as "2" (and "true" for
// true): the value as JSON would have it, or undefined when the text is all it can be.
function typedValue(text) {
  if (text === "true") return true;
  if (text === "false") return false;
  if (!JSON_NUMBER.test(text)) return undefined;
  const number = Number(text);
  // Past 2**53 the number would be another one: the text alone is then the honest filter.
  if (!Number.isFinite(number)) return undefined;
  if (/^-?\d+$/.test(text) && !Number.isSafeInteger(number)) return undefined;
  return number; // 1e+20 (a float /stats lists): sent as one (requestJson)
}

function buildRequest() {
  const request = { query: $("query").value.trim() };
  const filters = {};
  const clauses = [];
  for (const key of FILTER_KEYS) {
    const value = $(key).value;
    if (!value) continue;
    const typed = typedValue(value);
    // A filter list must hold one type, so "either spelling" is an $or in `where`.
    if (typed === undefined) filters[key] = value;
    else clauses.push({ $or: [{ [key]: value }, { [key]: typed }] });
  }
  if (Object.keys(filters).length) request.filters = filters;
  const from = $("date-from").value;
  const to = $("date-to").value;
  if (from || to) {
    const range = {};
    if (from) range.$gte = from;
    if (to) range.$lte = to; // a bare date as $lte covers that whole day
    clauses.push({ [DATE_KEY]: range });
  }
  if (clauses.length) request.where = clauses.length === 1 ? clauses[0] : { $and: clauses };
  const topK = Number($("top-k").value);
  if (Number.isInteger(topK)) request.top_k = topK;
  // Unmoved, the slider sends nothing, so a calibrated default keeps applying.
  if (state.thresholdTouched) {
    request.min_score = state.exactThreshold ?? Number($("min-score").value);
  }
  return request;
}

function checkRequest(request) {
  if (!request.query) return ["query", "Type a question or keywords to search for."];
  const { top_k: topK } = request;
  const maxTopK = state.info.max_top_k;
  if (!Number.isInteger(topK) || topK < 1 || topK > maxTopK) {
    return ["top-k", `Results (top k) must be a whole number from 1 to ${maxTopK}.`];
  }
  const from = $("date-from").value;
  const to = $("date-to").value;
  if (from && to && from > to) return ["date-from", "The start date is after the end date."];
  return null;
}

function onSearch(event) {
  event.preventDefault();
  return submitSearch();
}

// What the form and an address on load go through alike: the checks, then the search.
// `note` (what the address asked for that the page ignored) is shown with the outcome.
async function submitSearch(note = "") {
  const request = buildRequest();
  const problem = checkRequest(request);
  if (problem) {
    const [field, message] = problem;
    endSearch(); // an answer still on its way is for a search that no longer counts
    clearResults();
    showError($("search-status"), new ApiError(0, "invalid_input", message, []));
    addNote($("search-status"), note);
    $(field).focus();
    return;
  }
  window.history.replaceState(null, "", addressWith(searchParams(request)));
  await runSearch(request, note);
}

// The search as the address keeps it, so a reload or a shared link runs it again: the query
// and only what the user set (an unmoved slider or the default top k follows the server's).
function searchParams(request) {
  const params = new URLSearchParams({ q: request.query });
  for (const key of FILTER_KEYS) {
    if ($(key).value) params.set(key, $(key).value);
  }
  for (const [id, name] of Object.entries(DATE_PARAMS)) {
    if ($(id).value) params.set(name, $(id).value);
  }
  if (request.min_score !== undefined) params.set("min_score", String(request.min_score));
  if (request.top_k !== state.info.top_k) params.set("top_k", String(request.top_k));
  return params;
}

// The current address with the page's parameters replaced by `params`; any other one (a
// proxy's, a campaign's) is kept as it was written, in its order.
function addressWith(params) {
  const url = new URL(window.location.href);
  const others = url.search
    .slice(1)
    .split("&")
    .filter((part) => part && !PAGE_PARAMS.includes(paramName(part)));
  url.search = [params.toString(), ...others].join("&");
  return url;
}

function paramName(part) {
  return new URLSearchParams(part).keys().next().value;
}

// Puts the search an address holds into the controls, before it runs. A top k goes into
// its field as written (the search's checks judge it, as a typed one); a threshold or date
// the controls cannot hold is left out, and the returned note says so ("" when none is).
function readAddress(params) {
  const ignored = [];
  const query = params.get("q");
  if (query !== null) $("query").value = query;
  for (const key of FILTER_KEYS) {
    if (params.get(key)) selectValue($(key), params.get(key));
  }
  for (const [id, name] of Object.entries(DATE_PARAMS)) {
    const value = params.get(name);
    if (value && !setDate($(id), value)) {
      ignored.push(`${name} ${quoted(value)} (not a date written YYYY-MM-DD)`);
    }
  }
  const minScore = params.get("min_score");
  const problem = minScore ? setThreshold(minScore) : "";
  if (problem) ignored.push(`min_score ${quoted(minScore)} (${problem})`);
  if (params.get("top_k")) {
    $("top-k").value = params.get("top_k");
    state.topKTouched = true;
  }
  return ignored.length ? `Ignored in the page address: ${ignored.join("; ")}.` : "";
}

function setDate(input, value) {
  // A date input empties itself for a day that does not exist (2021-02-30).
  input.value = ISO_DATE.test(value) ? value : "";
  return input.value === value;
}

// Moves the slider to `text` (counted as moved: it is sent), or says why it cannot.
function setThreshold(text) {
  const slider = $("min-score");
  const low = Number(slider.min);
  const high = Number(slider.max);
  const value = Number(text);
  if (!JSON_NUMBER.test(text) || value < low || value > high) {
    return `not a number from ${low} to ${high}`;
  }
  slider.value = text;
  // The slider moves in steps of 0.01: a finer threshold (0.455) is sent as written, not as
  // the step it shows (0.46), until the slider is moved.
  state.exactThreshold = Number(slider.value) === value ? null : value;
  state.thresholdTouched = true;
  showThreshold();
  return "";
}

// A threshold as the page shows it: two decimals, or as many as it has.
function thresholdText(value) {
  return Number(value.toFixed(2)) === value ? value.toFixed(2) : String(value);
}

// `text` cut to its first `limit` characters, "…" marking a cut, and its length. Counted and
// cut in characters (code points), not UTF-16 units: a cut through an emoji would leave half
// of it, and it would count twice.
function cut(text, limit) {
  const chars = Array.from(text);
  const shown = chars.length > limit ? `${chars.slice(0, limit).join("")}…` : text;
  return { shown, length: chars.length };
}

// A value from the address as a message quotes it: hidden characters escaped (a crafted link
// cannot reorder the message around it), and a long one cut short.
function quoted(value) {
  return `"${cut(visibleId(value), 40).shown}"`;
}

function addNote(target, note) {
  if (note) target.append(el("p", "address-note", note));
}

// What the search left unread of a long query (`truncated`): the message's last sentence, which
// says where the reading stopped. A no_keyword_match shows its whole message already.
function unreadNote(result) {
  if (result.truncated !== true || result.status === "no_keyword_match") return "";
  const said = /(?:The model|Keyword search) read only .*$/.exec(result.message || "");
  return said ? said[0] : "Only the start of the query was read: ask a shorter question.";
}

function endSearch() {
  state.searchSeq += 1;
  $("results-section").removeAttribute("aria-busy");
}

// The Search button stays enabled (and keeps focus) while a search runs: Enter or a click
// sends a newer search, whose answer is the only one shown. The busy state is aria-busy on
// the results and "Searching…" in the status.
async function runSearch(request, note = "") {
  const seq = ++state.searchSeq;
  state.lastAsked = request;
  const results = $("results-section");
  const status = $("search-status");
  results.setAttribute("aria-busy", "true");
  showMessage(status, "Searching…");
  addNote(status, note);
  try {
    const result = checkedAnswer(await api("query", { method: "POST", body: request, timeoutS: SEARCH_TIMEOUT_S }));
    if (seq !== state.searchSeq) return; // a newer search has been sent meanwhile
    state.lastRequest = request;
    renderResult(result);
    const unread = unreadNote(result);
    if (unread) status.append(el("p", "unread-note", unread));
    addNote(status, note);
  } catch (err) {
    if (seq !== state.searchSeq) return;
    clearResults();
    showError(status, err);
    addNote(status, note);
  } finally {
    if (seq === state.searchSeq) results.removeAttribute("aria-busy");
  }
}

// A /query answer of the shape this page reads, or an "unexpected answer" error.
function checkedAnswer(result) {
  const isMatch = (match) =>
    match !== null &&
    typeof match === "object" &&
    typeof match.id === "string" &&
    typeof match.score === "number" &&
    typeof (match.passage || match.text || "") === "string";
  const threshold = result.threshold;
  const fine =
    typeof result.status === "string" &&
    threshold !== null &&
    typeof threshold === "object" &&
    typeof threshold.min_score === "number" &&
    (result.status !== "ok" || (Array.isArray(result.matches) && result.matches.every(isMatch))) &&
    (result.near_misses == null ||
      (Array.isArray(result.near_misses) && result.near_misses.every(isMatch))) &&
    (result.best_rejected_score == null || typeof result.best_rejected_score === "number");
  if (!fine) throw unexpectedAnswer(200);
  return result;
}

function clearResults() {
  $("results").replaceChildren();
  $("rejected").replaceChildren();
  $("no-match").hidden = true;
}

function score(value) {
  return value.toFixed(3);
}

// A score beside its threshold: three decimals, or as many more as keep it on its side (0.5649
// in three is 0.565, not below a threshold of 0.565; 0.65113 is 0.651, below one of 0.6511).
function comparedText(value, threshold) {
  const below = value < threshold;
  for (let digits = 3; digits <= 17; digits += 1) {
    const text = (value + 0).toFixed(digits);
    if (Number(text) < threshold === below) return text;
  }
  return String(value);
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function renderResult(result) {
  clearResults();
  const threshold = result.threshold.min_score;
  const limit = `${thresholdText(threshold)} (${result.threshold.source})`;
  if (result.status === "ok") {
    let text = `${plural(result.matches.length, "match", "matches")} scored at least ${limit}.`;
    if (result.rejected > 0) {
      text += ` ${plural(result.rejected, "weaker candidate was", "weaker candidates were")} left out.`;
    }
    showMessage($("search-status"), text);
    $("results").append(...result.matches.map((match) => renderMatch(match, threshold, true)));
    return;
  }
  const panel = $("no-match");
  panel.hidden = false;
  $("show-rejected").hidden = true;
  $("show-rejected").removeAttribute("aria-disabled");
  $("no-match-bar").replaceChildren();
  if (result.status === "no_confident_match") {
    showMessage($("search-status"), "No confident match.");
    $("no-match-title").textContent = "No confident match";
    const best = result.best_rejected_score;
    $("no-match-text").textContent =
      best === null
        ? `No candidate reached the threshold of ${limit}.`
        : `The best candidate scored ${comparedText(best, threshold)}, below the threshold of ${limit}.`;
    if (best !== null) {
      const label = `best score ${comparedText(best, threshold)}, threshold ${thresholdText(threshold)}`;
      $("no-match-bar").append(scoreBar(best, threshold, label));
    }
    $("no-match-advice").textContent =
      "Rephrase the question, remove filters, or lower the minimum score to see weaker matches.";
    $("show-rejected").hidden = result.rejected === 0;
  } else if (result.status === "no_keyword_match") {
    showMessage($("search-status"), "No keyword match.");
    $("no-match-title").textContent = "No keyword match";
    $("no-match-text").textContent = result.message;
    // the page sends no mode: the server's own (KB_SEARCH_MODE) is keyword here, and the
    // page has no control to change it, so the advice names what the reader can do
    $("no-match-advice").textContent =
      "Use words the documents would contain: this service searches by keywords " +
      "(KB_SEARCH_MODE=keyword), not by meaning.";
  } else {
    showMessage($("search-status"), "Nothing to search.");
    $("no-match-title").textContent = "Nothing to search";
    $("no-match-text").textContent =
      "The knowledge base is empty, or no document passes the filters.";
    $("no-match-advice").textContent = "Remove some filters, or add documents.";
  }
}

async function showRejected() {
  const button = $("show-rejected");
  const request = state.lastRequest;
  if (!request || button.getAttribute("aria-disabled") === "true") return;
  // The answer belongs to the search shown now: once a newer one has been sent or shown,
  // the panel is not this answer's any more.
  const seq = state.searchSeq;
  const current = () => seq === state.searchSeq && request === state.lastRequest;
  button.setAttribute("aria-disabled", "true"); // not `disabled`: that would drop the focus
  try {
    const result = checkedAnswer(
      await api("query", {
        method: "POST",
        body: { ...request, explain: true },
        timeoutS: SEARCH_TIMEOUT_S,
      }),
    );
    if (!current()) return;
    const threshold = result.threshold.min_score;
    const misses = result.near_misses || [];
    $("rejected").replaceChildren(...misses.map((match) => renderMatch(match, threshold, false)));
    button.hidden = true;
    if (misses.length) $("rejected").querySelector(".match-id").focus();
    else showMessage($("search-status"), "No rejected candidates are left to show.");
  } catch (err) {
    if (!current()) return;
    showError($("search-status"), err);
  } finally {
    if (current()) button.removeAttribute("aria-disabled");
  }
}

function scoreBar(value, threshold, label) {
  const bar = el("div", "bar");
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", label);
  const fill = el("div", value >= threshold ? "bar-fill" : "bar-fill below");
  const percent = (x) => `${Math.max(0, Math.min(1, x)) * 100}%`;
  // CSSOM styles, not style attributes: the page's CSP allows only the former.
  fill.style.width = percent(value);
  const mark = el("div", "bar-mark");
  mark.style.left = percent(threshold);
  mark.title = `threshold ${thresholdText(threshold)}`;
  bar.append(fill, mark);
  return bar;
}

// A metadata value as its chip shows it: a list joined, a long value cut, with the whole of
// it in the chip's tooltip.
function chipText(value) {
  const whole = Array.isArray(value) ? value.map(String).join(", ") : String(value);
  return { shown: cut(whole, CHIP_PREVIEW_CHARS).shown, whole };
}

function renderMatch(match, threshold, deletable) {
  const card = $("match-template").content.firstElementChild.cloneNode(true);
  card.dataset.id = match.id;
  const title = card.querySelector(".match-id");
  title.replaceChildren(...idNodes(match.id));
  title.tabIndex = -1;
  const shownScore = comparedText(match.score, threshold);
  card.querySelector(".score").textContent = `score ${shownScore}`;
  const label = `score ${shownScore} of 1, threshold ${thresholdText(threshold)}`;
  card.querySelector(".bar-slot").append(scoreBar(match.score, threshold, label));
  const chips = card.querySelector(".chips");
  for (const [key, value] of Object.entries(match.metadata || {})) {
    const chip = el("li", "chip");
    // dir=auto isolates each part: an override in a key or value cannot reorder the others.
    const name = el("span", "chip-key", `${key}: `);
    const { shown, whole } = chipText(value);
    const content = el("span", "chip-value", shown);
    if (shown !== whole) content.title = whole;
    name.dir = "auto";
    content.dir = "auto";
    chip.append(name, content);
    chips.append(chip);
  }
  chips.hidden = chips.childElementCount === 0;
  const shown = (match.passage || match.text).trim();
  card.querySelector(".passage-label").hidden = !match.passage;
  const text = card.querySelector(".text");
  const preview = cut(shown, TEXT_PREVIEW_CHARS);
  text.textContent = preview.shown;
  if (preview.shown !== shown) {
    const more = el("details", "more");
    const all = el("p", "text", shown);
    all.dir = "auto";
    more.append(el("summary", "", `Show all ${preview.length} characters`), all);
    text.after(more);
  }
  const button = card.querySelector(".delete-button");
  if (deletable) {
    button.setAttribute("aria-label", `Delete ${visibleId(match.id)}`);
    button.hidden = state.info.role !== "write";
    button.addEventListener("click", () => deleteDocument(match.id, card, button));
  } else {
    card.querySelector(".card-actions").remove();
    card.classList.add("rejected-card");
  }
  return card;
}

// ------------------------------------------------------------------ writes

async function deleteDocument(id, card, button) {
  const shown = visibleId(id);
  if (!window.confirm(`Delete the document "${shown}"? This cannot be undone.`)) return;
  button.disabled = true;
  const status = $("search-status");
  const seq = state.searchSeq;
  let done;
  try {
    const result = await api("delete", { method: "POST", body: { ids: [id] } });
    done = `Deleted "${visibleId(result.ids[0] || id)}".`;
  } catch (err) {
    if (err.status !== 404 || err.code !== "not_found") {
      button.disabled = false;
      if (seq === state.searchSeq) showError(status, err);
      return;
    }
    done = `"${shown}" was already deleted.`; // by someone else since the search: gone all the same
  }
  card.remove();
  for (const other of document.querySelectorAll("#results > li, #rejected > li")) {
    if (other.dataset.id === id) other.remove(); // a newer search's card of it
  }
  loadStats();
  // a newer search shown meanwhile keeps its own status (and the focus its Search button)
  if (seq !== state.searchSeq) return;
  const left = $("results").childElementCount;
  showMessage(status, left ? done : `${done} No results are left.`);
  status.focus(); // the focused button is gone: keep keyboard users in the results
}

function addRequest() {
  const value = (id) => $(id).value.trim();
  const request = { text: $("add-text").value };
  if (value("add-id")) request.id = value("add-id");
  const metadata = {};
  for (const key of ["category", "difficulty", "author", "date"]) {
    if (value(`add-${key}`)) metadata[key] = value(`add-${key}`);
  }
  const tags = value("add-tags")
    .split(",")
    .map((tag) => tag.trim())
    .filter(Boolean);
  if (tags.length) metadata.tags = tags;
  if (Object.keys(metadata).length) request.metadata = metadata;
  if ($("add-upsert").checked) request.on_conflict = "upsert";
  return request;
}

async function onAdd(event) {
  event.preventDefault();
  const status = $("add-status");
  const request = addRequest();
  if (!request.text.trim()) {
    showError(status, new ApiError(0, "invalid_input", "The text must not be empty.", []));
    $("add-text").focus();
    return;
  }
  $("add-button").disabled = true;
  showMessage(status, "Adding…");
  try {
    const result = await api("add", { method: "POST", body: request });
    const id = visibleId(result.ids[0]);
    let text;
    if (result.added) text = `Added "${id}".`;
    else if (result.updated) text = `Replaced "${id}".`;
    else text = `Nothing written: "${id}" is already stored with this content.`;
    for (const duplicate of result.duplicates || []) {
      const existing = visibleId(duplicate.existing);
      text += ` It nearly duplicates "${existing}" (score ${score(duplicate.score)}).`;
    }
    showMessage(status, text);
    $("add-form").reset();
    loadStats();
  } catch (err) {
    showError(status, err);
  } finally {
    $("add-button").disabled = false;
  }
}

// ------------------------------------------------------------------ start-up

async function onKey(event) {
  event.preventDefault();
  const key = currentKey();
  await loadInfo();
  // Kept only once /info has accepted it: a rejected key must not come back on reload.
  // (Stored before the stats load, in the same turn as the key's status is shown.)
  if (state.checkedKey === key) {
    if (state.info.role) storeKey(key);
    else if (state.info.auth_required) storeKey("");
  }
  await loadStats();
  // the search last asked (answered, or refused for want of this key) runs with it
  if (state.lastAsked && state.info.role) await runSearch(state.lastAsked);
}

async function onForgetKey() {
  storeKey("");
  $("api-key").value = "";
  await refresh();
  $("api-key").focus();
}

async function refresh() {
  await loadInfo();
  await loadStats();
}

async function start() {
  $("api-key").value = storedKey();
  $("key-form").addEventListener("submit", onKey);
  $("api-key").addEventListener("input", updateKeyStatus);
  $("forget-key").addEventListener("click", onForgetKey);
  $("search-form").addEventListener("submit", onSearch);
  $("add-form").addEventListener("submit", onAdd);
  $("show-rejected").addEventListener("click", showRejected);
  $("min-score").addEventListener("input", () => {
    state.exactThreshold = null;
    state.thresholdTouched = Number($("min-score").value) !== state.info.threshold.min_score;
    showThreshold();
  });
  $("reset-threshold").addEventListener("click", () => {
    state.thresholdTouched = false;
    state.exactThreshold = null;
    $("min-score").value = String(state.info.threshold.min_score);
    showThreshold();
  });
  $("top-k").addEventListener("input", () => {
    state.topKTouched = true;
  });
  await refresh(); // first: the dropdowns' values come from /stats, the slider's range from /info
  if (state.info.auth_required && !state.info.role) $("api-key").focus();
  const params = new URLSearchParams(window.location.search);
  const note = readAddress(params);
  if (params.get("q")) {
    await submitSearch(note); // the same checks as a typed search ("  " is no query)
  } else if (note) {
    showMessage($("search-status"), note);
  }
  document.body.dataset.ready = "true"; // lets tests wait for start-up to finish
}

start();
