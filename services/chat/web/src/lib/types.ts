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
}

export interface WorkerList {
  data: WorkerView[];
  models: Model[];
}
