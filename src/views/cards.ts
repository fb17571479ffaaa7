/**
 * Cluster cards: state per worker/job, progress while workers start, walltime left, and the
 * actions (scale, adapt, stop, dashboard, insert a connect snippet, log).
 *
 * Cards are keyed by cluster name and only their contents are rebuilt on each poll, except
 * inputs the user is typing in, which keep their value.
 */
import { IClusterStatus, IJobStatus } from '../tokens';
import { clusterColour, formatBytes, formatDuration, h } from './dom';

export interface ICardActions {
  scale(name: string, workers: number): void;
  adapt(name: string, minimum: number, maximum: number | null): void;
  stop(name: string): void;
  forget(name: string): void;
  insert(name: string): void;
  logs(name: string): void;
  dashboardUrl(dashboard: string | null): string | null;
  /** Open dask-labextension's panes on this proxied dashboard URL... */
  daskPanes(url: string): void;
  /** ... shown only while dask-labextension is installed and active. */
  hasDaskPanes(): boolean;
}

function jobLine(job: IJobStatus, now: number): HTMLElement {
  const bits = [`job ${job.job_id}: ${job.state}`];
  if (job.reason) {
    bits.push(`(${job.reason})`);
  }
  if (job.node) {
    bits.push(`on ${job.node}`);
  }
  if (job.state === 'RUNNING' && job.end_time) {
    bits.push(`· ${formatDuration(job.end_time - now)} walltime left`);
  }
  return h(
    'li',
    { className: `ctrlstack-job ctrlstack-job-${job.state.toLowerCase()}` },
    bits.join(' '),
    job.log_tail ? h('pre', { className: 'ctrlstack-log-tail' }, job.log_tail) : null
  );
}

function numberInput(cls: string, value: string, title: string): HTMLInputElement {
  return h('input', { type: 'number', min: 0, className: cls, value, title });
}

export class ClusterCards {
  readonly node = h('div', { className: 'ctrlstack-cards' });

  constructor(private readonly actions: ICardActions) {}

  render(clusters: readonly IClusterStatus[]): void {
    const now = Date.now() / 1000;
    const seen = new Set<string>();
    if (!clusters.length) {
      this.node.replaceChildren(h('div', { className: 'ctrlstack-empty' }, 'No clusters. Launch one above, or from a notebook or the CLI.'));
      this._cards.clear();
      return;
    }
    this.node.querySelector('.ctrlstack-empty')?.remove();
    for (const c of clusters) {
      seen.add(c.name);
      let card = this._cards.get(c.name);
      if (!card) {
        card = this.create(c.name);
        this._cards.set(c.name, card);
      }
      this.fill(card, c, now);
      this.node.append(card); // keeps the server's order
    }
    for (const [name, card] of this._cards) {
      if (!seen.has(name)) {
        card.remove();
        this._cards.delete(name);
      }
    }
  }

  private create(name: string): HTMLElement {
    const card = h('div', { className: 'ctrlstack-card', 'data-cluster': name });
    card.style.borderLeftColor = clusterColour(name);
    const body = h('div', { className: 'ctrlstack-card-body' });
    const scaleN = numberInput('ctrlstack-scale-n', '', 'workers');
    // What the user typed stays until Scale sends it: the next status must not overwrite it
    // (focus leaves the input on the button's mousedown, before its click runs). The draft is
    // kept by cluster name, not on this node, so it survives the card being built again (a
    // status list that briefly lacks the cluster removes its card).
    scaleN.addEventListener('input', () => {
      this._drafts.set(name, scaleN.value);
    });
    const minN = numberInput('ctrlstack-adapt-min', '0', 'adapt minimum');
    const maxN = numberInput('ctrlstack-adapt-max', '', 'adapt maximum (empty: as many as fit)');
    const button = (label: string, cls: string, fn: () => void): HTMLButtonElement => {
      const b = h('button', { className: `jp-mod-styled ${cls}`, type: 'button', title: label === 'Connect' ? `insert client = ctrlstack.connect("${name}") into the active notebook` : null }, label);
      b.addEventListener('click', fn);
      return b;
    };
    const controls = h(
      'div',
      { className: 'ctrlstack-card-controls' },
      h('span', {}, scaleN, button('Scale', 'ctrlstack-scale', () => {
        const n = parseInt(scaleN.value, 10);
        if (!Number.isNaN(n) && n >= 0) {
          this._drafts.delete(name); // sent: statuses show the requested count again
          this.actions.scale(name, n);
        }
      })),
      h('span', {}, minN, maxN, button('Adapt', 'ctrlstack-adapt', () => {
        const lo = parseInt(minN.value || '0', 10);
        const hi = maxN.value ? parseInt(maxN.value, 10) : null;
        this.actions.adapt(name, Number.isNaN(lo) ? 0 : lo, hi !== null && Number.isNaN(hi) ? null : hi);
      })),
      h(
        'span',
        {},
        h('a', { className: 'ctrlstack-dashboard jp-mod-styled', target: '_blank', rel: 'noopener' }, 'Dashboard'),
        button('Dask panes', 'ctrlstack-dask-panes', () => {
          const url = card.dataset.dashboard;
          if (url) {
            this.actions.daskPanes(url);
          }
        }),
        button('Connect', 'ctrlstack-insert', () => this.actions.insert(name)),
        button('Log', 'ctrlstack-logs', () => this.actions.logs(name)),
        button('Stop', 'jp-mod-warn ctrlstack-stop', () => this.actions.stop(name)),
        button('Forget', 'ctrlstack-forget', () => this.actions.forget(name))
      )
    );
    card.append(body, controls);
    return card;
  }

  private fill(card: HTMLElement, c: IClusterStatus, now: number): void {
    card.dataset.state = c.state;
    card.dataset.connected = String(c.connected);
    card.dataset.requested = String(c.requested);
    const body = card.querySelector('.ctrlstack-card-body')!;
    const running = c.workers.filter(w => w.state === 'running').length;
    const connected = Math.max(c.connected, running);
    const starting = c.state === 'starting' || connected < c.requested;
    const memory = c.workers.length ? formatBytes(c.workers[0].memory_limit) : '';
    const header = h(
      'div',
      { className: 'ctrlstack-card-title' },
      h('b', {}, c.name),
      h('span', { className: `ctrlstack-state ctrlstack-state-${c.state}` }, c.state),
      h('span', { className: 'ctrlstack-muted' }, `${c.profile} · ${c.backend}${c.host ? ` · ${c.host}` : ''}`)
    );
    const facts = h(
      'div',
      { className: 'ctrlstack-facts' },
      h('span', { className: 'ctrlstack-count' }, `${connected}/${c.requested} workers`),
      c.threads ? ` · ${c.threads} CPUs each` : '',
      memory ? ` · ${memory} each` : '',
      c.policy ? ` · ${c.pinned ? 'pinned' : 'unpinned'} (${c.policy})` : '',
      c.adapt ? ` · adaptive ${c.adapt.minimum}–${c.adapt.maximum}` : ''
    );
    const progress = starting && c.requested > 0
      ? h('progress', { className: 'ctrlstack-progress', max: c.requested, value: connected })
      : null;
    const workers = h(
      'ul',
      { className: 'ctrlstack-workers' },
      ...c.workers.map(w =>
        h(
          'li',
          { className: `ctrlstack-worker ctrlstack-worker-${w.state}`, 'data-worker': w.name },
          `${w.name}: ${w.state}, CPUs ${w.cpus ?? 'unpinned'}${w.job_id ? `, job ${w.job_id}` : ''}`
        )
      )
    );
    const jobs = c.jobs.length ? h('ul', { className: 'ctrlstack-jobs' }, ...c.jobs.map(j => jobLine(j, now))) : null;
    const message = c.message ? h('div', { className: 'ctrlstack-message' }, c.message) : null;
    body.replaceChildren(header, facts, progress ?? '', workers, jobs ?? '', message ?? '');
    const scaleN = card.querySelector<HTMLInputElement>('.ctrlstack-scale-n');
    if (c.state !== 'running') {
      this._drafts.delete(c.name); // Scale is disabled; a later cluster of this name starts afresh
    }
    const draft = this._drafts.get(c.name);
    if (scaleN && draft !== undefined) {
      scaleN.value = draft;
    } else if (scaleN && document.activeElement !== scaleN) {
      scaleN.value = String(c.requested);
    }
    const link = card.querySelector<HTMLAnchorElement>('.ctrlstack-dashboard')!;
    const url = this.actions.dashboardUrl(c.dashboard);
    if (url) {
      link.href = url;
      link.style.display = '';
      card.dataset.dashboard = url;
    } else {
      link.removeAttribute('href');
      link.style.display = 'none';
      delete card.dataset.dashboard;
    }
    const panes = card.querySelector<HTMLElement>('.ctrlstack-dask-panes')!;
    panes.style.display = url && this.actions.hasDaskPanes() ? '' : 'none';
    panes.title = "open dask-labextension's dashboard panes for this cluster";
    // A record that cannot be stopped (broken, dead, unreachable) can only be forgotten.
    const gone = ['broken', 'dead', 'unreachable'].includes(c.state);
    card.querySelector<HTMLElement>('.ctrlstack-forget')!.style.display = gone ? '' : 'none';
    card.querySelector<HTMLElement>('.ctrlstack-stop')!.style.display = gone ? 'none' : '';
    const live = c.state === 'running';
    card.querySelectorAll<HTMLButtonElement>('.ctrlstack-card-controls button').forEach(b => {
      const always = ['ctrlstack-stop', 'ctrlstack-logs', 'ctrlstack-forget'].some(k => b.classList.contains(k));
      b.disabled = !live && !always;
    });
  }

  private _cards = new Map<string, HTMLElement>();
  /** Worker counts typed into a card and not yet sent, by cluster name. */
  private _drafts = new Map<string, string>();
}
