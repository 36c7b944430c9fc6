import type { ReactNode } from "react";
import { useTranslation } from "react-i18next";
import { NavLink } from "react-router";

import { useAuth } from "../auth";
import type { User } from "../lib/api";
import { AdminUsage } from "./AdminUsage";
import { AdminUsers } from "./AdminUsers";
import { AdminWorkers } from "./AdminWorkers";

/** An admin page's frame: its title, the tabs between the admin pages, and a refusal for anyone else. */
export function AdminFrame({ children }: { children: (me: User) => ReactNode }) {
  const { user } = useAuth();
  const { t } = useTranslation();
  if (user === null || user.role !== "admin") {
    return (
      <main className="page admin-page">
        <div className="inner">
          <h1>{t("admin.title")}</h1>
          <p className="notice warn" role="alert">
            {t("admin.only")}
          </p>
        </div>
      </main>
    );
  }
  return (
    <main className="page admin-page">
      <div className="inner">
        <h1>{t("admin.title")}</h1>
        <nav className="admin-tabs" aria-label={t("admin.tabs")}>
          <NavLink to="/admin" end>
            {t("admin.tabOverview")}
          </NavLink>
          <NavLink to="/admin/models" data-testid="admin-models-link">
            {t("admin.tabModels")}
          </NavLink>
        </nav>
        {children(user)}
      </div>
    </main>
  );
}

export default function AdminPage() {
  const { t } = useTranslation();
  return (
    <AdminFrame>
      {(me) => (
        <>
          <nav className="admin-jump" aria-label={t("admin.sections")}>
            <a href="#admin-workers">{t("admin.workersModels")}</a>
            <a href="#admin-users">{t("admin.users")}</a>
            <a href="#admin-usage">{t("admin.platformUsage")}</a>
          </nav>
          <AdminWorkers />
          <AdminUsers me={me} />
          <AdminUsage />
        </>
      )}
    </AdminFrame>
  );
}
