/**
 * The left sidebar: topology map, launch form, cluster cards — one Lumino widget that renders
 * the model and turns button clicks into API calls (errors become notifications).
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { ApiError } from './api';
import { ClusterModel } from './model';
import { SIDEBAR_ID } from './tokens';
import { ClusterCards } from './views/cards';
import { h } from './views/dom';
import { LaunchForm } from './views/form';
import { renderRuns } from './views/runs';
import { renderTopology } from './views/topology';
import { WalltimeView } from './views/walltime';

export interface ISidebarOptions {
  model: ClusterModel;
  insertSnippet: (name: string) => void;
  /** Open a file of a run (absolute path) in JupyterLab. */
  openPath: (path: string) => void;
  /** dask-labextension's panes for a proxied dashboard URL, and whether it is installed. */
  daskPanes: (url: string) => Promise<void>;
  hasDaskPanes: () => boolean;
}

function messageOf(reason: unknown): string {
  return reason instanceof ApiError || reason instanceof Error ? reason.message : String(reason);
}

export class CtrlstackSidebar extends Widget {
  constructor(private readonly options: ISidebarOptions) {
    super();
    this.id = SIDEBAR_ID;
    this.addClass('ctrlstack-sidebar');
    this.title.caption = 'ctrlstack clusters';
    const model = options.model;
    this._form = new LaunchForm({
      model,
      onLaunched: status => {
        Notification.success(`cluster ${status.name} is running`, { autoClose: 3000 });
        void model.refresh();
      },
      onError: message => Notification.error(message, { autoClose: 8000 })
    });
    this._cards = new ClusterCards({
      scale: (name, n) => this.act(`scale ${name}`, () => model.api.scale(name, n)),
      adapt: (name, lo, hi) => this.act(`adapt ${name}`, () => model.api.adapt(name, lo, hi)),
      stop: name => this.act(`stop ${name}`, () => model.api.stop(name)),
      forget: name => this.act(`forget ${name}`, () => model.api.forget(name)),
      insert: name => options.insertSnippet(name),
      logs: name => void this.showLogs(name),
      dashboardUrl: dashboard => model.api.dashboardUrl(dashboard),
      daskPanes: url => this.act('dask panes', () => options.daskPanes(url)),
      hasDaskPanes: options.hasDaskPanes
    });
    this.node.append(
      h('div', { className: 'ctrlstack-error', hidden: true }),
      this._walltime.node,
      h('h3', {}, 'Topology'),
      this._map,
      h('h3', {}, 'Launch'),
      this._form.node,
      h('h3', {}, 'Clusters'),
      this._cards.node,
      h('h3', {}, 'Runs'),
      this._runs
    );
    model.changed.connect(this.update, this);
  }

  protected onAfterShow(): void {
    this.options.model.start();
    if (!this._walltimeLoaded) {
      this._walltimeLoaded = true;
      void this._walltime.load();
    }
    if (!this._profilesLoaded) {
      this._profilesLoaded = true;
      this.options.model.loadProfiles().then(
        profiles => this._form.render(profiles),
        reason => {
          this._profilesLoaded = false;
          Notification.error(`ctrlstack profiles: ${messageOf(reason)}`, { autoClose: 8000 });
        }
      );
    }
  }

  protected onAfterHide(): void {
    this.options.model.pause();
  }

  protected onUpdateRequest(): void {
    const model = this.options.model;
    const banner = this.node.querySelector<HTMLElement>('.ctrlstack-error')!;
    banner.hidden = model.error === null;
    banner.textContent = model.error ? `ctrlstack server not reachable: ${model.error}` : '';
    if (model.topology) {
      this._map.replaceChildren(renderTopology(model.topology));
    }
    this._cards.render(model.clusters);
    this._runs.replaceChildren(renderRuns(model.runs, { open: path => this.options.openPath(path) }));
  }

  private act(what: string, call: () => Promise<unknown>): void {
    call().then(
      () => void this.options.model.refresh(),
      reason => {
        Notification.error(`${what}: ${messageOf(reason)}`, { autoClose: 8000 });
        void this.options.model.refresh();
      }
    );
  }

  private async showLogs(name: string): Promise<void> {
    try {
      const text = await this.options.model.api.logs(name);
      const body = new Widget({ node: h('pre', { className: 'ctrlstack-log' }, text || '(empty)') });
      await showDialog({ title: `log of ${name}`, body, buttons: [Dialog.okButton()] });
    } catch (reason) {
      Notification.error(`log of ${name}: ${messageOf(reason)}`, { autoClose: 8000 });
    }
  }

  private _map = h('div', { className: 'ctrlstack-map-host' });
  private _runs = h('div', { className: 'ctrlstack-runs-host' });
  private _form: LaunchForm;
  private _cards: ClusterCards;
  private _profilesLoaded = false;
  private _walltime = new WalltimeView();
  private _walltimeLoaded = false;
}
