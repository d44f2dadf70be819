/**
 * The webmail's entry: asks the server whether the session cookie is still good, then shows the
 * sign-in form or the mail screen. Everything after sign-in goes through the JMAP API.
 */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { App } from './app.tsx';
import { connect, currentSession, login, logout, type WebSession } from './session.ts';
import { Store } from './store.ts';
import './styles.css';

function Login({ onIn }: { onIn: (s: WebSession) => void }) {
  const [problem, setProblem] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const data = new FormData(e.currentTarget as HTMLFormElement);
    setBusy(true);
    setProblem('');
    try {
      onIn(await login(String(data.get('username')), String(data.get('password'))));
    } catch (err) {
      setProblem((err as Error).message);
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <form onSubmit={(e) => void submit(e)} aria-labelledby="login-title">
        <h1 id="login-title">Tomlinson mail</h1>
        <label>
          Email address <input name="username" type="email" autocomplete="username" required autofocus />
        </label>
        <label>
          Password <input name="password" type="password" autocomplete="current-password" required />
        </label>
        {problem && (
          <p role="alert" class="problem">
            {problem}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}

function Root() {
  const [store, setStore] = useState<Store | null>(null);
  const [phase, setPhase] = useState<'boot' | 'login' | 'in'>('boot');
  const [problem, setProblem] = useState('');

  const enter = async (session: WebSession) => {
    const client = await connect(session);
    const s = new Store(client, session);
    await s.loadMailboxes();
    void s.loadPage(0);
    setStore(s);
    setPhase('in');
  };

  useEffect(() => {
    currentSession()
      .then((s) => (s ? enter(s) : setPhase('login')))
      .catch((e: Error) => {
        setProblem(e.message);
        setPhase('login');
      });
  }, []);

  if (phase === 'boot') return <p class="booting">Loading…</p>;
  if (phase === 'login' || !store)
    return (
      <>
        {problem && (
          <p role="alert" class="problem">
            {problem}
          </p>
        )}
        <Login onIn={(s) => void enter(s).catch((e: Error) => setProblem(e.message))} />
      </>
    );
  return (
    <App
      store={store}
      onSignOut={() =>
        void logout(store.session).finally(() => {
          setStore(null);
          setPhase('login');
          document.title = 'Tomlinson';
        })
      }
    />
  );
}

render(<Root />, document.getElementById('app')!);
