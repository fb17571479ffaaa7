/**
 * The REST client: the only module that knows ctrlstack's URLs (and the proxy's).
 *
 * Requests go through `ServerConnection`, which adds the token or the XSRF header the Jupyter
 * server requires.  A non-2xx answer becomes an `ApiError` carrying the field the server blamed,
 * so a form can show the message next to that field.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  API_PATH,
  IApiError,
  IClusterStatus,
  ILaunchRequest,
  IProfiles,
  IRunRecord,
  ITopology
} from './tokens';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field: string | null = null,
    readonly allowed: string | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

function isApiError(data: unknown): data is IApiError {
  return (
    typeof data === 'object' &&
    data !== null &&
    'error' in data &&
    typeof (data as IApiError).error?.message === 'string'
  );
}

export class CtrlstackAPI {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  private async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, API_PATH, path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (reason) {
      throw new ApiError(0, `the Jupyter server did not answer: ${String(reason)}`);
    }
    const text = await response.text();
    let data: unknown = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      if (isApiError(data)) {
        const e = data.error;
        throw new ApiError(response.status, e.message, e.field, e.allowed);
      }
      throw new ApiError(response.status, `${response.status} ${response.statusText}`);
    }
    return data as T;
  }

  private post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>(path, { method: 'POST', body: JSON.stringify(body) });
  }

  profiles(): Promise<IProfiles> {
    return this.request<IProfiles>('profiles');
  }

  clusters(): Promise<IClusterStatus[]> {
    return this.request<IClusterStatus[]>('clusters');
  }

  status(name: string): Promise<IClusterStatus> {
    return this.request<IClusterStatus>(`clusters/${encodeURIComponent(name)}`);
  }

  launch(request: ILaunchRequest): Promise<IClusterStatus> {
    return this.post<IClusterStatus>('clusters', request);
  }

  scale(name: string, workers: number): Promise<IClusterStatus> {
    return this.post<IClusterStatus>(`clusters/${encodeURIComponent(name)}/scale`, { workers });
  }

  adapt(name: string, minimum: number, maximum: number | null): Promise<IClusterStatus> {
    return this.post<IClusterStatus>(`clusters/${encodeURIComponent(name)}/adapt`, {
      minimum,
      maximum
    });
  }

  forget(name: string): Promise<IClusterStatus> {
    return this.post<IClusterStatus>(`clusters/${encodeURIComponent(name)}/forget`, {});
  }

  async stop(name: string): Promise<void> {
    await this.request<null>(`clusters/${encodeURIComponent(name)}`, { method: 'DELETE' });
  }

  async logs(name: string, lines = 200): Promise<string> {
    const data = await this.request<{ log: string }>(
      `clusters/${encodeURIComponent(name)}/logs?lines=${lines}`
    );
    return data.log;
  }

  runs(limit = 20): Promise<IRunRecord[]> {
    return this.request<IRunRecord[]>(`runs?limit=${limit}`);
  }

  topology(): Promise<ITopology> {
    return this.request<ITopology>('topology');
  }

  /**
   * The dashboard through the authenticated server (jupyter-server-proxy), or null.
   *
   * Only a dashboard on this machine's loopback is proxied: anything else would make the
   * Jupyter server an open relay.
   */
  dashboardUrl(dashboard: string | null): string | null {
    if (!dashboard) {
      return null;
    }
    let parsed: URL;
    try {
      parsed = new URL(dashboard);
    } catch {
      return null;
    }
    const local = ['127.0.0.1', 'localhost', '[::1]'].includes(parsed.hostname);
    if (!local || !parsed.port) {
      return null;
    }
    const path = parsed.pathname.replace(/^\/+/, '') || 'status';
    return URLExt.join(this.settings.baseUrl, 'proxy', parsed.port, path);
  }
}
