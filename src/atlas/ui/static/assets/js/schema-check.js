// Checks one form value against its property's JSON Schema in the run dialog (issue #16, item 7), so the user
// learns at the field, before anything is sent, what the daemon would refuse. Only the keywords the dialog builds
// fields for are checked: type, enum, const, minimum/maximum (and the exclusive ones), multipleOf,
// minLength/maxLength, pattern, and minItems/maxItems/minProperties/maxProperties/required on a JSON field's top
// level. The daemon's validator (jsonschema, full draft 2020-12) stays the authority: anything beyond this subset
// still comes back as a `payload_invalid` and is shown at its field.

const JSON_TYPES = ["string", "integer", "number", "boolean", "object", "array", "null"];

function typeOfValue(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

function matchesType(value, type) {
  const actual = typeOfValue(value);
  return actual === type || (type === "number" && actual === "integer");
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const num = (value) => typeof value === "number" && Number.isFinite(value);

/** The first problem with `value` for schema `prop`, as a sentence naming the field `label`; null when it passes. */
export function checkValue(prop, value, label) {
  if (!prop || typeof prop !== "object") return null;
  const field = `Field "${label}"`;
  const types = (Array.isArray(prop.type) ? prop.type : [prop.type]).filter((t) => JSON_TYPES.includes(t));
  if (types.length && !types.some((t) => matchesType(value, t))) {
    return `${field} must be ${types.map((t) => (t === "integer" ? "a whole number" : t === "array" ? "a JSON array"
      : t === "object" ? "a JSON object" : t === "null" ? "null" : `a ${t}`)).join(" or ")}`;
  }
  if (Array.isArray(prop.enum) && !prop.enum.some((option) => same(option, value))) {
    return `${field} must be one of ${prop.enum.map((option) => JSON.stringify(option)).join(", ")}`;
  }
  if ("const" in prop && !same(prop.const, value)) return `${field} must be ${JSON.stringify(prop.const)}`;
  if (num(value)) {
    if (num(prop.minimum) && value < prop.minimum) return `${field} must be at least ${prop.minimum}`;
    if (num(prop.maximum) && value > prop.maximum) return `${field} must be at most ${prop.maximum}`;
    if (num(prop.exclusiveMinimum) && value <= prop.exclusiveMinimum) {
      return `${field} must be greater than ${prop.exclusiveMinimum}`;
    }
    if (num(prop.exclusiveMaximum) && value >= prop.exclusiveMaximum) {
      return `${field} must be less than ${prop.exclusiveMaximum}`;
    }
    if (num(prop.multipleOf) && prop.multipleOf > 0) {
      const ratio = value / prop.multipleOf;
      if (Math.abs(ratio - Math.round(ratio)) > 1e-9) return `${field} must be a multiple of ${prop.multipleOf}`;
    }
  }
  if (typeof value === "string") {
    const length = [...value].length; // code points, as JSON Schema counts them
    if (num(prop.minLength) && length < prop.minLength) {
      return `${field} must be at least ${prop.minLength} character${prop.minLength === 1 ? "" : "s"} long`;
    }
    if (num(prop.maxLength) && length > prop.maxLength) {
      return `${field} must be at most ${prop.maxLength} character${prop.maxLength === 1 ? "" : "s"} long`;
    }
    if (typeof prop.pattern === "string") {
      let re = null;
      try {
        re = new RegExp(prop.pattern, "u");
      } catch {
        re = null; // a pattern JavaScript cannot compile: the daemon decides
      }
      if (re && !re.test(value)) return `${field} must match the pattern ${prop.pattern}`;
    }
  }
  if (Array.isArray(value)) {
    if (num(prop.minItems) && value.length < prop.minItems) return `${field} needs at least ${prop.minItems} item(s)`;
    if (num(prop.maxItems) && value.length > prop.maxItems) return `${field} takes at most ${prop.maxItems} item(s)`;
  }
  if (typeOfValue(value) === "object") {
    const keys = Object.keys(value);
    if (num(prop.minProperties) && keys.length < prop.minProperties) {
      return `${field} needs at least ${prop.minProperties} key(s)`;
    }
    if (num(prop.maxProperties) && keys.length > prop.maxProperties) {
      return `${field} takes at most ${prop.maxProperties} key(s)`;
    }
    const missing = (Array.isArray(prop.required) ? prop.required : []).filter((key) => !(key in value));
    if (missing.length) return `${field} is missing ${missing.map((key) => `"${key}"`).join(", ")}`;
  }
  return null;
}
