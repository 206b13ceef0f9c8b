// Downloads each component's weight shards into the Cache API before tvmjs loads them.
//
// Why not just tvmjs's fetchTensorCache? It reports progress per whole shard only and never
// checks the md5 that tensor-cache.json lists for every shard. So we fetch the shards ourselves
// (streamed: byte-level progress), verify each md5, and store them exactly where tvmjs looks:
// tvmjs's ArtifactCache opens `caches.open(cacheScope)` and keys each shard by
// `new Request(new URL(record.dataPath, tensorCacheUrl).href)`. When every shard is present,
// tvmjs's own `hasAllKeys` check passes and it downloads nothing.
//
// A component is all-or-nothing in the cache: on any failure every entry under its params/
// folder is deleted, so a later visit never trusts a half-written or corrupt set.
//
// Shards travel IN_FLIGHT at a time, each hashed in a worker of its own: one at a time, the
// page fetched, hashed (in JS, on its own thread) and cached 4.3 GB of SD 1.5 at 60 MB/s
// (bench/results: the first load in Chromium).

/** Absolute URL of a component's tensor cache folder (what fetchTensorCache gets too). */
export function paramsUrl(baseUrl, spec) {
  return new URL(spec.params.endsWith("/") ? spec.params : spec.params + "/", baseUrl).href;
}

/** Remove every cached entry under `folderUrl` (one component's params) from cache `scope`. */
export async function purgeComponent(scope, folderUrl) {
  const cache = await caches.open(scope);
  for (const request of await cache.keys()) {
    if (request.url.startsWith(folderUrl)) await cache.delete(request);
  }
}

const MD5_HEADER = "X-Websd-Md5";
const IN_FLIGHT = Math.max(1, Math.min(4, globalThis.navigator?.hardwareConcurrency || 1));

// A worker of md5_worker.js: md5(bytes) resolves to [hex digest, the bytes back].
function md5Hasher() {
  const worker = new Worker(new URL("md5_worker.js", import.meta.url));
  return {
    md5: (bytes) => new Promise((resolve, reject) => {
      worker.onmessage = ({ data }) => resolve([data.md5, new Uint8Array(data.buffer)]);
      worker.onerror = (event) => reject(new Error(`md5 worker: ${event.message}`));
      worker.postMessage({ buffer: bytes.buffer }, [bytes.buffer]);
    }),
    close: () => worker.terminate(),
  };
}

// Run work(item) over items with at most `lanes` running at once, each lane with its own
// hasher. After an error the lanes take no more items; once all have stopped (so that nothing
// is written after the caller cleans up), the first error is thrown.
async function inLanes(items, lanes, work) {
  let next = 0;
  let failed = false;
  const results = await Promise.allSettled(Array.from({ length: Math.min(lanes, items.length) }, async () => {
    const hasher = md5Hasher();
    try {
      while (!failed && next < items.length) await work(items[next++], hasher);
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      hasher.close();
    }
  }));
  const rejected = results.find((r) => r.status === "rejected");
  if (rejected) throw rejected.reason;
}

// Each step of a shard's way into the cache is a performance.measure entry ("websd weights:
// fetch", "... md5", "... cache"), so that DevTools' performance panel and the bench
// (bench/chromium_bench.py) see where a first load goes.
async function measured(step, work) {
  const start = performance.now();
  try {
    return await work();
  } finally {
    performance.measure(`websd weights: ${step}`, { start, end: performance.now() });
  }
}

// A path relative to the site, for messages: "params/unet/params_shard_0.bin".
const shown = (url, baseUrl) => (url.startsWith(baseUrl) ? url.slice(baseUrl.length) : url);

async function fetchOk(url, baseUrl, init) {
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(`missing ${shown(url, baseUrl)} (HTTP ${response.status})`);
  return response;
}

// Read a response body chunk by chunk, reporting each chunk's size.
async function readWithProgress(response, onBytes) {
  const reader = response.body.getReader();
  const chunks = [];
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    length += value.byteLength;
    onBytes(value.byteLength);
  }
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) { bytes.set(chunk, offset); offset += chunk.byteLength; }
  return bytes;
}

/**
 * Make sure every shard of `components` ({name: manifest component}) is in cache `scope`.
 * onProgress(loadedBytes, totalBytes) is called as bytes arrive; shards already cached count
 * as loaded at once, so a fully cached model reports total/total without any download.
 */
export async function ensureWeights(baseUrl, components, scope, onProgress = () => {}) {
  baseUrl = new URL(baseUrl, document.baseURI).href;
  const cache = await caches.open(scope);
  // First every component's index, so the total is known before the first byte arrives.
  // "no-cache": revalidate, so a rebuilt model is noticed even when its shards are cached.
  const plans = [];
  for (const spec of Object.values(components)) {
    const folder = paramsUrl(baseUrl, spec);
    const indexUrl = new URL("tensor-cache.json", folder).href;
    let text;
    try {
      text = await (await fetchOk(indexUrl, baseUrl, { cache: "no-cache" })).text();
    } catch (error) {
      await purgeComponent(scope, folder);
      throw error;
    }
    const shards = JSON.parse(text).records.map((r) => ({
      url: new URL(r.dataPath, folder).href, nbytes: r.nbytes, md5: r.md5sum,
    }));
    // A cached shard counts only if it was verified against this very md5 (stored in a header
    // when we cached it): a rebuilt model's shards have the same names but other bytes.
    const wanted = new Set([indexUrl, ...shards.map((x) => x.url)]);
    for (const request of await cache.keys()) {
      if (request.url.startsWith(folder) && !wanted.has(request.url)) await cache.delete(request);
    }
    for (const shard of shards) {
      const hit = await cache.match(shard.url);
      shard.cached = hit !== undefined && hit.headers.get(MD5_HEADER) === shard.md5;
    }
    plans.push({ folder, indexUrl, text, shards });
  }
  const total = plans.flatMap((p) => p.shards).reduce((s, x) => s + x.nbytes, 0);
  let loaded = plans.flatMap((p) => p.shards).filter((x) => x.cached).reduce((s, x) => s + x.nbytes, 0);
  onProgress(loaded, total);

  for (const { folder, indexUrl, text, shards } of plans) {
    try {
      await inLanes(shards.filter((x) => !x.cached), IN_FLIGHT, async (shard, hasher) => {
        let received = 0;
        const fetched = await measured("fetch", async () => {
          // "no-store": the Cache API keeps the only copy; no second one in the HTTP cache.
          const response = await fetchOk(shard.url, baseUrl, { cache: "no-store" });
          return readWithProgress(response, (n) => {
            received += n;
            loaded += n;
            onProgress(Math.min(loaded, total), total);
          });
        });
        const [md5, bytes] = await measured("md5", () => hasher.md5(fetched));
        if (bytes.byteLength !== shard.nbytes || md5 !== shard.md5) {
          throw new Error(`checksum mismatch in ${shown(shard.url, baseUrl)}`);
        }
        await measured("cache", () => cache.put(new Request(shard.url), new Response(bytes, {
          headers: { "Content-Type": "application/octet-stream", [MD5_HEADER]: shard.md5 },
        })));
        loaded += shard.nbytes - received;  // a short shard counts whole once it is cached
      });
      onProgress(Math.min(loaded, total), total);
      // Always (over)write the index: tvmjs reads it from the cache when present, and a stale
      // one from an earlier build would name other records.
      await cache.put(new Request(indexUrl), new Response(text, { headers: { "Content-Type": "application/json" } }));
    } catch (error) {
      await purgeComponent(scope, folder);
      throw error;
    }
  }
}
