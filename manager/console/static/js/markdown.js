// Model output as Markdown (docs/console.md, "Chat page"): marked turns it into HTML, a small highlighter colours
// code blocks, and DOMPurify sanitises the result before it reaches the page, so model output can never run script
// (the CSP, which forbids inline script and handlers, is the second wall). Loaded only by the chat page.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.module.js";

const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const KEYWORDS = new Set(("def class return if elif else for while in import from as with try except finally raise " +
  "lambda yield async await pass break continue and or not is None True False function const let var new this " +
  "typeof instanceof switch case default throw catch export extends static fn pub struct impl enum match mut use " +
  "int float char void bool double long public private protected package func type interface go defer select " +
  "null true false undefined echo then fi do done esac").split(" "));
// one pass over the code: comments, strings, numbers, words; everything else as it is (escaped)
const TOKEN = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_.]*(?:e[+-]?\d+)?\b)|([A-Za-z_$][\w$]*)/g;

export function highlight(code) {
  let out = "";
  let last = 0;
  for (const m of code.matchAll(TOKEN)) {
    out += escapeHtml(code.slice(last, m.index));
    const [text, comment, string, number, word] = m;
    if (comment) out += `<span class="tok-comment">${escapeHtml(text)}</span>`;
    else if (string) out += `<span class="tok-string">${escapeHtml(text)}</span>`;
    else if (number) out += `<span class="tok-number">${escapeHtml(text)}</span>`;
    else if (word && KEYWORDS.has(word)) out += `<span class="tok-keyword">${escapeHtml(text)}</span>`;
    else out += escapeHtml(text);
    last = m.index + text.length;
  }
  return out + escapeHtml(code.slice(last));
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    code({ text, lang }) {
      const language = (lang || "").match(/^[\w+-]*/)[0];
      const label = language ? `<span class="code-lang">${escapeHtml(language)}</span>` : "";
      return `<pre class="code">${label}<code>${highlight(text)}</code></pre>`;
    },
  },
});

const PURIFY = {
  // no images (a Markdown image to another host would leak the conversation), forms, styles or media
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "video", "audio",
    "svg", "math", "object", "embed"],
  FORBID_ATTR: ["style", "id", "name"],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

// Markdown text -> sanitised HTML (a string for dangerouslySetInnerHTML).
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
}
