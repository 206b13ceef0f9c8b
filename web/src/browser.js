// The pipeline (pipeline.js) in a web page, usable without the page's UI:
//
//   const sd = await loadPipeline("./", { onWeightsProgress: (loaded, total) => ... });
//   const emb = await sd.encode("a cat");                       // Float32Array [1, 77, D]
//   const { pixels, width, height } = await sd.generate({ prompt: "a cat", seed: 1 });
//
// What only a page has: navigator.gpu, the vendor scripts loaded by <script> tags, files
// fetched from the server, and the weights kept in the Cache API after their md5 was checked
// (weights.js), from where tvmjs uploads them.

import { createPipeline, requestDevice, WebGPUUnavailable } from "./pipeline.js";
import { loadTokenizer } from "./tokenizer.js";
import { ensureWeights, paramsUrl } from "./weights.js";

export const CACHE_SCOPE = "websd"; // the Cache API bucket for the weights (ours and tvmjs's)

const ADVICE = "Use a recent Chrome or Edge (version 113 or later) on a machine with a GPU; on Linux, "
  + "enable WebGPU in chrome://flags (#enable-unsafe-webgpu) or start Chromium with --enable-unsafe-webgpu.";

// The vendor files are UMD bundles: a classic <script> sets window.tvmjs / window.SparkMD5.
function loadScript(url, globalName) {
  if (globalThis[globalName] !== undefined) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = url;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${url}`));
    document.head.append(script);
  });
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${url} (HTTP ${response.status})`);
  return response;
}

export async function loadManifest(baseUrl) {
  return (await fetchOk(new URL("manifest.json", baseUrl))).json();
}

/**
 * Load the model served at `baseUrl` (the dist folder). Options: onWeightsProgress(loaded,
 * total) in bytes, onStatus(text), manifest (if already fetched).
 */
export async function loadPipeline(baseUrl, { onWeightsProgress, onStatus = () => {}, manifest } = {}) {
  baseUrl = new URL(baseUrl, document.baseURI).href;
  manifest ??= await loadManifest(baseUrl);
  if (globalThis.navigator?.gpu === undefined) {
    throw new WebGPUUnavailable(`WebGPU is unavailable in this browser (no navigator.gpu). ${ADVICE}`);
  }
  // Fail early, before any download.
  const gpu = await requestDevice(navigator.gpu, manifest.required_limits, { advice: ADVICE });
  await Promise.all([
    loadScript(new URL("vendor/tvmjs.js", baseUrl).href, "tvmjs"),
    loadScript(new URL("vendor/spark-md5.js", baseUrl).href, "SparkMD5"),
  ]);
  const tokenizer = await loadTokenizer(new URL("tokenizer/", baseUrl));

  onStatus("Downloading weights…");
  await ensureWeights(baseUrl, manifest.components, CACHE_SCOPE, onWeightsProgress);
  return createPipeline({
    manifest,
    gpu,
    tvmjs,
    tokenizer,
    readFile: async (path) => (await fetchOk(new URL(path, baseUrl))).arrayBuffer(),
    loadWeights: async (tvm, dev, name, spec) => {
      // The shards are in the cache already (ensureWeights), so this only reads and uploads them.
      await tvm.fetchTensorCache(paramsUrl(baseUrl, spec), dev, CACHE_SCOPE);
      const params = tvm.getParamsFromCache(name, spec.num_params);
      return Array.from({ length: params.size() }, (_, i) => params.get(i));
    },
    onStatus,
  });
}
