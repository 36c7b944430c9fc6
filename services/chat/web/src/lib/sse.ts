/**
 * An incremental parser of `text/event-stream` bodies, per the WHATWG HTML "server-sent events"
 * rules: lines end in CR, LF or CRLF (a CR at a chunk's end may be half of a CRLF), `:` starts a
 * comment, `data` lines join with "\n", an `id` without NUL sets the last event id (kept even
 * for events without data), and an event is dispatched at a blank line only. Bytes go through
 * one streaming `TextDecoder`, so a chunk may end inside a multi-byte character.
 */

export interface SseEvent {
  /** The last event id in force when the event was dispatched ("" when none was ever set). */
  id: string;
  /** `message` unless the event named another type. */
  event: string;
  data: string;
}

export class SseParser {
  lastEventId = "";
  private readonly decoder = new TextDecoder("utf-8");
  private buffer = "";
  private pendingCr = false;
  private started = false;
  private data: string[] = [];
  private type = "";
  private hasData = false;

  /** Parses a chunk of the body; returns the events it completed. */
  feed(chunk: Uint8Array | string): SseEvent[] {
    let text = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const events: SseEvent[] = [];
    let start = 0;
    if (this.pendingCr && text.startsWith("\n")) start = 1; // the LF of a CRLF split across chunks
    this.pendingCr = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.buffer + text.slice(start, i), events);
      this.buffer = "";
      if (c === 13) {
        if (i + 1 === text.length) this.pendingCr = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.buffer += text.slice(start);
    return events;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === "") {
      this.dispatch(out);
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data.push(value);
        this.hasData = true;
        break;
      case "event":
        this.type = value;
        break;
      case "id":
        if (!value.includes("\0")) this.lastEventId = value;
        break;
      default:
        break; // `retry` and unknown fields: nothing to do for a fetch-based reader
    }
  }

  private dispatch(out: SseEvent[]): void {
    if (this.hasData) {
      out.push({ id: this.lastEventId, event: this.type || "message", data: this.data.join("\n") });
    }
    this.data = [];
    this.hasData = false;
    this.type = "";
  }
}
