// The console's one door to the server: grpc-web clients on the page's own origin, the API key
// (session storage only, never a URL), and readable errors.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { TaskService, type TaskEvent, type WatchTasksRequest } from "./gen/annotask/v1/tasks_pb";
import { WorkService } from "./gen/annotask/v1/work_pb";
import { ProjectService } from "./gen/annotask/v1/projects_pb";
import { BatchService } from "./gen/annotask/v1/batches_pb";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";

const KEY_STORAGE = "annotask.apiKey";

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

const withKey: Interceptor = (next) => async (req) => {
  const key = apiKey();
  if (key) req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [withKey],
});

export const tasks = createClient(TaskService, transport);
export const work = createClient(WorkService, transport);
export const projects = createClient(ProjectService, transport);
export const batches = createClient(BatchService, transport);

/**
 * WatchTasks, calling `onOpen` once the server has answered with headers: it subscribes before
 * answering, so every change committed after `onOpen` will arrive on this stream.
 */
export function watchTasks(
  request: WatchTasksRequest,
  signal: AbortSignal,
  onOpen: () => void,
): AsyncIterable<TaskEvent> {
  const opened: Interceptor = (next) => async (req) => {
    const res = await next(req);
    onOpen();
    return res;
  };
  const client = createClient(
    TaskService,
    createGrpcWebTransport({ baseUrl: window.location.origin, interceptors: [withKey, opened] }),
  );
  return client.watchTasks(request, { signal });
}

export interface ReadableError {
  code: string;
  message: string;
  reason?: string;
  domain?: string;
}

/** What a failed call says, for a banner: the grpc-message and the ErrorInfo reason. */
export function describeError(err: unknown): ReadableError {
  if (err instanceof ConnectError) {
    const info = err.findDetails(ErrorInfoSchema)[0];
    return {
      code: Code[err.code] ?? String(err.code),
      message: err.rawMessage || "(no message)",
      reason: info?.reason || undefined,
      domain: info?.domain || undefined,
    };
  }
  if (err instanceof Error) return { code: "Client", message: err.message };
  return { code: "Client", message: String(err) };
}

export function isCode(err: unknown, code: Code): boolean {
  return err instanceof ConnectError && err.code === code;
}

export { Code, ConnectError };
