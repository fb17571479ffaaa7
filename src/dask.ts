/**
 * The bridge to dask-labextension (optional): point its dashboard panes at a ctrlstack cluster.
 *
 * dask-labextension keeps one dashboard URL (its sidebar's URL box) and opens its panes
 * (task stream, progress, memory…) from it.  A URL under this server's base URL — the
 * jupyter-server-proxy URL of a card — is checked by an authenticated request of the browser
 * (not by the server fetching itself without credentials), so the panes work through the proxy.
 * We drive it only through its public commands: set the URL, wait until it has checked it,
 * launch its default layout.  Panes already open follow the URL when it changes.
 */
import { CommandRegistry } from '@lumino/commands';

import { DaskCommandIDs } from './tokens';

/** Whether dask-labextension is installed and active in this JupyterLab. */
export function hasDaskPanes(commands: CommandRegistry): boolean {
  return commands.hasCommand(DaskCommandIDs.populateUrl) && commands.hasCommand(DaskCommandIDs.launchLayout);
}

export async function openDaskPanes(commands: CommandRegistry, url: string, timeoutMs = 20000): Promise<void> {
  if (!hasDaskPanes(commands)) {
    throw new Error('dask-labextension is not installed in this JupyterLab');
  }
  await commands.execute(DaskCommandIDs.populateUrl, { url });
  const deadline = Date.now() + timeoutMs;
  while (!commands.isEnabled(DaskCommandIDs.launchLayout)) {
    if (Date.now() > deadline) {
      throw new Error(`dask-labextension found no dashboard at ${url}`);
    }
    await new Promise(resolve => setTimeout(resolve, 200));
  }
  await commands.execute(DaskCommandIDs.launchLayout);
}
