import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";

import { ToolCallView, ToolResultView } from "./ToolCalls";

/** The text a reader sees (tags dropped, entities decoded). */
function textOf(html: string): string {
  return html
    .replace(/<[^>]+>/g, "")
    .replace(/&quot;/g, '"')
    .replace(/&#x27;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
}

const call = (args: string) => ({
  id: "call-1",
  type: "function" as const,
  function: { name: "get_weather", arguments: args },
});

describe("a tool call", () => {
  it("is collapsed to the function's name, with its arguments as highlighted, formatted JSON", () => {
    const html = renderToStaticMarkup(<ToolCallView call={call('{"city":"Paris","days":2}')} />);
    expect(html).toMatch(/^<details class="tool" data-testid="tool-call" data-call-id="call-1">/);
    expect(html).not.toContain(" open");
    expect(html).toContain("<summary>Called <code>get_weather</code></summary>");
    expect(html).toContain('<code class="hljs language-json">');
    expect(html).toContain('<span class="hljs-attr">&quot;city&quot;</span>');
    expect(html).toContain('<span class="hljs-number">2</span>');
    expect(textOf(html)).toContain('{\n  "city": "Paris",\n  "days": 2\n}');
    expect(html).toContain('aria-label="Copy code"');
  });

  it("shows arguments that are not valid JSON as the raw text, and says so", () => {
    const html = renderToStaticMarkup(<ToolCallView call={call("{city: 'Paris'")} />);
    expect(html).toContain("Arguments (not valid JSON):");
    expect(html).toContain('<pre class="tool-text">');
    expect(textOf(html)).toContain("{city: 'Paris'");
    expect(html).not.toContain("hljs");
  });

  it("says when there are no arguments", () => {
    expect(renderToStaticMarkup(<ToolCallView call={call("")} />)).toContain("No arguments.");
  });

  it("never renders markup from the arguments", () => {
    const html = renderToStaticMarkup(<ToolCallView call={call("<img src=x onerror=alert(1)>")} />);
    expect(html).not.toContain("<img");
  });
});

describe("a tool result", () => {
  it("is collapsed to the call it answers, with JSON content formatted and highlighted", () => {
    const html = renderToStaticMarkup(<ToolResultView content='{"temp":21}' callId="call-1" name="get_weather" />);
    expect(html).toMatch(/^<details class="tool" data-testid="tool-result" data-call-id="call-1">/);
    expect(html).toContain('<summary title="Call call-1">Result of <code>get_weather</code></summary>');
    expect(html).toContain('<code class="hljs language-json">');
    expect(textOf(html)).toContain('{\n  "temp": 21\n}');
  });

  it("shows other content as text, and a result whose call is gone as a tool result", () => {
    const html = renderToStaticMarkup(<ToolResultView content="Sunny, 21 °C" callId="call-9" name={null} />);
    expect(html).toContain('<summary title="Call call-9">Tool result</summary>');
    expect(html).toContain('<pre class="tool-text">Sunny, 21 °C</pre>');
  });

  it("says when the result is empty", () => {
    expect(renderToStaticMarkup(<ToolResultView content="" callId="c" name="f" />)).toContain("Empty result.");
  });
});
