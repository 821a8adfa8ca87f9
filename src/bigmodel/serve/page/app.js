// The bigmodel web page: reads GET /v1/model, builds a form from its input_schema, posts one record to
// /v1/predict and shows what comes back; streams /v1/generate when the model can generate text.
// Plain browser JavaScript: no build step, no libraries, nothing fetched from outside this server.
"use strict";

(() => {
  const KEY_STORE = "bigmodel-api-key";
  const CANVAS_PIXELS = 280; // the drawing canvas' own resolution (it is shown at this size or smaller)
  const MAX_READ_PIXELS = 1024; // an uploaded picture sent as numbers is read at most this big a side
  const MAX_BARS = 10;
  const $ = (id) => document.getElementById(id);
  const state = { model: null, fields: [], generating: null };

  // --- small DOM helpers -----------------------------------------------------------------------------

  /** el("p", {class: "x"}, "text", child) — attributes set with setAttribute, text as text nodes. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let uid = 0;
  const newId = (stem) => `${String(stem).replace(/[^A-Za-z0-9_-]/g, "_")}-${++uid}`;

  /** A number as a person reads it; counts as integers, scores with 4 decimals (1.0 stays "1.0000"). */
  function formatNumber(value, count = Number.isInteger(value) && Math.abs(value) > 1) {
    if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
    if (count && Number.isInteger(value)) return value.toLocaleString("en-US");
    if (Math.abs(value) >= 100) return value.toFixed(2);
    return value.toFixed(4);
  }

  /** Whether a table column (or row) of numbers holds counts: JSON writes 1.0 as 1, so integers alone
   * do not tell; a count-like name or an integer above 1 does. */
  const COUNT_NAME = /support|count|tokens|items|examples|images|size|steps|num|^n_|absent/i;
  const isCountColumn = (name, values) =>
    values.every((v) => typeof v !== "number" || Number.isInteger(v)) && (COUNT_NAME.test(name) || values.some((v) => v > 1));

  function compactCount(n) {
    const units = [[1e9, "B"], [1e6, "M"], [1e3, "k"]];
    for (const [size, unit] of units) if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
    return String(n);
  }

  const percent = (p) => `${(p * 100).toFixed(1)} %`;

  // --- API key and requests --------------------------------------------------------------------------

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return ""; // storage disabled: the key box still works for this page view
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      /* storage disabled */
    }
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** fetch with the API key; a non-2xx answer becomes an ApiError carrying the server's message. */
  async function api(path, options = {}) {
    const key = storedKey();
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, `Could not reach the server (${error.message}). Is it still running?`);
    }
    if (!response.ok) throw await errorOf(response, Boolean(key));
    return response;
  }

  async function errorOf(response, sentKey) {
    if (response.status === 401) {
      return new ApiError(401, sentKey
        ? "The server did not accept this API key. Check it, type it in the “API key” box at the top and press Save."
        : "This server needs an API key. Type it in the “API key” box at the top and press Save.");
    }
    let message = "";
    try {
      const text = await response.text();
      try {
        const body = JSON.parse(text);
        message = body.error ?? body.detail ?? text;
      } catch {
        message = text;
      }
    } catch {
      /* no body */
    }
    if (typeof message !== "string") message = JSON.stringify(message);
    message = message.trim() || response.statusText || "the request failed";
    const retry = response.headers.get("Retry-After");
    if (retry) message += ` (try again in ${retry} s)`;
    return new ApiError(response.status, message);
  }

  /** Show an error in a notice box; a 401 also points at the key box. */
  function showError(box, error) {
    const status = error.status ? `Error ${error.status}` : "Error";
    box.replaceChildren(el("strong", {}, `${status}: `), error.message || String(error));
    box.hidden = false;
    box.classList.add("error");
    const keyInput = $("api-key");
    keyInput.classList.toggle("attention", error.status === 401);
    if (error.status === 401) keyInput.focus();
  }

  function hideError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  function setupKeyForm() {
    const input = $("api-key");
    input.value = storedKey();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      storeKey(input.value.trim());
      input.classList.remove("attention");
      loadModel();
    });
    $("key-clear").addEventListener("click", () => {
      input.value = "";
      storeKey("");
      loadModel();
    });
  }

  // --- loading the model -----------------------------------------------------------------------------

  async function loadModel() {
    const status = $("status");
    hideError(status);
    let model;
    try {
      model = await (await api("/v1/model")).json();
    } catch (error) {
      $("subtitle").textContent = "The model could not be loaded";
      for (const id of ["try", "generate", "results", "model-card"]) $(id).hidden = true;
      showError(status, error);
      return;
    }
    state.model = model;
    const card = model.card || {};
    $("subtitle").textContent = [model.task, card.recipe].filter(Boolean).join(" · ");
    document.title = `${card.recipe || model.task} · bigmodel`;
    $("version").textContent = model.version ? `v${model.version}` : "";
    $("results").hidden = true;
    // A model that generates text takes a prompt: the streaming box replaces the one-shot form.
    buildForm(model.can_generate ? {} : model.input_schema || {});
    $("generate").hidden = !model.can_generate;
    $("try").hidden = Boolean(model.can_generate);
    renderCard(model);
  }

  // --- the form, built from input_schema -------------------------------------------------------------

  function resolve(schema, root) {
    if (schema && typeof schema.$ref === "string" && schema.$ref.startsWith("#/")) {
      const target = schema.$ref.slice(2).split("/").reduce((node, key) => node?.[key], root);
      return resolve(target || {}, root);
    }
    for (const key of ["anyOf", "oneOf"]) {  // optional fields: [{...}, {"type": "null"}]
      if (Array.isArray(schema?.[key])) {
        const option = schema[key].find((s) => s && s.type !== "null");
        if (option) {
          const outer = { ...schema };
          delete outer[key];
          return { ...resolve(option, root), ...outer }; // the field's own description and kind win
        }
      }
    }
    return schema || {};
  }

  function kindOf(schema) {
    const declared = schema["x-bigmodel-kind"];
    const media = String(schema.contentMediaType || "");
    if (declared === "image" || declared === "audio") return declared;
    if (isPictureArray(schema)) return "image"; // a grey picture sent as numbers (8×8 digits)
    if (schema.contentEncoding === "base64") return media.startsWith("audio") ? "audio" : "image";
    if (Array.isArray(schema.enum)) return "enum";
    const type = typeOf(schema);
    if (declared && declared !== "array") return declared;
    if (type === "integer" || type === "number") return "number";
    if (type === "boolean") return "boolean";
    if (type === "string") return "text";
    if (type === "array" || declared === "array") {
      if ((schema.items || {}).type === "string") return "words";
      if (arrayShape(schema)) return "numbers";
    }
    return "json";
  }

  const typeOf = (schema) => (Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type);
  const nullable = (schema) => Array.isArray(schema.type) && schema.type.includes("null");

  /** The shape of nested number arrays: fixed sizes ([1, 8, 8]), [null] for a list of any length; null
   * when the leaves are not numbers or an inner size is not fixed. */
  function arrayShape(schema) {
    const shape = [];
    let node = schema;
    while (typeOf(node) === "array") {
      shape.push(node.minItems !== undefined && node.minItems === node.maxItems ? node.minItems : null);
      node = node.items || {};
    }
    if (typeOf(node) !== "number" && typeOf(node) !== "integer") return null;
    return shape.length > 1 && shape.every(Number.isInteger) ? shape : shape.length === 1 ? shape : null;
  }

  /** Whether a field of nested number arrays holds one grey picture (``x-bigmodel-image`` with one
   * channel, and a fixed shape of size[0]×size[1] values: (H, W) or (1, H, W)). */
  function isPictureArray(schema) {
    const spec = schema["x-bigmodel-image"];
    const shape = typeOf(schema) === "array" ? arrayShape(schema) : null;
    if (!spec || spec.channels !== 1 || !Array.isArray(spec.size) || !shape?.every(Number.isInteger)) return false;
    return shape.reduce((a, b) => a * b, 1) === spec.size[0] * spec.size[1];
  }

  function buildForm(schema) {
    const container = $("fields");
    container.replaceChildren();
    const required = new Set(schema.required || []);
    const makers = { image: imageField, audio: audioField, text: textField, words: wordsField,
      numbers: numbersField, number: numberField, enum: enumField, boolean: booleanField, json: jsonField };
    state.fields = Object.entries(schema.properties || {}).map(([name, raw]) => {
      const fieldSchema = resolve(raw, schema);
      const kind = kindOf(fieldSchema);
      const field = (makers[kind] || textField)(name, fieldSchema, required.has(name));
      Object.assign(field, { name, kind, required: required.has(name) });
      container.append(field.element);
      return field;
    });
    if (!state.fields.length) container.append(el("p", { class: "muted" }, "This model takes no inputs."));
  }

  const titleOf = (name, schema) => schema.title || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

  /** A label + control + help + error line; returns {element, control, error}. */
  function plainField(name, schema, required, control, help) {
    const id = control.id || (control.id = newId(`field-${name}`));
    const helpId = `${id}-help`;
    const errorId = `${id}-error`;
    const description = [schema.description, help].filter(Boolean).join(" ");
    control.setAttribute("aria-describedby", [description ? helpId : "", errorId].filter(Boolean).join(" "));
    if (required) control.required = true;
    const error = el("p", { class: "field-error", id: errorId, hidden: true });
    const element = el("div", { class: "field" },
      el("label", { for: id }, titleOf(name, schema), required ? "" : el("span", { class: "optional" }, " (optional)")),
      control,
      description ? el("p", { class: "help", id: helpId }, description) : null,
      error);
    return { element, control, error };
  }

  function textField(name, schema, required) {
    const short = typeof schema.maxLength === "number" && schema.maxLength <= 80;
    const control = short
      ? el("input", { type: "text", name, maxlength: schema.maxLength })
      : el("textarea", { name, rows: 4, maxlength: schema.maxLength });
    if (typeof schema.default === "string") control.value = schema.default;
    const field = plainField(name, schema, required, control);
    field.value = () => (control.value === "" ? undefined : control.value);
    return field;
  }

  function wordsField(name, schema, required) {
    const control = el("input", { type: "text", name, spellcheck: "false" });
    const field = plainField(name, schema, required, control, "Words separated by spaces.");
    field.value = () => {
      const words = control.value.split(/\s+/).filter(Boolean);
      return words.length ? words : undefined;
    };
    return field;
  }

  function numbersField(name, schema, required) {
    const shape = arrayShape(schema);
    const fixed = shape.every(Number.isInteger);
    const count = fixed ? shape.reduce((a, b) => a * b, 1) : null;
    const control = el("textarea", { name, rows: fixed && count > 8 ? 4 : 2, spellcheck: "false", class: "mono" });
    const help = fixed
      ? `${count} numbers${shape.length > 1 ? ` (shape ${shape.join("×")}, row by row)` : ""}, separated by spaces, commas or new lines.`
      : "Numbers separated by spaces or commas.";
    const field = plainField(name, schema, required, control, help);
    field.value = () => {
      const parts = control.value.replace(/[[\]]/g, " ").split(/[\s,]+/).filter(Boolean);
      if (!parts.length) return undefined;
      const numbers = parts.map(Number);
      const bad = parts.find((_, i) => !Number.isFinite(numbers[i]));
      if (bad !== undefined) throw new Error(`“${bad}” is not a number.`);
      if (!fixed) return numbers;
      if (numbers.length !== count) throw new Error(`Give ${count} numbers; found ${numbers.length}.`);
      return nest(numbers, shape);
    };
    return field;
  }

  /** A flat list as nested arrays of the given shape, row by row. */
  function nest(values, shape) {
    if (shape.length <= 1) return values;
    const step = values.length / shape[0];
    return Array.from({ length: shape[0] }, (_, i) => nest(values.slice(i * step, (i + 1) * step), shape.slice(1)));
  }

  function numberField(name, schema, required) {
    const integer = typeOf(schema) === "integer";
    const control = el("input", { type: "number", name, step: integer ? 1 : "any",
      min: schema.minimum, max: schema.maximum, inputmode: integer ? "numeric" : "decimal" });
    if (typeof schema.default === "number") control.value = String(schema.default);
    const field = plainField(name, schema, required, control);
    field.value = () => {
      if (control.value.trim() === "") {
        if (control.validity.badInput) throw new Error("Enter a number.");
        return nullable(schema) && required ? null : undefined; // null: unknown, the server imputes it
      }
      const number = Number(control.value);
      if (!Number.isFinite(number)) throw new Error("Enter a number.");
      if (integer && !Number.isInteger(number)) throw new Error("Enter a whole number.");
      return number;
    };
    return field;
  }

  function enumField(name, schema, required) {
    const control = el("select", { name });
    if (!required || schema.default === undefined) control.append(el("option", { value: "" }, required ? "Choose…" : "—"));
    schema.enum.forEach((option, i) => control.append(el("option", { value: String(i) }, option === null ? "(unknown)" : String(option))));
    const defaultIndex = schema.enum.indexOf(schema.default);
    if (defaultIndex >= 0) control.value = String(defaultIndex);
    const field = plainField(name, schema, required, control);
    field.value = () => (control.value === "" ? undefined : schema.enum[Number(control.value)]);
    return field;
  }

  function booleanField(name, schema, required) {
    const control = el("input", { type: "checkbox", name });
    control.checked = schema.default === true;
    const id = (control.id = newId(`field-${name}`));
    const error = el("p", { class: "field-error", id: `${id}-error`, hidden: true });
    const element = el("div", { class: "field checkbox" },
      el("label", { for: id }, control, " ", titleOf(name, schema)),
      schema.description ? el("p", { class: "help" }, schema.description) : null, error);
    return { element, control, error, value: () => control.checked };
  }

  function jsonField(name, schema, required) {
    const control = el("textarea", { name, rows: 3, spellcheck: "false", class: "mono" });
    const field = plainField(name, schema, required, control, "A JSON value.");
    field.value = () => {
      if (control.value.trim() === "") return undefined;
      try {
        return JSON.parse(control.value);
      } catch (error) {
        throw new Error(`Not valid JSON: ${error.message}`);
      }
    };
    return field;
  }

  // --- image fields: upload (+ a drawing canvas for grey images) -------------------------------------

  /** An image field: base64 bytes (a PNG of the drawing, or the uploaded file as it is), or, for a
   * picture held as nested number arrays (isPictureArray), the drawing or upload shrunk to the field's
   * size and sent as numbers, black..white mapped to x-bigmodel-image's value_range ([0, 1] if absent). */
  function imageField(name, schema, required) {
    const spec = schema["x-bigmodel-image"] || {};
    const [height, width] = Array.isArray(spec.size) ? spec.size : [null, null];
    const grey = spec.channels === 1;
    const asNumbers = isPictureArray(schema);
    const range = Array.isArray(spec.value_range) && spec.value_range.length === 2 ? spec.value_range : [0, 1];
    const base = newId(`field-${name}`);
    const error = el("p", { class: "field-error", id: `${base}-error`, hidden: true });
    const describe = [height && width ? `${width}×${height}` : "", grey ? "grey" : spec.channels === 3 ? "colour" : ""]
      .filter(Boolean).join(", ");

    // Upload panel
    const fileInput = el("input", { type: "file", id: `${base}-file`, accept: "image/*",
      "aria-describedby": `${base}-error` });
    const preview = el("img", { class: "preview", alt: "", hidden: true });
    const uploadPanel = el("div", { class: "panel", id: `${base}-upload` },
      el("label", { for: fileInput.id }, "Choose an image file"), fileInput, preview);
    let file = null;
    fileInput.addEventListener("change", () => {
      file = fileInput.files[0] || null;
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.hidden = !file;
      if (file) {
        preview.src = URL.createObjectURL(file);
        preview.alt = `Preview of ${file.name}`;
        preview.onload = () => preview.classList.toggle("pixelated", preview.naturalWidth < 64);
      }
      error.hidden = true;
    });

    const element = el("fieldset", { class: "field image-field", "aria-describedby": `${base}-error` },
      el("legend", {}, titleOf(name, schema), describe ? el("span", { class: "hint" }, ` ${describe}`) : null,
        required ? "" : el("span", { class: "optional" }, " (optional)")),
    ); // (the schema's description tells JSON clients about base64; the hint above says what matters here)

    let mode = () => "upload";
    let drawing = null;
    if (grey) {
      drawing = drawingPad(base, width || 28, height || 28);
      const radios = ["draw", "upload"].map((value) => {
        const radio = el("input", { type: "radio", name: `${base}-mode`, value, id: `${base}-mode-${value}` });
        return { radio, label: el("label", { for: radio.id }, value === "draw" ? "Draw" : "Upload a file") };
      });
      radios[Math.max(width, height) > 64 ? 1 : 0].radio.checked = true; // big pictures are rarely drawn
      const show = () => {
        const drawn = radios[0].radio.checked;
        drawing.element.hidden = !drawn;
        uploadPanel.hidden = drawn;
        error.hidden = true;
      };
      radios.forEach(({ radio }) => radio.addEventListener("change", show));
      element.append(el("div", { class: "segmented", role: "radiogroup", "aria-label": `How to give ${name}` },
        radios.map(({ radio, label }) => [radio, label])));
      element.append(drawing.element, uploadPanel);
      show();
      mode = () => (radios[0].radio.checked ? "draw" : "upload");
    } else {
      element.append(uploadPanel);
    }
    if (asNumbers) {
      element.append(el("p", { class: "help" }, `Sent as ${width}×${height} numbers from ${formatRange(range[0])} (black) ` +
        `to ${formatRange(range[1])} (white).`));
    }
    element.append(error);

    /** The picture as the field's nested arrays: grey levels 0..1 mapped onto the value range. */
    const numbersOf = (source) => {
      const [low, high] = range;
      const values = Array.from(greyPixels(source, width, height), (g) =>
        Math.min(high, Math.max(low, Number((low + g * (high - low)).toPrecision(6)))));
      return nest(values, arrayShape(schema));
    };
    const value = async () => {
      if (mode() === "draw") {
        if (!drawing.hasInk()) return undefined;
        return asNumbers ? numbersOf(drawing.canvas) : drawing.png(width, height);
      }
      if (!file) return undefined;
      if (asNumbers) return numbersOf(await decodedImage(file));
      return base64OfBytes(new Uint8Array(await file.arrayBuffer()));
    };
    const focusTarget = () => (mode() === "draw" ? drawing.clearButton : fileInput);
    return { element, error, value, focusTarget, missing: grey ? "Draw something or upload an image." : "Choose an image file." };
  }

  /** A square canvas: white strokes on black with mouse, pen or touch; png() exports it at the model's size. */
  function drawingPad(base, width, height) {
    const canvas = el("canvas", { width: CANVAS_PIXELS, height: CANVAS_PIXELS, class: "pad", id: `${base}-canvas`,
      role: "img", "aria-label": "Drawing area: draw white strokes on black with the mouse, a pen or a finger" });
    const context = canvas.getContext("2d");
    // Strokes about as thick, relative to the picture, as in the training images (MNIST-like 28 px: ~2 px).
    const lineWidth = CANVAS_PIXELS * Math.max(0.075, 1.1 / Math.max(width, height));
    let ink = false;
    let last = null;

    const clear = () => {
      context.fillStyle = "#000";
      context.fillRect(0, 0, canvas.width, canvas.height);
      ink = false;
    };
    const point = (event) => {
      const box = canvas.getBoundingClientRect();
      return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
    };
    const stroke = (from, to) => {
      context.strokeStyle = "#fff";
      context.fillStyle = "#fff";
      context.lineWidth = lineWidth;
      context.lineCap = "round";
      context.lineJoin = "round";
      context.beginPath();
      context.moveTo(...from);
      context.lineTo(...to);
      context.stroke();
      ink = true;
    };
    canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      last = point(event);
      stroke(last, last); // a click alone leaves a dot
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const next = point(event);
      stroke(last, next);
      last = next;
    });
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) canvas.addEventListener(type, () => (last = null));
    clear();

    const clearButton = el("button", { type: "button", class: "secondary" }, "Clear");
    clearButton.addEventListener("click", clear);
    const element = el("div", { class: "panel draw-panel" }, canvas,
      el("div", { class: "pad-side" }, el("p", { class: "help" }, "Draw in white on the black square."), clearButton));

    /** Base64 PNG (no data: prefix) of the drawing scaled to width×height, halving steps for smooth results. */
    const png = (targetWidth, targetHeight) => {
      let source = canvas;
      let size = [canvas.width, canvas.height];
      const goal = [targetWidth || canvas.width, targetHeight || canvas.height];
      while (size[0] / 2 >= goal[0] && size[1] / 2 >= goal[1]) {
        size = [Math.round(size[0] / 2), Math.round(size[1] / 2)];
        source = scaled(source, size);
      }
      if (size[0] !== goal[0] || size[1] !== goal[1]) source = scaled(source, goal);
      return source.toDataURL("image/png").split(",", 2)[1];
    };
    return { element, clearButton, hasInk: () => ink, png, canvas };
  }

  const formatRange = (v) => String(Number(v.toPrecision(6)));

  /** An image file decoded by the browser, its pixels as stored (no colour management). */
  async function decodedImage(file) {
    try {
      return await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch {
      throw new Error(`${file.name} is not an image this browser can read (PNG, JPEG, GIF, WebP or BMP).`);
    }
  }

  /** Grey levels 0..1, row by row, of a canvas or image shrunk to width×height by area averaging: each
   * output pixel is the mean of the source pixels it covers (partly covered ones weighted by the part).
   * Transparent parts count as black; colours become grey as Pillow's "L" does (0.299 R + 0.587 G + 0.114 B). */
  function greyPixels(source, width, height) {
    const shrink = Math.min(1, MAX_READ_PIXELS / Math.max(source.width, source.height));
    const [w, h] = [Math.max(1, Math.round(source.width * shrink)), Math.max(1, Math.round(source.height * shrink))];
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#000";
    context.fillRect(0, 0, w, h);
    context.drawImage(source, 0, 0, w, h);
    const rgba = context.getImageData(0, 0, w, h).data;
    const grey = new Float64Array(w * h);
    for (let i = 0; i < grey.length; i++) grey[i] = (0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]) / 255;
    // Separable box filter: along each row to `width` columns, then down each column to `height` rows.
    const across = areaWeights(w, width);
    const down = areaWeights(h, height);
    const rows = new Float64Array(h * width);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < width; x++) rows[y * width + x] = across[x].reduce((sum, [j, weight]) => sum + weight * grey[y * w + j], 0);
    }
    const out = new Float64Array(width * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) out[y * width + x] = down[y].reduce((sum, [i, weight]) => sum + weight * rows[i * width + x], 0);
    }
    return out;
  }

  /** For each of `to` output cells along one axis, the [source index, weight] of the `from` source cells it
   * covers; the weights of a cell sum to 1. */
  function areaWeights(from, to) {
    const ratio = from / to;
    return Array.from({ length: to }, (_, i) => {
      const [start, end] = [i * ratio, (i + 1) * ratio];
      const pairs = [];
      for (let j = Math.floor(start); j < Math.min(from, Math.ceil(end)); j++) {
        const overlap = Math.min(end, j + 1) - Math.max(start, j);
        if (overlap > 0) pairs.push([j, overlap / ratio]);
      }
      return pairs;
    });
  }

  function scaled(source, [width, height]) {
    const target = document.createElement("canvas");
    target.width = width;
    target.height = height;
    const context = target.getContext("2d");
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(source, 0, 0, width, height);
    return target;
  }

  function base64OfBytes(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(binary);
  }

  // --- audio fields: a WAV file or a recording from the microphone -----------------------------------

  /** 16-bit PCM mono WAV bytes of samples in [-1, 1] (clipped). */
  function encodeWav(samples, sampleRate) {
    const bytes = new ArrayBuffer(44 + samples.length * 2);
    const view = new DataView(bytes);
    const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + samples.length * 2, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true); // fmt chunk size
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, sampleRate, true);
    view.setUint32(28, sampleRate * 2, true); // bytes per second
    view.setUint16(32, 2, true); // bytes per frame
    view.setUint16(34, 16, true); // bits per sample
    text(36, "data");
    view.setUint32(40, samples.length * 2, true);
    samples.forEach((s, i) => {
      const clipped = Math.max(-1, Math.min(1, s));
      view.setInt16(44 + i * 2, clipped < 0 ? Math.round(clipped * 0x8000) : Math.round(clipped * 0x7fff), true);
    });
    return new Uint8Array(bytes);
  }

  /** Decoded audio (any format the browser reads) → mono samples at sampleRate. */
  async function monoSamples(arrayBuffer, sampleRate) {
    const decoder = new AudioContext();
    try {
      const decoded = await decoder.decodeAudioData(arrayBuffer);
      const frames = Math.max(1, Math.ceil(decoded.duration * sampleRate));
      const offline = new OfflineAudioContext(1, frames, sampleRate); // mixes down and resamples
      const source = offline.createBufferSource();
      source.buffer = decoded;
      source.connect(offline.destination);
      source.start();
      return (await offline.startRendering()).getChannelData(0);
    } finally {
      decoder.close();
    }
  }

  function audioField(name, schema, required) {
    const base = newId(`field-${name}`);
    const spec = schema["x-bigmodel-audio"] || {};
    const sampleRate = spec.sample_rate || 16000; // what a recording is resampled to
    const hint = [`${sampleRate / 1000} kHz`, spec.clip_seconds ? `${spec.clip_seconds} s clips` : ""].filter(Boolean).join(", ");
    const error = el("p", { class: "field-error", id: `${base}-error`, hidden: true });
    const fileInput = el("input", { type: "file", id: `${base}-file`, accept: "audio/*,.wav,.flac,.ogg,.mp3" });
    const record = el("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Record");
    const player = el("audio", { controls: true, hidden: true });
    const using = el("p", { class: "help", "aria-live": "polite" });
    let current = null; // {bytes: Uint8Array, what: string}

    const use = (bytes, what) => {
      current = { bytes, what };
      if (player.src) URL.revokeObjectURL(player.src);
      player.src = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
      player.hidden = false;
      using.textContent = `Using ${what}.`;
      error.hidden = true;
    };
    fileInput.addEventListener("change", async () => {
      const file = fileInput.files[0];
      if (file) use(new Uint8Array(await file.arrayBuffer()), `the file ${file.name}`);
    });

    let recorder = null;
    const canRecord = Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
    if (!canRecord) {
      record.disabled = true;
      record.title = "This browser cannot record here (recording needs https or localhost).";
    }
    record.addEventListener("click", async () => {
      if (recorder) {
        recorder.stop();
        return;
      }
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (failure) {
        using.textContent = `The microphone is not available: ${failure.message}`;
        return;
      }
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
      recorder.addEventListener("stop", async () => {
        stream.getTracks().forEach((track) => track.stop());
        recorder = null;
        record.textContent = "Record";
        record.setAttribute("aria-pressed", "false");
        try {
          const samples = await monoSamples(await new Blob(chunks).arrayBuffer(), sampleRate);
          use(encodeWav(samples, sampleRate), `your recording (${(samples.length / sampleRate).toFixed(1)} s)`);
        } catch (failure) {
          using.textContent = `The recording could not be read: ${failure.message}`;
        }
      });
      recorder.start();
      record.textContent = "Stop recording";
      record.setAttribute("aria-pressed", "true");
      using.textContent = "Recording…";
    });

    const element = el("fieldset", { class: "field audio-field" },
      el("legend", {}, titleOf(name, schema), el("span", { class: "hint" }, ` ${hint}`),
        required ? "" : el("span", { class: "optional" }, " (optional)")),
      schema.description ? el("p", { class: "help" }, schema.description) : null,
      el("div", { class: "audio-row" },
        el("div", { class: "audio-file" }, el("label", { for: fileInput.id }, "Audio file (WAV)"), fileInput),
        el("span", { class: "muted" }, "or"), record),
      player, using, error);
    return { element, error, value: async () => (current ? base64OfBytes(current.bytes) : undefined),
      focusTarget: () => fileInput, missing: "Choose an audio file or record something." };
  }

  // --- predicting ------------------------------------------------------------------------------------

  function fieldError(field, message) {
    field.error.textContent = message;
    field.error.hidden = false;
    const target = field.focusTarget ? field.focusTarget() : field.control;
    target?.setAttribute?.("aria-invalid", "true");
    target?.focus?.();
  }

  async function collectRecord() {
    const record = {};
    for (const field of state.fields) {
      field.error.hidden = true;
      (field.focusTarget ? field.focusTarget() : field.control)?.removeAttribute?.("aria-invalid");
    }
    for (const field of state.fields) {
      let value;
      try {
        value = await field.value();
      } catch (error) {
        fieldError(field, error.message);
        return null;
      }
      if (value === undefined) {
        if (field.required) {
          fieldError(field, field.missing || `Fill in ${titleOf(field.name, {})}.`);
          return null;
        }
        continue;
      }
      record[field.name] = value;
    }
    return record;
  }

  async function onPredict(event) {
    event.preventDefault();
    const record = await collectRecord();
    if (!record) return;
    const button = $("predict-button");
    button.disabled = true;
    $("busy").hidden = false;
    $("results").setAttribute("aria-busy", "true");
    try {
      const response = await api("/v1/predict", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ inputs: [record] }) });
      const body = await response.json();
      renderResults(body.predictions || [], record);
    } catch (error) {
      const box = el("div", { class: "notice error", role: "alert" });
      showError(box, error);
      $("result-body").replaceChildren(box);
      $("results").hidden = false;
    } finally {
      button.disabled = false;
      $("busy").hidden = true;
      $("results").removeAttribute("aria-busy");
    }
  }

  // --- showing predictions ---------------------------------------------------------------------------

  function renderResults(predictions, record) {
    const body = $("result-body");
    body.replaceChildren(...predictions.map((p, i) =>
      el("article", { class: "prediction" }, predictions.length > 1 ? el("h3", {}, `Result ${i + 1}`) : null,
        renderPrediction(p, record))));
    if (!predictions.length) body.replaceChildren(el("p", { class: "muted" }, "The server returned no predictions."));
    $("results").hidden = false;
  }

  /** [{label, score}] from top_k, probabilities or scores, highest first; null when there is none. */
  function distributionOf(p) {
    let pairs = null;
    if (Array.isArray(p.top_k) && p.top_k.every((t) => t && "label" in t && typeof t.score === "number")) {
      pairs = p.top_k.map((t) => ({ label: String(t.label), score: t.score }));
    } else {
      for (const key of ["probabilities", "scores"]) {
        const value = p[key];
        if (value && typeof value === "object" && !Array.isArray(value) && Object.values(value).every((v) => typeof v === "number")) {
          pairs = Object.entries(value).map(([label, score]) => ({ label, score }));
          break;
        }
      }
    }
    return pairs && pairs.length ? pairs.sort((a, b) => b.score - a.score) : null;
  }

  function bars(pairs, { highlight = null, title = "Probabilities", total = pairs.length } = {}) {
    const shown = pairs.slice(0, MAX_BARS);
    const list = el("ol", { class: "bars", "aria-label": title },
      shown.map(({ label, score }) => {
        const width = `${Math.max(0, Math.min(1, score)) * 100}%`;
        const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span", { class: "fill" }));
        bar.firstChild.style.width = width;
        return el("li", { class: label === highlight ? "top" : null, "data-label": label },
          el("span", { class: "bar-label" }, label), bar, el("span", { class: "bar-value" }, percent(score)));
      }));
    const rest = total - shown.length;
    return [list, rest > 0 ? el("p", { class: "muted small" }, `and ${rest} more`) : null];
  }

  function headline(text, extra) {
    return el("div", { class: "headline" }, el("span", { class: "headline-value" }, text), extra ? el("span", { class: "headline-extra" }, extra) : null);
  }

  /** Spans [{start, end, tag, text?}] drawn as <mark>s over the text; overlapping spans are skipped. */
  function highlighted(text, spans) {
    const types = [...new Set(spans.map((s) => s.tag))];
    const paragraph = el("p", { class: "highlighted" });
    let at = 0;
    for (const span of [...spans].sort((a, b) => a.start - b.start)) {
      if (span.start < at || span.end > text.length || span.end <= span.start) continue;
      paragraph.append(text.slice(at, span.start));
      paragraph.append(el("mark", { class: `tone-${types.indexOf(span.tag) % 6}`, "data-type": span.tag },
        text.slice(span.start, span.end), el("span", { class: "tag" }, span.tag)));
      at = span.end;
    }
    paragraph.append(text.slice(at));
    return paragraph;
  }

  /** The text character spans point into: the input string they fit, else the tokens joined by spaces. */
  function spanText(spans, record, p) {
    const candidates = [];
    for (const value of Object.values(record || {})) {
      if (typeof value === "string") candidates.push(value);
      if (Array.isArray(value) && value.every((v) => typeof v === "string")) candidates.push(value.join(" "));
    }
    if (Array.isArray(p.tokens)) candidates.push(p.tokens.join(" "));
    const fits = (text) => spans.every((s) => s.end <= text.length && (s.text === undefined || text.slice(s.start, s.end) === s.text));
    return candidates.find(fits) ?? null;
  }

  function isImage(value) {
    return typeof value === "string" && value.startsWith("data:image/");
  }

  function isAudio(value) {
    return typeof value === "string" && value.startsWith("data:audio/");
  }

  function renderPrediction(p, record) {
    const parts = [];
    const shown = new Set(); // keys drawn above the raw JSON
    if (p === null || typeof p !== "object") return el("pre", { class: "json" }, JSON.stringify(p, null, 2));

    const dist = distributionOf(p);
    if (p.label !== undefined && p.label !== null && typeof p.label !== "object") {
      const label = String(p.label);
      const top = dist?.find((d) => d.label === label);
      parts.push(headline(label, top ? percent(top.score) : typeof p.score === "number" ? percent(p.score) : null));
      shown.add("label");
    }
    if (dist) {
      parts.push(bars(dist, { highlight: p.label === undefined ? null : String(p.label) }));
      ["top_k", "probabilities", "scores", "score"].forEach((k) => shown.add(k));
    }
    if (typeof p.same === "boolean") {
      parts.push(headline(p.same ? "Same person" : "Different people",
        typeof p.score === "number" ? `similarity ${formatNumber(p.score)} (threshold ${formatNumber(p.threshold)})` : null));
      ["same", "score", "threshold"].forEach((k) => shown.add(k));
    }
    if (typeof p.prediction === "number") {
      parts.push(headline(formatNumber(p.prediction)));
      shown.add("prediction");
    }
    if (typeof p.answer === "string") {
      parts.push(headline(p.answer || "No answer found", typeof p.score === "number" ? `score ${formatNumber(p.score)}` : null));
      const span = { start: p.start, end: p.end, tag: "answer", text: p.answer };
      const context = p.answer && Number.isInteger(p.start) ? spanText([span], record, p) : null;
      if (context !== null) parts.push(highlighted(context, [span]));
      ["answer", "start", "end", "score"].forEach((k) => shown.add(k));
    }
    if (typeof p.translation === "string") {
      parts.push(el("p", { class: "output-text" }, p.translation));
      shown.add("translation");
    }
    if (typeof p.text === "string") { // generated text: the prompt, then the continuation
      parts.push(el("p", { class: "output-text" }, typeof p.prompt === "string" ? el("span", { class: "prompt" }, p.prompt) : null, p.text));
      ["text", "prompt"].forEach((k) => shown.add(k));
    }
    if (typeof p.filled === "string") {
      parts.push(el("p", { class: "output-text" }, p.filled));
      for (const mask of Array.isArray(p.masks) ? p.masks : []) {
        const fillers = (mask.fillers || []).map((f) => ({ label: String(f.token), score: f.score }));
        parts.push(el("h4", {}, `Position ${mask.position}`), bars(fillers, { title: `Fillers for position ${mask.position}` }));
      }
      ["filled", "masks"].forEach((k) => shown.add(k));
    }

    // Character spans: named entities, or semantic roles around a predicate.
    const spans = [];
    if (Array.isArray(p.entities)) spans.push(...p.entities.map((e) => ({ ...e, tag: String(e.type) })));
    if (Array.isArray(p.arguments)) spans.push(...p.arguments.map((a) => ({ ...a, tag: String(a.role) })));
    if (p.predicate && Number.isInteger(p.predicate.start)) spans.push({ ...p.predicate, tag: "V" });
    if (Array.isArray(p.entities) || Array.isArray(p.arguments)) {
      const text = spanText(spans, record, p);
      if (text !== null) parts.push(highlighted(text, spans));
      if (Array.isArray(p.entities) && !p.entities.length) parts.push(el("p", { class: "muted" }, "No entities found."));
      ["entities", "arguments", "predicate", "tokens", "tags"].forEach((k) => shown.add(k));
    }

    if (p.fractions && typeof p.fractions === "object") {
      const pairs = Object.entries(p.fractions).map(([label, score]) => ({ label, score })).sort((a, b) => b.score - a.score);
      parts.push(el("h4", {}, "Share of pixels per class"), bars(pairs, { title: "Share of pixels per class" }));
      shown.add("fractions");
    }
    const images = Object.entries(p).filter(([, value]) => isImage(value));
    if (images.length) {
      parts.push(el("div", { class: "images" }, images.map(([key, src]) => {
        const img = el("img", { src, alt: `${key} returned by the model` });
        img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 64));
        return el("figure", {}, img, el("figcaption", {}, key));
      })));
      images.forEach(([key]) => shown.add(key));
    }
    const sounds = Object.entries(p).filter(([, value]) => isAudio(value));
    sounds.forEach(([key, src]) => {
      parts.push(el("figure", {}, el("audio", { src, controls: true, "aria-label": `${key} returned by the model` }),
        el("figcaption", {}, key)));
      shown.add(key);
    });
    if (Array.isArray(p.boxes)) {
      parts.push(p.boxes.length ? boxTable(p.boxes) : el("p", { class: "muted" }, "Nothing detected."));
      shown.add("boxes");
    }

    const rest = JSON.stringify(p, (key, value) => (isImage(value) || isAudio(value) ? `${value.slice(0, 40)}… (${value.length} characters)` : value), 2);
    const unshown = Object.keys(p).some((k) => !shown.has(k));
    if (!parts.length) parts.push(el("pre", { class: "json" }, rest));
    else parts.push(el("details", { class: "raw", open: unshown && !images.length ? true : null },
      el("summary", {}, "Response as JSON"), el("pre", { class: "json" }, rest)));
    return parts;
  }

  function boxTable(boxes) {
    return el("table", { class: "data" },
      el("caption", {}, "Detected objects"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Label"), el("th", { scope: "col" }, "Score"),
        el("th", { scope: "col" }, "Box (x1, y1, x2, y2)"))),
      el("tbody", {}, boxes.map((b) => el("tr", {}, el("td", {}, String(b.label)), el("td", { class: "num" }, formatNumber(b.score)),
        el("td", { class: "num" }, (b.box || []).map((v) => Number(v).toFixed(1)).join(", "))))));
  }

  // --- streaming generation --------------------------------------------------------------------------

  /** Read a text/event-stream body; onEvent(name, data) per event, returning false stops reading. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n|\r(?=.)/gs, "\n"); // a lone trailing \r waits for its \n
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // a comment (keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
        if (!data.length && name === "message") continue;
        if (onEvent(name, data.join("\n")) === false) {
          reader.cancel().catch(() => {});
          return;
        }
      }
      if (done) return;
    }
  }

  async function onGenerate(event) {
    event.preventDefault();
    const prompt = $("prompt").value;
    const output = $("stream-output");
    const errorBox = $("generate-error") || el("div", { id: "generate-error", class: "notice error", role: "alert" });
    hideError(errorBox);
    if (!errorBox.isConnected) $("generate").append(errorBox);
    if (!prompt.trim()) {
      showError(errorBox, new ApiError(0, "Type a prompt first."));
      $("prompt").focus();
      return;
    }
    const controller = new AbortController();
    state.generating = controller;
    const text = document.createTextNode("");
    output.replaceChildren(el("span", { class: "prompt" }, prompt), text);
    output.classList.add("streaming");
    output.setAttribute("aria-busy", "true");
    $("generate-button").disabled = true;
    $("stop-button").disabled = false;
    try {
      const response = await api("/v1/generate", { method: "POST", signal: controller.signal,
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" }, body: JSON.stringify({ prompt }) });
      await readEvents(response, (name, data) => {
        if (name === "done") return false;
        const payload = data ? JSON.parse(data) : {};
        if (name === "error" || payload.error) throw new ApiError(0, payload.error || "generation failed");
        if (typeof payload.text === "string") text.appendData(payload.text);
        return true;
      });
    } catch (error) {
      if (error.name !== "AbortError") showError(errorBox, error);
    } finally {
      state.generating = null;
      output.classList.remove("streaming");
      output.setAttribute("aria-busy", "false");
      $("generate-button").disabled = false;
      $("stop-button").disabled = true;
    }
  }

  // --- the model card --------------------------------------------------------------------------------

  function renderCard(model) {
    const card = model.card || {};
    const body = $("card-body");
    const facts = [["Task", model.task], ["Recipe", card.recipe], ["Run", card.run],
      ["Parameters", typeof card.parameters === "number" ? `${card.parameters.toLocaleString("en-US")} (${compactCount(card.parameters)})` : null],
      ["Version", model.version]].filter(([, v]) => v !== undefined && v !== null && v !== "");
    const parts = [el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]))];

    if (Array.isArray(model.labels) && model.labels.length) {
      const labels = model.labels.map(String);
      parts.push(el("h3", {}, `Classes (${labels.length})`),
        el("ul", { class: "chips" }, labels.slice(0, 40).map((l) => el("li", {}, l)),
          labels.length > 40 ? el("li", { class: "muted" }, `and ${labels.length - 40} more`) : null));
    }

    parts.push(el("h3", {}, "Metrics"));
    const metrics = card.metrics && typeof card.metrics === "object" ? card.metrics : {};
    const splits = Object.keys(metrics).filter((s) => metrics[s] && typeof metrics[s] === "object");
    const order = (s) => ["train", "validation", "test"].indexOf(s) >>> 0; // unknown splits last
    splits.sort((a, b) => order(a) - order(b));
    const names = [...new Set(splits.flatMap((s) => Object.keys(metrics[s]).filter((m) => typeof metrics[s][m] === "number")))];
    if (names.length) {
      parts.push(el("div", { class: "table-scroll" }, el("table", { class: "data metrics" },
        el("caption", { class: "visually-hidden" }, "Metrics per split"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Metric"), splits.map((s) => el("th", { scope: "col", class: "num" }, s)))),
        el("tbody", {}, names.map((m) => el("tr", {}, el("th", { scope: "row" }, m),
          splits.map((s) => {
            const v = metrics[s][m];
            const count = isCountColumn(m, splits.map((x) => metrics[x][m]));
            return el("td", { class: "num", "data-metric": m, "data-split": s, title: typeof v === "number" ? String(v) : null },
              typeof v === "number" ? formatNumber(v, count) : "—");
          })))))));
    } else {
      parts.push(el("p", { class: "muted" }, "No metrics recorded for this run."));
    }

    const rows = Array.isArray(card.per_class) ? card.per_class.filter((r) => r && typeof r === "object") : [];
    if (rows.length) {
      const columns = [...new Set(rows.flatMap(Object.keys))]  // a column of false flags says nothing
        .filter((c) => !rows.every((r) => r[c] === false || r[c] === undefined));
      const counts = new Set(columns.filter((c) => isCountColumn(c, rows.map((r) => r[c]))));
      parts.push(el("h3", {}, "Per class (test)"), el("div", { class: "table-scroll tall" }, el("table", { class: "data per-class" },
        el("caption", { class: "visually-hidden" }, "Scores per class on the test split"),
        el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: typeof rows[0][c] === "number" ? "num" : null }, c)))),
        el("tbody", {}, rows.map((r) => el("tr", { class: r.absent === true ? "muted" : null }, columns.map((c, i) => {
          const v = r[c];
          const text = typeof v === "number" ? formatNumber(v, counts.has(c)) : typeof v === "boolean" ? (v ? "yes" : "") : v ?? "";
          return i === 0 ? el("th", { scope: "row" }, String(text)) : el("td", { class: typeof v === "number" ? "num" : null }, String(text));
        })))))));
    }
    body.replaceChildren(...parts.flat());
    $("model-card").hidden = false;
  }

  // --- start -----------------------------------------------------------------------------------------

  window.bigmodelPage = { encodeWav, readEvents, base64OfBytes, renderResults, greyPixels }; // for tests and the curious

  document.addEventListener("DOMContentLoaded", () => {
    setupKeyForm();
    $("predict-form").addEventListener("submit", onPredict);
    $("generate-form").addEventListener("submit", onGenerate);
    $("stop-button").addEventListener("click", () => state.generating?.abort());
    document.addEventListener("keydown", (event) => { // Ctrl+Enter (⌘+Enter) in a text box sends its form
      const form = event.target?.form;
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && form && form.id !== "key-form") {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    loadModel();
  });
})();
