import { defineConfig } from "vitest/config";

// Browser tests against a running platform (tests/e2e/test_web_ui.py starts one and runs this):
// one file, in order, with long timeouts (a real model answers).
export default defineConfig({
  test: {
    include: ["e2e/**/*.e2e.ts"],
    environment: "node",
    testTimeout: 180_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    sequence: { concurrent: false },
    reporters: ["verbose"],
  },
});
