/**
 * JSON as the app shows it: re-indented without being re-serialised, so numbers beyond a double's
 * precision, key order and duplicate keys stay exactly as the model or the tool wrote them.
 */

/** `text` (trimmed) indented by two spaces per level if it is valid JSON, else null. */
export function formatJson(text: string): string | null {
  const source = text.trim();
  if (source === "") return null;
  try {
    JSON.parse(source);
  } catch {
    return null;
  }
  let out = "";
  let depth = 0;
  let inString = false;
  let escaped = false;
  const newline = () => "\n" + "  ".repeat(depth);
  for (let i = 0; i < source.length; i++) {
    const c = source.charAt(i);
    if (inString) {
      out += c;
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      out += c;
    } else if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      let next = i + 1;
      while (next < source.length && isSpace(source.charAt(next))) next++;
      if (source.charAt(next) === close) {
        out += c + close; // an empty object or array stays on its line
        i = next;
      } else {
        depth++;
        out += c + newline();
      }
    } else if (c === "}" || c === "]") {
      depth--;
      out += newline() + c;
    } else if (c === ",") {
      out += "," + newline();
    } else if (c === ":") {
      out += ": ";
    } else if (!isSpace(c)) {
      out += c;
    }
  }
  return out;
}

function isSpace(c: string): boolean {
  return c === " " || c === "\n" || c === "\r" || c === "\t";
}

/** `text` as a fenced Markdown code block, with a fence longer than any backtick run inside. */
export function fenced(text: string, language: string): string {
  const longest = Math.max(0, ...(text.match(/`+/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return `${fence}${language}\n${text}\n${fence}`;
}

/**
 * An answer that is a JSON object or array as a whole (JSON mode, structured outputs) as a
 * highlighted ```json block; null for any other answer (Markdown as usual).
 */
export function jsonAnswer(content: string): string | null {
  const trimmed = content.trim();
  if (!(trimmed.startsWith("{") || trimmed.startsWith("["))) return null;
  const formatted = formatJson(trimmed);
  return formatted === null ? null : fenced(formatted, "json");
}
