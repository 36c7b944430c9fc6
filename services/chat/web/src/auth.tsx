import { createContext, use, useCallback, useEffect, useState, type ReactNode } from "react";

import { session, type User } from "./lib/api";

interface AuthState {
  user: User | null;
  /** True until the stored session (if any) has been checked. */
  loading: boolean;
  /** Why the last session ended, for the sign-in page. */
  ended: "expired" | null;
  reload: () => Promise<void>;
}

const AuthContext = createContext<AuthState | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null>(null);
  const [loading, setLoading] = useState(true);
  const [ended, setEnded] = useState<"expired" | null>(null);

  const reload = useCallback(
    () =>
      currentUser().then((found) => {
        setUser(found);
        setLoading(false);
      }),
    [],
  );

  useEffect(() => {
    void reload();
    return session.onChange((reason) => {
      setEnded(reason === "expired" ? "expired" : null);
      if (reason === "login") void reload();
      else setUser(null);
    });
  }, [reload]);

  return <AuthContext value={{ user, loading, ended, reload }}>{children}</AuthContext>;
}

export function useAuth(): AuthState {
  const state = use(AuthContext);
  if (state === null) throw new Error("useAuth outside AuthProvider");
  return state;
}

/** The signed-in user, or null (no stored session, or it is no longer valid). */
async function currentUser(): Promise<User | null> {
  if (!session.signedIn) return null;
  try {
    return await session.json<User>("/v1/auth/me");
  } catch {
    return null;
  }
}
