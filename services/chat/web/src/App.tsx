import { useState } from "react";
import { useTranslation } from "react-i18next";
import { BrowserRouter, Navigate, NavLink, Outlet, Route, Routes, useLocation, useNavigate } from "react-router";

import { AuthProvider, useAuth } from "./auth";
import { LanguageSwitch } from "./components/LanguageSwitch";
import { session } from "./lib/api";
import AdminModelsPage from "./pages/AdminModelsPage";
import AdminPage from "./pages/AdminPage";
import AuthPage from "./pages/AuthPage";
import BatchesPage from "./pages/BatchesPage";
import ChatPage from "./pages/ChatPage";
import KeysPage from "./pages/KeysPage";
import UsagePage from "./pages/UsagePage";
import { applyTheme, initialTheme, type Theme } from "./theme";

export default function App() {
  return (
    <AuthProvider>
      <BrowserRouter>
        <Routes>
          <Route path="/login" element={<AuthPage mode="login" />} />
          <Route path="/register" element={<AuthPage mode="register" />} />
          <Route element={<Shell />}>
            <Route path="/" element={<ChatPage />} />
            <Route path="/c/:conversationId" element={<ChatPage />} />
            <Route path="/usage" element={<UsagePage />} />
            <Route path="/keys" element={<KeysPage />} />
            <Route path="/batches" element={<BatchesPage />} />
            <Route path="/admin" element={<AdminPage />} />
            <Route path="/admin/models" element={<AdminModelsPage />} />
            <Route path="*" element={<Navigate to="/" replace />} />
          </Route>
        </Routes>
      </BrowserRouter>
    </AuthProvider>
  );
}

function Shell() {
  const { user, loading } = useAuth();
  const location = useLocation();
  const navigate = useNavigate();
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const { t } = useTranslation();
  if (loading)
    return (
      <p className="muted" style={{ padding: 20 }}>
        {t("common.loading")}
      </p>
    );
  if (user === null) return <Navigate to="/login" replace state={{ from: location.pathname }} />;
  const toggleTheme = () => {
    const next = theme === "dark" ? "light" : "dark";
    applyTheme(next);
    setTheme(next);
  };
  return (
    <div className="app">
      <header className="topbar">
        <NavLink to="/" className="brand">
          llmchat
        </NavLink>
        <nav aria-label={t("nav.main")}>
          <NavLink
            to="/"
            end
            className={({ isActive }) => (isActive || location.pathname.startsWith("/c/") ? "active" : "")}
          >
            {t("nav.chat")}
          </NavLink>
          <NavLink to="/usage">{t("nav.usage")}</NavLink>
          <NavLink to="/keys">{t("nav.keys")}</NavLink>
          <NavLink to="/batches">{t("nav.batches")}</NavLink>
          {user.role === "admin" && <NavLink to="/admin">{t("nav.admin")}</NavLink>}
        </nav>
        <span className="spacer" />
        <span className="who">{user.email}</span>
        <LanguageSwitch />
        <button
          type="button"
          className="icon"
          onClick={toggleTheme}
          aria-label={theme === "dark" ? t("theme.toLight") : t("theme.toDark")}
          title={t("theme.title")}
        >
          {theme === "dark" ? "☀" : "☾"}
        </button>
        <button
          type="button"
          onClick={() => {
            void session.logout().then(() => navigate("/login"));
          }}
        >
          {t("nav.signOut")}
        </button>
      </header>
      <Outlet />
    </div>
  );
}
