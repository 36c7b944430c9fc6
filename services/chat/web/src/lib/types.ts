/** The shapes the edge answers with (the fields the app reads). */

/** What a model can do, as its workers say (older workers say nothing: a chat model then). */
export interface ModelCapabilities {
  kind: "chat" | "embedding";
  tools: boolean;
  json_output: boolean;
  /** Input modalities: `text`, `image`, `audio`. */
  modalities: string[];
  /** Fill-in-the-middle completions. */
  fim: boolean;
  /** An embedding model's vector size, and whether `dimensions` may shorten it. */
  dimensions: number | null;
  matryoshka: boolean;
}

export interface Model {
  id: string;
  workers: number;
  capacity: number;
  running: number;
  max_model_len: number | null;
  capabilities?: ModelCapabilities | null;
  /** Admin view: whether a live worker serves it (a configured model may have none). */
  status?: "serving" | "no_worker";
}

export interface ConversationSummary {
  id: string;
  title: string;
  title_source: "fallback" | "model" | "user";
  model: string | null;
  message_count: number;
  created_at: string;
  updated_at: string;
}

export interface ConversationPage {
  data: ConversationSummary[];
  next_cursor: string | null;
}

/** A function call an assistant message made (OpenAI's shape: `arguments` is JSON text). */
export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/**
 * A stored message. A conversation reads user → assistant (calling tools, content null) → tool
 * results (role `tool`, each naming the call it answers) → assistant.
 */
export interface StoredMessage {
  request_id: string;
  role: "user" | "assistant" | "tool";
  content: string | null;
  /** An assistant message's calls (absent or null: none). */
  tool_calls?: ToolCall[] | null;
  /** A tool result: the id of the call it answers. */
  tool_call_id?: string | null;
  status: "completed" | "failed" | "cancelled";
  model: string | null;
  finish_reason: string | null;
  error: string | null;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  created_at: string;
}

export interface Conversation extends ConversationSummary {
  system_prompt: string | null;
  messages: StoredMessage[];
}

export interface UsageBucket {
  day: string | null;
  model: string | null;
  user_id: string | null;
  requests: number;
  completed: number;
  failed: number;
  cancelled: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens?: number;
}

export interface UsageReport {
  since: string;
  until: string;
  group_by: string;
  data: UsageBucket[];
  total: UsageBucket;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  last_used_at: string | null;
  revoked_at: string | null;
}

export interface ApiKeyCreated extends ApiKey {
  key: string;
}

/** What a worker is doing with its engine (`ready`: serving its model). */
export type WorkerState = "ready" | "draining" | "unloading" | "loading" | "failed";

/** A model switch's step: the worker drains its requests, unloads, checks the new profile fits, loads it. */
export type SwitchStep = "draining" | "unloading" | "checking" | "loading" | "ready" | "failed" | "rolled_back";

/** A worker's latest model switch (kept after it ended, so its outcome stays visible). */
export interface ModelSwitch {
  from: string;
  target: string;
  step: SwitchStep;
  /** 0..1 within the step where the worker can tell; null when it cannot. */
  progress: number | null;
  message: string;
  error: string | null;
  requested_by: string;
  started_at: number;
  updated_at: number;
}

export interface WorkerView {
  worker_id: string;
  model: string;
  engine_model: string;
  capacity: number;
  running: number;
  max_model_len: number;
  version: string;
  heartbeat_at: number;
  started_at: number;
  /** Absent from workers that predate model switching: they are ready. */
  state?: WorkerState;
  switch?: ModelSwitch | null;
  hardware?: { kind: "cpu" | "gpu"; summary: string } | null;
}

export interface WorkerList {
  data: WorkerView[];
  models: Model[];
}

/** Whether a model profile fits a worker's hardware, with the numbers behind the answer. */
export type VerdictKind = "fits" | "fits_with_changes" | "does_not_fit";

export interface ProfileVerdict {
  worker_id: string;
  hardware: string;
  verdict: VerdictKind;
  /** One sentence with the numbers (from the server, in English). */
  reason: string;
  weights_bytes: number;
  kv_cache_bytes: number;
  activation_bytes: number;
  available_bytes: number;
  /** What to change for it to fit (with `fits_with_changes`), e.g. "max_model_len 8192". */
  suggestion: string | null;
}

/** A model profile of the catalog (builtin, or added by the operator). */
export interface ModelProfile {
  alias: string;
  model: string;
  kind: string;
  source: "builtin" | "operator";
  description: string;
  dtype: string;
  quantization: string | null;
  tensor_parallel_size: number;
  max_model_len: number;
  max_num_seqs: number;
  tool_call_parser: string | null;
  /** "model" (the model's own), a file name, or "chatml (fallback)". */
  chat_template: string;
  chat_template_fallback: boolean;
  parameters: number | null;
  /** One per live worker (none when no worker is live). */
  verdicts: ProfileVerdict[];
}

export interface ProfileList {
  object: "list";
  data: ModelProfile[];
  /** Live workers that did not answer for their catalog (their verdicts are missing). */
  unreachable?: string[];
}

export interface SwitchAccepted {
  object: "model_switch";
  worker_id: string;
  from: string;
  to: string;
  status: "accepted";
}
