/** The chat's components rendered with the language switched to Korean. */
import { renderToStaticMarkup } from "react-dom/server";
import { beforeEach, describe, expect, it } from "vitest";

import i18n from "../i18n";
import { ApiError } from "../lib/api";
import type { StoredMessage } from "../lib/types";
import { ConfirmButton } from "./ConfirmButton";
import { LanguageSwitch } from "./LanguageSwitch";
import { StoredRow } from "./MessageRows";
import { ModelPicker } from "./ModelPicker";
import { ToolCallView, ToolResultView } from "./ToolCalls";

const answer: StoredMessage = {
  request_id: "r1",
  role: "assistant",
  content: "안녕하세요",
  status: "completed",
  model: "qwen",
  finish_reason: "stop",
  error: null,
  usage: { prompt_tokens: 3, completion_tokens: 1234, total_tokens: 1237 },
  created_at: "2026-12-06T00:00:00Z",
};

describe("in Korean", () => {
  beforeEach(async () => {
    await i18n.changeLanguage("ko");
  });

  it("an answer shows its labels, token count and Regenerate in Korean", () => {
    const html = renderToStaticMarkup(
      <StoredRow message={answer} earlier={false} callNames={new Map()} onRegenerate={() => undefined} />,
    );
    expect(html).toContain('<span class="who">어시스턴트</span>');
    expect(html).toContain("<span>1,234토큰</span>");
    expect(html).toContain(">다시 생성</button>");
    const stopped = renderToStaticMarkup(
      <StoredRow message={{ ...answer, status: "cancelled" }} earlier callNames={new Map()} onRegenerate={null} />,
    );
    expect(stopped).toContain("이전 답변");
    expect(stopped).toContain("중지됨");
  });

  it("tool calls and results read as Korean sentences around the function's name", () => {
    const call = { id: "c1", type: "function" as const, function: { name: "get_weather", arguments: "" } };
    const html = renderToStaticMarkup(<ToolCallView call={call} />);
    expect(html).toContain("<summary><code>get_weather</code> 호출</summary>");
    expect(html).toContain("인수가 없습니다.");
    const result = renderToStaticMarkup(<ToolResultView content="" callId="c1" name="get_weather" />);
    expect(result).toContain('<summary title="호출 c1"><code>get_weather</code> 결과</summary>');
  });

  it("the model picker says how many workers serve each model", () => {
    const html = renderToStaticMarkup(
      <ModelPicker
        models={[
          { id: "qwen", workers: 2, capacity: 8, running: 0, max_model_len: 4096 },
          { id: "off", workers: 0, capacity: 0, running: 0, max_model_len: null },
        ]}
        value="qwen"
        onChange={() => undefined}
      />,
    );
    expect(html).toContain('<label class="sr-only" for="model">모델</label>');
    expect(html).toContain(">qwen — 실행 중인 워커 2개</option>");
    expect(html).toContain(">off — 실행 중인 워커 없음</option>");
  });

  it("a confirmation's Cancel, and the language switch showing the current language", () => {
    const words = { action: "폐기", asking: "폐기 확인", question: "폐기할까요?", yes: "네, 폐기합니다", busy: "…" };
    const html = renderToStaticMarkup(
      <ConfirmButton
        words={words}
        target="노트북"
        busy={false}
        onConfirm={() => undefined}
        asking
        autoFocus={false}
        onAsk={() => undefined}
        onCancel={() => undefined}
      />,
    );
    expect(html).toContain(">취소</button>");
    const language = renderToStaticMarkup(<LanguageSwitch />);
    expect(language).toContain('aria-label="언어"');
    expect(language).toContain('<option value="ko" lang="ko" selected="">한국어</option>');
    expect(language).toContain('<option value="en" lang="en">English</option>');
  });

  it("errors the app words itself are in Korean, with the wait in Korean units", () => {
    expect(new ApiError(0, "network error").describe()).toBe(
      "서버에 연결할 수 없습니다. 네트워크 연결을 확인한 후 다시 시도해 주세요.",
    );
    expect(new ApiError(429, "too many login attempts", "rate_limit_exceeded", 120).describe()).toBe(
      "요청이 너무 많습니다: too many login attempts. 2분 후에 다시 시도해 주세요.",
    );
    expect(new ApiError(503, "64 requests waiting", "model_overloaded", 5).describe()).toBe(
      "지금은 모델이 사용 중입니다. 5초 후에 다시 시도해 주세요.",
    );
  });
});
