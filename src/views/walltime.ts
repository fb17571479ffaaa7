/**
 * Walltime left of the Slurm job this server runs in (servers spawned by the hub's
 * StackSpawner), with a warning class before the end.  Reads `ctrlstack/api/session` once: the
 * end time does not change, so the countdown runs on the browser's clock from the server's
 * `left_seconds` (immune to a skewed browser clock) and never polls Slurm.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { API_PATH } from '../tokens';
import { h } from './dom';

interface ISession {
  job_id: string | null;
  left_seconds: number | null;
  warning_seconds: number | null;
}

/** "1:05:09" / "4:09" */
export function formatLeft(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh > 0 ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

export class WalltimeView {
  readonly node = h('div', { className: 'ctrlstack-walltime', hidden: true });

  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** Fetch the session; stays hidden outside a hub job or when the server does not answer. */
  async load(): Promise<void> {
    const url = URLExt.join(this.settings.baseUrl, API_PATH, 'session');
    try {
      const response = await ServerConnection.makeRequest(url, {}, this.settings);
      if (!response.ok) {
        return;
      }
      const session = (await response.json()) as ISession;
      if (session.left_seconds === null || session.job_id === null) {
        return;
      }
      this._job = session.job_id;
      this._end = Date.now() / 1000 + session.left_seconds;
      this._warn = session.warning_seconds ?? 0;
    } catch {
      return;
    }
    this.render();
    this._timer = window.setInterval(() => this.render(), 1000);
  }

  render(now: number = Date.now() / 1000): void {
    if (this._end === null) {
      return;
    }
    const left = this._end - now;
    const warn = left <= this._warn;
    this.node.hidden = false;
    this.node.classList.toggle('ctrlstack-walltime-warn', warn);
    this.node.textContent =
      left <= 0
        ? `Slurm job ${this._job}: walltime over — the server stops now`
        : `Slurm job ${this._job}: walltime left ${formatLeft(left)}` +
          (warn ? ' — save your work, the server stops at the end' : '');
  }

  dispose(): void {
    window.clearInterval(this._timer);
  }

  private _end: number | null = null;
  private _warn = 0;
  private _job = '';
  private _timer = 0;
}
