import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import App from "./App";
import "./i18n";
// Hangul for systems without a Korean font (a bare Linux, CI's Chromium): split by Unicode range,
// so a browser downloads only the parts of the pages' text it cannot draw with its own fonts.
import "@fontsource-variable/noto-sans-kr";
import "./styles.css";
import "./chat.css";
import "./pages/pages.css";
import "./pages/admin.css";
import { applyTheme, initialTheme } from "./theme";

applyTheme(initialTheme());

const root = document.getElementById("root");
if (root === null) throw new Error("no #root element");
createRoot(root).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
