import { describe, expect, it } from "vitest";

import { fenced, formatJson, jsonAnswer } from "./json";

describe("formatJson", () => {
  it("indents nested objects and arrays by two spaces, empty ones staying on their line", () => {
    expect(formatJson('{"city":"Paris","days":[1,2],"opts":{},"tags":[ ]}')).toBe(
      '{\n  "city": "Paris",\n  "days": [\n    1,\n    2\n  ],\n  "opts": {},\n  "tags": []\n}',
    );
  });

  it("keeps strings exactly, with braces, commas, colons, escaped quotes and spaces inside", () => {
    const text = '{"q":"a, b: {c} [d] \\"e\\"  f\\\\","n":null}';
    const formatted = formatJson(text);
    expect(formatted).toBe('{\n  "q": "a, b: {c} [d] \\"e\\"  f\\\\",\n  "n": null\n}');
    expect(JSON.parse(formatted!)).toEqual(JSON.parse(text));
  });

  it("keeps numbers beyond a double's precision and duplicate keys as written", () => {
    expect(formatJson('{"id":12345678901234567890,"id":1.50e3}')).toBe(
      '{\n  "id": 12345678901234567890,\n  "id": 1.50e3\n}',
    );
  });

  it("re-indents already indented JSON the same way, and takes scalars", () => {
    expect(formatJson('\n {\n\t"a" :\r\n [ true ]\n}\n')).toBe('{\n  "a": [\n    true\n  ]\n}');
    expect(formatJson(" 42 ")).toBe("42");
    expect(formatJson('"sunny"')).toBe('"sunny"');
  });

  it("says null for anything that is not JSON", () => {
    for (const text of ["", "   ", "{city: 'Paris'}", '{"a": 1,}', '{"a": 1', "Paris", '{"a":1} and more'])
      expect(formatJson(text), text).toBeNull();
  });
});

describe("fenced", () => {
  it("uses a fence longer than any backtick run inside", () => {
    expect(fenced('{"a": 1}', "json")).toBe('```json\n{"a": 1}\n```');
    expect(fenced('{"code": "````x````"}', "json")).toBe('`````json\n{"code": "````x````"}\n`````');
  });
});

describe("jsonAnswer", () => {
  it("turns a whole-JSON object or array answer into a formatted json block", () => {
    expect(jsonAnswer('  {"answer": 42}\n')).toBe('```json\n{\n  "answer": 42\n}\n```');
    expect(jsonAnswer('[{"a":1},{"a":2}]')).toBe('```json\n[\n  {\n    "a": 1\n  },\n  {\n    "a": 2\n  }\n]\n```');
  });

  it("leaves other answers to Markdown: prose, scalars, fenced blocks, JSON inside text, broken JSON", () => {
    for (const text of [
      "Hello",
      "42",
      '"a string"',
      "true",
      '```json\n{"a": 1}\n```',
      'Here it is: {"a": 1}',
      '{"a": 1} is the answer',
      '{"a": [1, 2}',
      "[link](https://example.com)",
      "",
    ])
      expect(jsonAnswer(text), text).toBeNull();
  });
});
