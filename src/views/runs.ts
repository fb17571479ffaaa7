/**
 * Submitted runs (`ctrlstack submit`): one line each with state, input and output path, newest
 * first.  Read-only: a run is managed from the CLI (`ctrlstack runs`); here the user sees what
 * ran, how it ended and where its output went (the path opens in the file browser).
 */
import { IRunRecord } from '../tokens';
import { formatDuration, h } from './dom';

export interface IRunActions {
  /** Open a path in JupyterLab (null when the path is outside the server's root). */
  open(path: string): void;
}

function basename(path: string): string {
  return path.split('/').pop() || path;
}

function when(r: IRunRecord, now: number): string {
  if (r.ended && r.started) {
    return `took ${formatDuration(r.ended - r.started)}`;
  }
  if (r.started) {
    return `running for ${formatDuration(now - r.started)}`;
  }
  return r.created ? `submitted ${formatDuration(now - r.created)} ago` : '';
}

export function renderRuns(runs: readonly IRunRecord[], actions: IRunActions): HTMLElement {
  if (!runs.length) {
    return h('div', { className: 'ctrlstack-empty' }, 'No runs. Submit one with ctrlstack submit NOTEBOOK.');
  }
  const now = Date.now() / 1000;
  const path = (p: string, cls: string): HTMLElement => {
    const a = h('a', { className: cls, href: '#', title: p }, basename(p));
    a.addEventListener('click', event => {
      event.preventDefault();
      actions.open(p);
    });
    return a;
  };
  return h(
    'ul',
    { className: 'ctrlstack-runs' },
    ...runs.map(r =>
      h(
        'li',
        { className: `ctrlstack-run ctrlstack-run-${r.state}`, 'data-run': r.id, 'data-state': r.state },
        h('span', { className: `ctrlstack-state ctrlstack-state-${r.state}` }, r.state),
        ' ',
        path(r.input, 'ctrlstack-run-input'),
        ' → ',
        path(r.output, 'ctrlstack-run-output'),
        h(
          'div',
          { className: 'ctrlstack-muted' },
          [r.profile, r.mode === 'batch' && r.job_id ? `job ${r.job_id}` : r.mode, when(r, now)]
            .filter(Boolean)
            .join(' · ')
        ),
        r.error ? h('div', { className: 'ctrlstack-message' }, r.error) : null
      )
    )
  );
}
