/**
 * Live state for the sidebar: clusters (with per-worker status) and the topology, polled.
 *
 * Why polling with back-off: the server holds no push channel for cluster state (clusters live
 * in their supervisors), and polling is robust across server restarts.  The interval is short
 * while something changes (a cluster starting, workers pending), grows when nothing happens or
 * the server fails to answer, and polling pauses while the sidebar is hidden.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, CtrlstackAPI } from './api';
import { IClusterStatus, IProfiles, IRunRecord, ITopology } from './tokens';

const FAST_MS = 1000;
const SLOW_MS = 5000;
const MAX_MS = 30000;

function settling(c: IClusterStatus): boolean {
  return (
    c.state === 'starting' ||
    c.state === 'stopping' ||
    c.connected < c.requested ||
    c.workers.some(w => w.state !== 'running') ||
    c.jobs.some(j => j.state === 'PENDING')
  );
}

export class ClusterModel {
  constructor(readonly api: CtrlstackAPI) {}

  get clusters(): readonly IClusterStatus[] {
    return this._clusters;
  }
  get topology(): ITopology | null {
    return this._topology;
  }
  /** Submitted runs, newest first (their own request: a failure there spares the clusters). */
  get runs(): readonly IRunRecord[] {
    return this._runs;
  }
  get profiles(): IProfiles | null {
    return this._profiles;
  }
  /** The last polling failure, null once the server answers again. */
  get error(): string | null {
    return this._error;
  }
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  async loadProfiles(): Promise<IProfiles> {
    this._profiles = await this.api.profiles();
    this._changed.emit();
    return this._profiles;
  }

  /** Start (or resume) polling; safe to call repeatedly. */
  start(): void {
    if (this._active) {
      return;
    }
    this._active = true;
    void this.tick();
  }

  /** Pause polling (the sidebar is hidden). */
  pause(): void {
    this._active = false;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  dispose(): void {
    this.pause();
    Signal.clearData(this);
  }

  /** Poll now (after an action), then continue at the fast rate. */
  async refresh(): Promise<void> {
    this._delay = FAST_MS;
    await this.poll();
  }

  private async tick(): Promise<void> {
    this._timer = null;
    if (!this._active) {
      return;
    }
    await this.poll();
    if (this._active && this._timer === null) {
      this._timer = setTimeout(() => void this.tick(), this._delay);
    }
  }

  private async poll(): Promise<void> {
    try {
      const rows = await this.api.clusters();
      const detailed = await Promise.all(rows.map(row => this.detail(row)));
      this._topology = await this.api.topology();
      this._clusters = detailed;
      this._runs = await this.api.runs().catch(() => this._runs);
      this._error = null;
      const busy =
        detailed.some(settling) || this._runs.some(r => r.state === 'pending' || r.state === 'running');
      this._delay = busy ? FAST_MS : Math.min(Math.max(this._delay * 1.5, FAST_MS), SLOW_MS);
    } catch (reason) {
      this._error = reason instanceof Error ? reason.message : String(reason);
      this._delay = Math.min(Math.max(this._delay * 2, SLOW_MS), MAX_MS);
    }
    this._changed.emit();
  }

  /** Live per-worker status for running clusters; the registry row for the rest. */
  private async detail(row: IClusterStatus): Promise<IClusterStatus> {
    if (row.state !== 'running') {
      return row;
    }
    try {
      return await this.api.status(row.name);
    } catch (reason) {
      if (reason instanceof ApiError && reason.status === 404) {
        return { ...row, state: 'dead', message: reason.message };
      }
      const message = reason instanceof Error ? reason.message : String(reason);
      return { ...row, message };
    }
  }

  private _active = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _delay = FAST_MS;
  private _clusters: IClusterStatus[] = [];
  private _runs: IRunRecord[] = [];
  private _topology: ITopology | null = null;
  private _profiles: IProfiles | null = null;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
}
