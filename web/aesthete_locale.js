// Shows Aesthete's translated node titles, widget labels and slot labels in the user's language.
//
// Why: frontend 1.32.9 merges custom-node translations (GET /i18n) into vue-i18n at startup, then
// loadLocale(<user locale>) calls setLocaleMessage, which replaces that locale's messages and drops ours;
// core nodes end up translated, Aesthete's stay English. This fills our strings in from /i18n directly.
// Only display text changes (display_name, description, tooltips, labels): node types, input and widget
// names stay as they are, because saved workflows and the API prompt refer to them. Once the frontend is
// fixed it writes the same strings first, and this sets them again to the same values.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "Aesthete";
let translationsPromise = null;

/** {locale: {NodeId: {display_name, description, inputs, outputs}}} for our nodes only; {} on any error. */
function loadTranslations() {
  translationsPromise ??= (async () => {
    try {
      const response = await api.fetchApi("/i18n");
      if (!response.ok) return {};
      const all = await response.json();
      const ours = {};
      for (const [locale, messages] of Object.entries(all ?? {})) {
        const defs = Object.entries(messages?.nodeDefs ?? {}).filter(([id]) => id.startsWith(PREFIX));
        if (defs.length) ours[locale] = Object.fromEntries(defs);
      }
      return ours;
    } catch (error) {
      console.warn("[Aesthete] could not load translations from /i18n", error);
      return {};
    }
  })();
  return translationsPromise;
}

function userLocale() {
  try {
    const setting = app.extensionManager?.setting?.get?.("Comfy.Locale")
      ?? app.ui?.settings?.getSettingValue?.("Comfy.Locale");
    if (setting) return String(setting);
  } catch {
    // settings not ready: fall through to the browser's language, the frontend's own default
  }
  return (navigator.language || "en").split("-")[0];
}

/** Our strings for nodeId in the user's locale and in English, or null when English or untranslated. */
function stringsFor(translations, nodeId) {
  const locale = userLocale();
  if (!nodeId?.startsWith(PREFIX) || locale === "en") return null;
  const local = translations[locale]?.[nodeId];
  return local ? { local, en: translations.en?.[nodeId] ?? {} } : null;
}

/** True when text is still an untranslated default (empty, the id itself, or our English string). */
function isDefault(text, id, english) {
  return !text || text === id || (english != null && text === english);
}

function translateNodeDef(nodeData, strings) {
  const { local } = strings;
  if (local.display_name) nodeData.display_name = local.display_name;
  if (local.description && nodeData.description) nodeData.description = local.description;
  for (const group of ["required", "optional"]) {
    for (const [id, spec] of Object.entries(nodeData.input?.[group] ?? {})) {
      const tooltip = local.inputs?.[id]?.tooltip;
      if (tooltip && Array.isArray(spec) && spec[1] && typeof spec[1] === "object") spec[1].tooltip = tooltip;
    }
  }
  if (Array.isArray(nodeData.output_tooltips)) {
    nodeData.output_tooltips = nodeData.output_tooltips.map((t, i) => local.outputs?.[i]?.tooltip || t);
  }
}

function translateNode(node, strings) {
  const { local, en } = strings;
  for (const widget of node.widgets ?? []) {
    const name = local.inputs?.[widget.name]?.name;
    if (!name) continue;
    if (isDefault(widget.label, widget.name, en.inputs?.[widget.name]?.name)) widget.label = name;
    // a multiline text box shows no label; without a placeholder in the schema it shows the input id
    if (widget.inputEl && widget.inputEl.placeholder === widget.name) widget.inputEl.placeholder = name;
  }
  // localized_name is what the frontend itself translates; slot.label stays free for a user's rename
  for (const input of node.inputs ?? []) {
    const name = local.inputs?.[input.name]?.name;
    if (name && isDefault(input.localized_name, input.name, en.inputs?.[input.name]?.name)) {
      input.localized_name = name;
    }
  }
  // an output whose name is its type (no display_name in the schema) shows the type's translation, e.g.
  // 字符串 for STRING; our translator's name says which of several STRING outputs it is
  (node.outputs ?? []).forEach((output, i) => {
    const name = local.outputs?.[i]?.name;
    const shownAsType = output.name === output.type;
    if (name && (shownAsType || isDefault(output.localized_name, output.name, en.outputs?.[i]?.name))) {
      output.localized_name = name;
    }
  });
  if (local.display_name && isDefault(node.title, node.type, en.display_name)) node.title = local.display_name;
}

let translations = {};

app.registerExtension({
  name: "aesthete.locale",

  async init() {
    translations = await loadTranslations();
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    translations = await loadTranslations();
    const strings = stringsFor(translations, nodeData.name);
    if (strings) translateNodeDef(nodeData, strings);
  },

  // called synchronously from the node's constructor, before a saved workflow is configured onto it
  nodeCreated(node) {
    const strings = stringsFor(translations, node.comfyClass ?? node.type);
    if (strings) translateNode(node, strings);
  },
});
