import { useState } from "react";
import { BrowserRouter, Navigate, NavLink, Outlet, Route, Routes, useLocation, useNavigate } from "react-router";

import { AuthProvider, useAuth } from "./auth";
import { session } from "./lib/api";
import AdminPage from "./pages/AdminPage";
import AuthPage from "./pages/AuthPage";
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
            <Route path="/admin" element={<AdminPage />} />
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
  if (loading)
    return (
      <p className="muted" style={{ padding: 20 }}>
        Loading…
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
        <nav aria-label="Main">
          <NavLink
            to="/"
            end
            className={({ isActive }) => (isActive || location.pathname.startsWith("/c/") ? "active" : "")}
          >
            Chat
          </NavLink>
          <NavLink to="/usage">Usage</NavLink>
          <NavLink to="/keys">API keys</NavLink>
          {user.role === "admin" && <NavLink to="/admin">Admin</NavLink>}
        </nav>
        <span className="spacer" />
        <span className="who">{user.email}</span>
        <button
          type="button"
          className="icon"
          onClick={toggleTheme}
          aria-label={theme === "dark" ? "Switch to light theme" : "Switch to dark theme"}
          title="Theme"
        >
          {theme === "dark" ? "☀" : "☾"}
        </button>
        <button
          type="button"
          onClick={() => {
            void session.logout().then(() => navigate("/login"));
          }}
        >
          Sign out
        </button>
      </header>
      <Outlet />
    </div>
  );
}
