/**
 * Wire types of the ctrlstack REST API and the extension's IDs.
 *
 * Importing this file has no side effects: it only declares constants and types, so views,
 * the model and tests can import it freely.  The shapes mirror `ctrlstack/deploy/status.py`
 * (`ClusterStatus` and friends) and `ctrlstack/server/` (profiles, topology, errors).
 */

export const PLUGIN_ID = 'ctrlstack:plugin';
export const SIDEBAR_ID = 'ctrlstack-sidebar';
export const API_PATH = 'ctrlstack/api';

export namespace CommandIDs {
  export const insertSnippet = 'ctrlstack:insert-snippet';
  export const openSidebar = 'ctrlstack:open-sidebar';
}

/** dask-labextension's commands (when it is installed) that point its panes at a URL. */
export namespace DaskCommandIDs {
  export const populateUrl = 'dask:populate-dashboard-url';
  export const launchLayout = 'dask:launch-layout';
}

/** Cluster states (`CLUSTER_STATES` in status.py). */
export type ClusterState =
  | 'starting'
  | 'running'
  | 'stopping'
  | 'dead'
  | 'remote'
  | 'unreachable'
  | 'broken';

export interface IWorkerStatus {
  name: string;
  state: string; // pending | running | retiring | gone
  address: string | null;
  host: string | null;
  cpus: string | null; // pinned CPU list ("0-3"), null when unpinned
  threads: number;
  task_threads: number;
  memory_limit: number | null;
  job_id: string | null;
}

export interface IJobStatus {
  job_id: string;
  state: string; // PENDING | RUNNING | COMPLETING | COMPLETED | FAILED | CANCELLED | TIMEOUT | UNKNOWN
  reason: string | null;
  node: string | null;
  workers: number;
  submitted: number | null;
  start_estimate: number | null;
  end_time: number | null; // epoch seconds: walltime end while running
  log: string | null;
  log_tail: string | null;
}

export interface IAdaptRange {
  minimum: number;
  maximum: number;
}

export interface IClusterStatus {
  name: string;
  profile: string;
  backend: string;
  state: ClusterState;
  owner: string | null;
  host: string | null;
  created: number;
  ephemeral: boolean;
  address: string | null;
  dashboard: string | null;
  pid: number | null;
  connected: number;
  requested: number;
  max_workers: number | null;
  threads: number;
  task_threads: number;
  policy: string;
  pinned: boolean;
  adapt: IAdaptRange | null;
  workers: IWorkerStatus[];
  jobs: IJobStatus[];
  log: string | null;
  path: string | null;
  message: string | null;
}

/** A JSON Schema node, as far as the form generator reads it. */
export interface ISchema {
  type?: string | string[];
  enum?: unknown[];
  const?: unknown;
  anyOf?: ISchema[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minLength?: number;
  pattern?: string;
  examples?: unknown[];
  description?: string;
  properties?: { [key: string]: ISchema };
  required?: string[];
  additionalProperties?: boolean | ISchema;
}

export interface IProfile {
  name: string;
  backend: string;
  values: { [field: string]: unknown };
  error: string | null;
}

export interface IProfiles {
  profiles: IProfile[];
  schema: ISchema;
  backends: { [backend: string]: ISchema };
}

export interface ITopologyOwner {
  cluster: string;
  worker: string;
  state: string;
}

export interface IMachine {
  source: string;
  cpus: string;
  allowed: string;
  packages: { [id: string]: string };
  numa_nodes: { [id: string]: string };
  l3: string[];
  cores: string[];
  leaves: {
    index: number;
    cpus: string;
    allowed: string;
    package: number;
    numa: number | null;
    l3: number | null;
  }[];
  diagnostics: string[];
}

export interface ITopology {
  machine: IMachine;
  load: { [cpu: string]: number };
  owners: { [cpu: string]: ITopologyOwner[] };
  unpinned: ITopologyOwner[];
  crowded: number[];
}

/** The body of every error response. */
export interface IApiError {
  error: {
    kind: 'user' | 'failure';
    message: string;
    field: string | null;
    allowed: string | null;
  };
}

export interface ILaunchRequest {
  profile: string;
  name: string | null;
  overrides: { [field: string]: unknown };
}

/** A submitted run (`ctrlstack/server/wire.py` `RUN_FIELDS`, from `ctrlstack.runs.RunRecord`). */
export interface IRunRecord {
  id: string;
  kind: string; // notebook | script
  input: string;
  output: string;
  log: string;
  output_dir: string;
  profile: string;
  mode: string; // local | batch
  state: string; // pending | running | succeeded | failed | cancelled
  host: string | null;
  job_id: string | null;
  cluster: string | null;
  created: number | null;
  started: number | null;
  ended: number | null;
  exit_code: number | null;
  error: string | null;
  failed_cell: number | null;
}
