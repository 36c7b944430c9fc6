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
    // Streaming steps that wait on a real engine's timing failed now and then since the suite
    // runs twice (English, Korean): each failed test is tried again, up to twice, and a test
    // that keeps failing still fails the run. The cause is not yet found (issue 15's note).
    retry: 2,
    sequence: { concurrent: false },
    reporters: ["verbose"],
  },
});
