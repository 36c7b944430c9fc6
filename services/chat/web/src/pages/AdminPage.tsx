import { useAuth } from "../auth";
import { AdminUsage } from "./AdminUsage";
import { AdminUsers } from "./AdminUsers";
import { AdminWorkers } from "./AdminWorkers";

export default function AdminPage() {
  const { user } = useAuth();
  if (user === null || user.role !== "admin") {
    return (
      <main className="page admin-page">
        <div className="inner">
          <h1>Admin</h1>
          <p className="notice warn" role="alert">
            Administrators only. Your account does not have access to this page.
          </p>
        </div>
      </main>
    );
  }
  return (
    <main className="page admin-page">
      <div className="inner">
        <h1>Admin</h1>
        <nav className="admin-jump" aria-label="Admin sections">
          <a href="#admin-workers">Workers &amp; models</a>
          <a href="#admin-users">Users</a>
          <a href="#admin-usage">Platform usage</a>
        </nav>
        <AdminWorkers />
        <AdminUsers me={user} />
        <AdminUsage />
      </div>
    </main>
  );
}
