"use strict";
// A small markdown renderer for the chat page's assistant replies (written for QueueChat).
//
// renderMarkdown(text) returns HTML.  Safety first: every piece of the model's text is escaped
// (& < > " ') before any markdown is applied, so the only tags in the result are the ones written
// here; raw HTML from the model shows as text.  Links become <a> only for http(s) URLs.
//
// Supported: ``` / ~~~ fenced code (an unclosed fence is a code block up to the end, for
// streaming), `inline code`, **bold**, *italic*, ~~strike~~, # to ###### headings, - * + and 1.
// lists (nested by indentation), --- rules, paragraphs with line breaks, [text](https://...).

const MD_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => MD_ESCAPES[c]);
}

// Inline markdown on one block's text.  Code spans and links are set aside as placeholders
// (\u0000n\u0000; the input never holds \u0000) so later rules cannot reach inside them.
function renderInline(raw) {
  const kept = [];
  const keep = (html) => "\u0000" + (kept.push(html) - 1) + "\u0000";
  let s = escapeHtml(raw);
  s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) =>
    keep("<code>" + code.replace(/^ (.*) $/, "$1") + "</code>"));
  s = s.replace(/\[([^\[\]\n]+)\]\(\s*([^\s()]+(?:\([^\s()]*\)[^\s()]*)*)\s*\)/g, (whole, text, url) =>
    /^https?:\/\/[^\s]/i.test(url)
      ? keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(text)}</a>`)
      : whole);  // javascript:, data:, relative...: left as the text the model wrote
  s = emphasis(s);
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => kept[Number(i)]);
}

function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)(.+?)(?<=\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)(.+?)(?<=\S)~~/g, "<del>$1</del>");
}

const FENCE = /^(\s*)(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;

function renderMarkdown(text) {
  const lines = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];      // lines of the paragraph being read
  const lists = [];   // open lists, outermost first: { tag, indent, itemOpen }

  const flushPara = () => {
    if (para.length) out.push("<p>" + para.map(renderInline).join("<br>") + "</p>");
    para = [];
  };
  const closeList = () => {
    const list = lists.pop();
    out.push((list.itemOpen ? "</li>" : "") + `</${list.tag}>`);
  };
  const closeLists = (deeperThan = -1) => {
    while (lists.length && lists[lists.length - 1].indent > deeperThan) closeList();
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flushPara();
      const indent = fence[1].length;
      if (!(lists.length && indent > 0)) closeLists();  // an indented fence stays in its list item
      const mark = fence[2], code = [];
      const closing = new RegExp(`^\\s*${mark[0] === "`" ? "`" : "~"}{${mark.length},}\\s*$`);
      for (i++; i < lines.length && !closing.test(lines[i]); i++) {
        code.push(lines[i].replace(new RegExp(`^ {0,${indent}}`), ""));
      }
      const lang = fence[3] ? ` class="language-${fence[3]}"` : "";  // [\w+#.-] only
      out.push(`<pre><code${lang}>` + escapeHtml(code.join("\n")) + "</code></pre>");
      continue;
    }
    if (!line.trim()) { flushPara(); continue; }  // a blank line ends a paragraph, not a list
    const heading = HEADING.exec(line);
    if (heading) {
      flushPara(); closeLists();
      const level = heading[1].length;
      out.push(`<h${level}>` + renderInline(heading[2]) + `</h${level}>`);
      continue;
    }
    if (RULE.test(line)) { flushPara(); closeLists(); out.push("<hr>"); continue; }
    const item = ITEM.exec(line);
    if (item) {
      flushPara();
      const indent = item[1].replace(/\t/g, "    ").length;
      const tag = item[2] ? "ul" : "ol";
      closeLists(indent);
      let top = lists[lists.length - 1];
      if (top && top.indent === indent && top.tag !== tag) { closeList(); top = lists[lists.length - 1]; }
      if (!top || top.indent < indent) {
        const start = tag === "ol" && Number(item[3]) !== 1 ? ` start="${Number(item[3])}"` : "";
        out.push(`<${tag}${start}>`);
        lists.push(top = { tag, indent, itemOpen: false });
      }
      out.push((top.itemOpen ? "</li>" : "") + "<li>" + renderInline(item[4]));
      top.itemOpen = true;
      continue;
    }
    if (lists.length && /^\s/.test(line) && !para.length) {  // an item's continuation line
      out.push("<br>" + renderInline(line.trim()));
      continue;
    }
    closeLists();
    para.push(line);
  }
  flushPara(); closeLists();
  return out.join("");
}
