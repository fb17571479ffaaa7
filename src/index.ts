/**
 * Plugin wiring only: build the API client, model and sidebar; register the insert command.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStateDB } from '@jupyterlab/statedb';
import { LabIcon } from '@jupyterlab/ui-components';

import { CtrlstackAPI } from './api';
import { hasDaskPanes, openDaskPanes } from './dask';
import { ClusterModel } from './model';
import { CtrlstackSidebar } from './sidebar';
import { CommandIDs, PLUGIN_ID } from './tokens';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
  '<rect x="3" y="3" width="8" height="8" rx="1"/><rect x="13" y="3" width="8" height="8" rx="1"/>' +
  '<rect x="3" y="13" width="8" height="8" rx="1"/><rect x="13" y="13" width="8" height="8" rx="1" opacity=".45"/></g></svg>';

const SEEN_KEY = `${PLUGIN_ID}:seen`;

const icon = new LabIcon({ name: 'ctrlstack:chips', svgstr: ICON_SVG });

/** The snippet a card inserts: a TLS client of that cluster, from the cluster's credentials. */
export function snippet(name: string): string {
  return `import ctrlstack\nclient = ctrlstack.connect(${JSON.stringify(name)})\nclient`;
}

/** Open an absolute path in JupyterLab if it lies under the server's root, else say where it is. */
function openPath(app: JupyterFrontEnd, path: string): void {
  const root = (PageConfig.getOption('serverRoot') || '').replace(/\/+$/, '');
  if (root && path.startsWith(root + '/')) {
    void app.commands.execute('docmanager:open', { path: path.slice(root.length + 1) });
  } else {
    Notification.info(`${path} is outside this server's root`, { autoClose: 8000 });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'ctrlstack sidebar: topology map, launch form and cluster cards',
  autoStart: true,
  requires: [ILabShell],
  optional: [INotebookTracker, ILayoutRestorer, IStateDB],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null,
    state: IStateDB | null
  ) => {
    app.commands.addCommand(CommandIDs.insertSnippet, {
      label: 'Insert ctrlstack client',
      execute: args => {
        const name = String(args['name'] ?? '');
        const panel = notebooks?.currentWidget;
        if (!panel) {
          Notification.warning('Open a notebook to insert the client snippet into.', { autoClose: 5000 });
          return;
        }
        NotebookActions.insertBelow(panel.content);
        panel.content.activeCell?.model.sharedModel.setSource(snippet(name));
        shell.activateById(panel.id);
      }
    });
    const model = new ClusterModel(new CtrlstackAPI());
    const sidebar = new CtrlstackSidebar({
      model,
      insertSnippet: name => void app.commands.execute(CommandIDs.insertSnippet, { name }),
      openPath: path => openPath(app, path),
      daskPanes: url => openDaskPanes(app.commands, url),
      hasDaskPanes: () => hasDaskPanes(app.commands)
    });
    sidebar.title.icon = icon;
    shell.add(sidebar, 'left', { rank: 200 });
    restorer?.add(sidebar, sidebar.id);
    app.commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show ctrlstack sidebar',
      execute: () => shell.activateById(sidebar.id)
    });
    // The first time JupyterLab runs with ctrlstack, show the sidebar (later: as the user left it).
    if (state) {
      void app.restored
        .then(() => state.fetch(SEEN_KEY))
        .then(seen => {
          if (!seen) {
            shell.activateById(sidebar.id);
            return state.save(SEEN_KEY, true);
          }
        });
    }
  }
};

export default plugin;
