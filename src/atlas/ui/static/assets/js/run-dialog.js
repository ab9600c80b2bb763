// The run-job dialog (spec §12): a form generated from the trigger signal's JSON Schema, submitted as a nowait
// trigger with an Idempotency-Key minted when the dialog opened; on the 202 it navigates straight to the run.
// Opened with `rerun` (issue #16), the same form is pre-filled with a finished run's payload and sent to
// POST /api/sessions/<sid>/rerun instead.

import { ApiError, NETWORK_MESSAGE, request } from "./api.js";
import { fill, h, newIdempotencyKey, prettifyId } from "./dom.js";
import { navigate } from "./router.js";
import { checkValue } from "./schema-check.js";

const EMPTY_FORM_TEXT = "This will trigger the job immediately.";
let dialogCount = 0;

/** How a signal is named in the UI: its title, else its description, else its id (spec §12). */
export function signalLabel(id, signal) {
  return signal?.title || signal?.description || id;
}

/** The first non-null JSON type of a property ("string" when absent). */
function typeOf(prop) {
  const t = Array.isArray(prop.type) ? prop.type.find((x) => x !== "null") : prop.type;
  return typeof t === "string" ? t : "string";
}

/** One form control for one schema property, with its label, help, error slot and a reader. */
function makeField(name, prop, required, prefix, index) {
  prop = prop && typeof prop === "object" ? prop : {};
  const id = `${prefix}-f${index}`;
  const label = typeof prop.title === "string" && prop.title ? prop.title : name;
  const helpId = `${id}-help`;
  const errorId = `${id}-error`;
  const type = typeOf(prop);
  const hasDefault = Object.prototype.hasOwnProperty.call(prop, "default");
  const described = [prop.description ? helpId : null, errorId].filter(Boolean).join(" ");
  const common = { id, name, "aria-describedby": described, required: required || null };
  let input;
  let kind;
  if (Array.isArray(prop.enum)) {
    kind = "enum";
    const options = prop.enum.map((value, i) => h("option", { value: String(i) }, value === null ? "null" : String(value)));
    input = h("select", common, h("option", { value: "" }, required ? "Choose…" : "—"), options);
    if (hasDefault) {
      const at = prop.enum.findIndex((value) => JSON.stringify(value) === JSON.stringify(prop.default));
      if (at !== -1) input.value = String(at);
    }
  } else if (type === "boolean") {
    kind = "boolean";
    input = h("input", { ...common, type: "checkbox", required: null, checked: hasDefault && prop.default === true });
  } else if (type === "integer" || type === "number") {
    kind = type;
    input = h("input", { ...common, type: "number", step: type === "integer" ? "1" : "any",
      inputmode: type === "integer" ? "numeric" : "decimal", min: prop.minimum ?? null, max: prop.maximum ?? null,
      value: hasDefault && typeof prop.default === "number" ? String(prop.default) : null });
  } else if (type === "object" || type === "array") {
    kind = "json";
    input = h("textarea", { ...common, rows: "3", spellcheck: "false", class: "mono",
      placeholder: type === "object" ? '{"key": "value"}' : '["a", "b"]' });
    if (hasDefault) input.value = JSON.stringify(prop.default);
  } else {
    kind = "text";
    input = h("input", { ...common, type: "text", autocomplete: "off",
      value: hasDefault && prop.default !== null ? String(prop.default) : null });
  }
  const marker = required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null;
  const labelEl = h("label", { for: id }, label, marker, required ? h("span", { class: "visually-hidden" }, " (required)") : null);
  const help = prop.description ? h("p", { id: helpId, class: "help" }, prop.description) : null;
  const error = h("p", { id: errorId, class: "field-error", hidden: true });
  const el = kind === "boolean"
    ? h("div", { class: "field field-check", dataset: { field: name } }, h("div", { class: "check-row" }, input, labelEl), help, error)
    : h("div", { class: "field", dataset: { field: name } }, labelEl, input, help, error);

  const setError = (message) => {
    error.textContent = message;
    error.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    el.classList.toggle("has-error", Boolean(message));
  };

  /** {value} to send, {skip} to leave it out, or {error}: the control's text, then the property's schema. */
  const read = () => {
    const got = readRaw();
    if (got.error || got.skip || kind === "enum") return got;
    const problem = checkValue(prop, got.value, label);
    return problem ? { error: problem } : got;
  };
  const readRaw = () => {
    if (kind === "boolean") {
      return input.checked || required || hasDefault ? { value: input.checked } : { skip: true };
    }
    if ((kind === "integer" || kind === "number") && input.validity.badInput) {
      return { error: `Field "${label}" must be a number` };
    }
    const raw = input.value;
    if (raw.trim() === "") return required ? { error: `Field "${label}" is required` } : { skip: true };
    if (kind === "enum") return { value: prop.enum[Number(raw)] };
    if (kind === "integer" || kind === "number") return { value: Number(raw) };
    if (kind === "json") {
      try {
        return { value: JSON.parse(raw) };
      } catch {
        return { error: `Field "${label}" must be valid JSON` };
      }
    }
    return { value: raw };
  };
  /** Pre-fill the control with a recorded value (a re-run's original payload); values it cannot show are left. */
  const setValue = (value) => {
    if (value === undefined || value === null) return;
    if (kind === "enum") {
      const at = prop.enum.findIndex((option) => JSON.stringify(option) === JSON.stringify(value));
      if (at !== -1) input.value = String(at);
    } else if (kind === "boolean") {
      input.checked = value === true;
    } else if (kind === "integer" || kind === "number") {
      if (typeof value === "number") input.value = String(value);
    } else if (kind === "json") {
      input.value = JSON.stringify(value, null, 2);
    } else {
      input.value = typeof value === "string" ? value : JSON.stringify(value);
    }
  };
  // Inline validation (issue #16): typing clears the field's error (a stale one misleads), and leaving a changed
  // field checks it at once, so a wrong value is flagged before Start run.
  input.addEventListener("input", () => setError(""));
  input.addEventListener("change", () => {
    const got = read();
    setError(got.error || "");
  });
  return { name, label, el, input, setError, read, setValue };
}

function schemaProperties(schema) {
  if (!schema || typeof schema !== "object" || !schema.properties || typeof schema.properties !== "object") return [];
  return Object.entries(schema.properties);
}

/**
 * Open the dialog for `job` ({id, name, triggers}) of `workspaceId`; `signalsById` maps signal id → signal spec
 * (with `schema`). `opener` gets the focus back when the dialog closes. With `rerun` ({sessionId, signalId,
 * payload}) it re-runs that finished session: the form starts from its payload (keys the form has no field for are
 * sent as they were; a signal without a schema gets one JSON box for the whole payload).
 */
export function openRunDialog({ workspaceId, job, signalsById, opener, rerun = null }) {
  const triggers = rerun ? [rerun.signalId] : job.triggers || [];
  if (!triggers.length) return;
  const prefix = `run${++dialogCount}`;
  const jobName = job.name || job.title || prettifyId(job.id);
  const idempotencyKey = newIdempotencyKey(); // minted once: a double click cannot start two runs
  let signalId = triggers[0];
  let fields = [];
  let inFlight = false;

  const titleId = `${prefix}-title`;
  const topError = h("div", { class: "form-error", role: "alert", hidden: true });
  const fieldsBox = h("div", { class: "fields" });
  const submitText = rerun ? "Start re-run" : "Start run";
  const submit = h("button", { type: "submit", class: "primary" }, submitText);
  const original = rerun && rerun.payload && typeof rerun.payload === "object" && !Array.isArray(rerun.payload)
    ? rerun.payload : null;
  let wholePayload = false; // a re-run of a signal without schema fields: one JSON box holds the payload
  const cancel = h("button", { type: "button", onclick: () => close() }, "Cancel");

  let chooser = null;
  if (triggers.length > 1) {
    chooser = h("fieldset", { class: "trigger-choice" }, h("legend", {}, "Trigger"),
      triggers.map((id, i) => {
        const radioId = `${prefix}-sig${i}`;
        return h("div", { class: "check-row" },
          h("input", { type: "radio", name: `${prefix}-signal`, id: radioId, value: id, checked: i === 0,
            onchange: () => {
              signalId = id;
              renderFields();
            } }),
          h("label", { for: radioId }, signalLabel(id, signalsById.get(id))));
      }));
  }

  const form = h("form", { novalidate: true, onsubmit: (event) => {
    event.preventDefault();
    start();
  } },
  h("h2", { id: titleId }, rerun ? `Re-run ${jobName}?` : `Run ${jobName}?`),
  topError, chooser, fieldsBox,
  h("div", { class: "dialog-actions" }, cancel, submit));
  const dialog = h("dialog", { class: "dialog run-dialog", "aria-labelledby": titleId }, form);

  function renderFields() {
    clearErrors();
    const schema = signalsById.get(signalId)?.schema;
    const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
    fields = schemaProperties(schema).map(([name, prop], i) => makeField(name, prop, required.has(name), prefix, i));
    wholePayload = Boolean(rerun) && !fields.length;
    if (wholePayload) {
      const box = makeField("payload", { type: "object", title: "Payload (JSON)",
        description: "The original run's input; edit it to re-run with another" }, false, prefix, "p");
      box.input.rows = 8; // room for a whole payload
      box.setValue(original ?? rerun.payload);
      fields = [box];
      fill(fieldsBox, box.el);
      return;
    }
    if (original) for (const f of fields) f.setValue(original[f.name]);
    if (!fields.length) {
      fill(fieldsBox, h("p", { class: "immediate" }, EMPTY_FORM_TEXT));
      return;
    }
    const anyRequired = fields.some((f) => required.has(f.name));
    fill(fieldsBox, ...fields.map((f) => f.el),
      anyRequired ? h("p", { class: "help" }, h("span", { class: "req", "aria-hidden": "true" }, "*"), " required") : null);
  }

  function clearErrors() {
    topError.hidden = true;
    topError.replaceChildren();
    for (const f of fields) f.setError("");
  }

  function showTop(...lines) {
    fill(topError, ...lines.map((line) => h("p", {}, line)));
    topError.hidden = false;
  }

  function close() {
    if (inFlight) return;
    dialog.close();
  }

  dialog.addEventListener("cancel", (event) => {
    if (inFlight) event.preventDefault(); // Esc while starting: wait for the answer
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected && !navigated) opener.focus();
  });

  let navigated = false;

  async function start() {
    if (inFlight) return;
    clearErrors();
    // A re-run keeps the original keys the form has no field for (the schema may not list them all).
    let payload = original && !wholePayload
      ? Object.fromEntries(Object.entries(original).filter(([key]) => !fields.some((f) => f.name === key))) : {};
    const invalid = [];
    for (const f of fields) {
      const got = f.read();
      if (got.error) {
        f.setError(got.error);
        invalid.push(f);
      } else if (!got.skip) {
        payload[f.name] = got.value;
      }
    }
    if (wholePayload) {
      const value = payload.payload;
      if (value !== undefined && (value === null || typeof value !== "object" || Array.isArray(value))) {
        fields[0].setError(`Field "${fields[0].label}" must be a JSON object`);
        invalid.push(fields[0]);
      }
      payload = value; // undefined (left empty): the server re-runs with the original payload
    }
    if (invalid.length) {
      invalid[0].input.focus();
      return; // nothing is sent while a required field is empty
    }
    inFlight = true;
    submit.disabled = true;
    cancel.disabled = true;
    submit.textContent = "Starting…";
    form.setAttribute("aria-busy", "true");
    try {
      const response = rerun
        ? await request(`/api/sessions/${encodeURIComponent(rerun.sessionId)}/rerun`, { method: "POST",
          body: payload === undefined ? {} : { payload } })
        : await request(`/api/workspaces/${encodeURIComponent(workspaceId)}/signals/${encodeURIComponent(signalId)}?nowait=true`,
          { method: "POST", body: { payload }, headers: { "Idempotency-Key": idempotencyKey } });
      const accepted = await response.json();
      if (!accepted || typeof accepted.sessionId !== "string") {
        throw new ApiError(response.status, "bad_answer", "The daemon accepted the run but did not say which session it is");
      }
      navigated = true;
      inFlight = false;
      dialog.close();
      navigate(`/sessions/${encodeURIComponent(accepted.sessionId)}`);
    } catch (exc) {
      inFlight = false;
      submit.disabled = false;
      cancel.disabled = false;
      submit.textContent = submitText;
      form.removeAttribute("aria-busy");
      showError(exc);
    }
  }

  function showError(exc) {
    if (!(exc instanceof ApiError)) {
      showTop(NETWORK_MESSAGE);
      return;
    }
    if (exc.network) {
      showTop(NETWORK_MESSAGE);
      return;
    }
    const leftover = [];
    let firstField = null;
    if (exc.code === "payload_invalid" && Array.isArray(exc.details)) {
      for (const detail of exc.details) {
        const path = typeof detail?.path === "string" ? detail.path : "";
        const message = typeof detail?.message === "string" ? detail.message : "Invalid value";
        let name = path.split(".")[0];
        const missing = /^'(.+)' is a required property$/.exec(message);
        if (!name && missing) name = missing[1];
        const field = fields.find((f) => f.name === name);
        if (field) {
          field.setError(missing && !path ? `Field "${field.label}" is required` : message);
          firstField ??= field;
        } else {
          leftover.push(path ? `${path}: ${message}` : message);
        }
      }
    }
    showTop(exc.describe(), ...leftover);
    (firstField ? firstField.input : submit).focus();
  }

  renderFields();
  document.body.append(dialog);
  dialog.showModal();
  const first = fields[0]?.input || (chooser ? chooser.querySelector("input") : submit);
  first.focus();
}
