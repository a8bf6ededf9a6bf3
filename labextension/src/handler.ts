// The one helper that talks to the gpucell server extension.

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A failed call; `status` is 503 when the server cannot reach the broker, 0 when the server itself is gone. */
export class GpuCellAPIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }

  /** True when the panel should say "broker unreachable" rather than show a generic error. */
  get brokerUnreachable(): boolean {
    return this.status === 503;
  }
}

/** Call `/gpucell/<endPoint>` and return its JSON, or throw GpuCellAPIError with the server's message. */
export async function requestAPI<T>(endPoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpucell', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new GpuCellAPIError(`Jupyter server unreachable: ${String(error)}`, 0);
  }
  const text = await response.text();
  let body: unknown = null;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { error: text };
    }
  }
  if (!response.ok) {
    // Our handlers answer {"error"}; Jupyter server's own errors answer {"message"}.
    const fields = (body ?? {}) as { error?: unknown; message?: unknown };
    const message =
      fields.error !== undefined
        ? String(fields.error)
        : fields.message !== undefined
          ? String(fields.message)
          : `${response.status} ${response.statusText}`;
    throw new GpuCellAPIError(message, response.status);
  }
  return body as T;
}
