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
      for (const shard of shards.filter((x) => !x.cached)) {
        // "no-store": the Cache API keeps the only copy; no second one in the HTTP cache.
        const response = await fetchOk(shard.url, baseUrl, { cache: "no-store" });
        let received = 0;
        const bytes = await readWithProgress(response, (n) => {
          received += n;
          onProgress(loaded + Math.min(received, shard.nbytes), total);
        });
        if (bytes.byteLength !== shard.nbytes || SparkMD5.ArrayBuffer.hash(bytes.buffer) !== shard.md5) {
          throw new Error(`checksum mismatch in ${shown(shard.url, baseUrl)}`);
        }
        await cache.put(new Request(shard.url), new Response(bytes, {
          headers: { "Content-Type": "application/octet-stream", [MD5_HEADER]: shard.md5 },
        }));
        loaded += shard.nbytes;
        onProgress(loaded, total);
      }
      // Always (over)write the index: tvmjs reads it from the cache when present, and a stale
      // one from an earlier build would name other records.
      await cache.put(new Request(indexUrl), new Response(text, { headers: { "Content-Type": "application/json" } }));
    } catch (error) {
      await purgeComponent(scope, folder);
      throw error;
    }
  }
}
