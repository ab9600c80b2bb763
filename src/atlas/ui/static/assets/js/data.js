// Small shared look-ups with a short-lived cache: job display names per workspace, and the optional schedules API.

import { api, ApiError } from "./api.js";
import { prettifyId } from "./dom.js";

const JOBS_TTL_MS = 30_000;
const jobsCache = new Map(); // workspaceId → {at, promise}

/** `GET /api/workspaces/<ws>/jobs`, cached for a few seconds; resolves to [] for an unknown workspace. */
export function workspaceJobs(workspaceId) {
  const hit = jobsCache.get(workspaceId);
  if (hit && Date.now() - hit.at < JOBS_TTL_MS) return hit.promise;
  const promise = api(`/api/workspaces/${encodeURIComponent(workspaceId)}/jobs`).catch((exc) => {
    jobsCache.delete(workspaceId);
    if (exc instanceof ApiError && exc.status === 404) return [];
    throw exc;
  });
  jobsCache.set(workspaceId, { at: Date.now(), promise });
  return promise;
}

/** Map jobId → display name for the given workspaces (errors leave names out; callers fall back to ids). */
export async function jobNames(workspaceIds) {
  const names = new Map();
  await Promise.all([...new Set(workspaceIds)].filter(Boolean).map(async (ws) => {
    try {
      for (const job of await workspaceJobs(ws)) names.set(`${ws}/${job.id}`, job.name || job.title || job.id);
    } catch {
      /* names are cosmetic */
    }
  }));
  return names;
}

export function jobLabel(names, workspaceId, jobName) {
  return names.get(`${workspaceId}/${jobName}`) || prettifyId(jobName) || jobName || "—";
}

/**
 * `GET /api/schedules` → Map "<ws>/<signal>" → entry ({nextRun, paused, …}); null when the daemon has no
 * schedules API (older daemons), so callers show the cron expression alone.
 */
export async function schedules(signal) {
  try {
    const body = await api("/api/schedules", { signal });
    const list = Array.isArray(body) ? body : Array.isArray(body?.schedules) ? body.schedules : [];
    const out = new Map();
    for (const entry of list) {
      const ws = entry.workspaceId ?? entry.workspace;
      const sig = entry.signalId ?? entry.signal;
      if (ws && sig) out.set(`${ws}/${sig}`, entry);
    }
    return out;
  } catch (exc) {
    if (exc?.name === "AbortError") throw exc;
    return null;
  }
}
