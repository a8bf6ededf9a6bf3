// Interfaces that mirror the JSON of the gpucell server extension (gpucell/server/openapi.yaml).

/** One hardware label the broker serves, with live counts for the picker. */
export interface ICatalogEntry {
  label: string;
  price_per_hour: number;
  max_workers: number;
  simulate: boolean;
  served_by: string;
  warm: number;
  available: number;
}

/** GET /gpucell/catalog */
export interface ICatalog {
  broker: string;
  entries: ICatalogEntry[];
  default_hardware: string;
  known_labels: string[];
}

/** One worker process; state is one of starting, idle, busy, releasing. */
export interface IWorker {
  id: string;
  state: string;
  session: string;
  session_name: string;
  idle_s: number;
  hardware: string;
  /** Seconds until the idle timeout releases it; -1 when it is not idle. */
  release_in_s: number;
  pid: number;
  node: string;
  /** The worker's own GPUs (empty for CPU and simulated workers), from its heartbeats. */
  gpus?: IGpu[];
}

/** Utilisation (percent) and memory (bytes) of one GPU a worker holds. */
export interface IGpu {
  name: string;
  uuid: string;
  utilization: number;
  memory_used: number;
  memory_total: number;
}

export interface IPool {
  workers: IWorker[];
  queued: number;
  max_workers: number;
  min_warm: number;
  idle_timeout: number;
  price_per_hour: number;
  simulate: boolean;
}

export interface IUsageRecord {
  session: string;
  session_name: string;
  hardware: string;
  worker_seconds: number;
  cost: number;
}

/** Cost summed over every session of one notebook. */
export interface INotebookCost {
  notebook: string;
  worker_seconds: number;
  cost: number;
}

export interface IUsage {
  sessions: IUsageRecord[];
  by_notebook: INotebookCost[];
  total_cost: number;
}

/** GET /gpucell/status */
export interface IStatus {
  broker: string;
  pools: { [label: string]: IPool };
  usage: IUsage;
}

/** POST /gpucell/release */
export interface IReleaseResult {
  released: string[];
}

/** Body of every non-2xx answer. */
export interface IErrorBody {
  error: string;
}

/** One batch job at the broker; state is one of running, succeeded, failed, cancelled, interrupted. */
export interface IJob {
  id: string;
  notebook: string;
  state: string;
  hardware: string;
  submitted: number;
  started: number;
  /** Unix time; 0 while running. */
  finished: number;
  /** Start to end, or to the moment the server answered while running. */
  duration_s: number;
  cost: number;
  error: string;
}

/** GET /gpucell/jobs (newest first) */
export interface IJobList {
  broker: string;
  jobs: IJob[];
}

/** Body of POST /gpucell/jobs; the answer is the new IJob. */
export interface IJobRequest {
  path: string;
  hardware: string;
  parameters: string[];
}
