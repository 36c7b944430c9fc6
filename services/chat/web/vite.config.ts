import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// The edge serves the built app at `/`; `npm run dev` proxies the API to a running platform.
const edge = process.env.LLMCHAT_EDGE_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    // No inline scripts: the edge's content security policy allows only 'self'.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    proxy: { "/v1": edge, "/.well-known": edge },
  },
  test: {
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    environment: "node",
    setupFiles: ["src/testSetup.ts"],
  },
});
