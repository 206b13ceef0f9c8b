// The websd text-to-image pipeline in the browser, usable without the page's UI:
//
//   const sd = await loadPipeline("./", { onWeightsProgress: (loaded, total) => ... });
//   const emb = await sd.encode("a cat");                       // Float32Array [1, 77, D]
//   const { pixels, width, height } = await sd.generate({ prompt: "a cat", seed: 1 });
//
// It mirrors websd/generate.py step for step: check the inputs (inputs.js), tokenize, encode the
// prompt (and the negative prompt when guidance is above 1), draw the latents as torch.randn
// does for the seed, run the scheduler plan (with classifier-free guidance: UNet at batch 2,
// [x, x] with [uncond, cond]; without: at batch 1), decode with the VAE.
//
// Each component (text_encoder, unet, vae_decoder) is its own .wasm, so its own tvmjs instance;
// they share one GPUDevice and pass tensors through the CPU (small: latents and embeddings).

import { checkInputs, InputError } from "./inputs.js";
import { randn } from "./randn.js";
import { denoise, guide } from "./scheduler.js";
import { loadTokenizer } from "./tokenizer.js";
import { ensureWeights, paramsUrl } from "./weights.js";

export const CACHE_SCOPE = "websd"; // the Cache API bucket for the weights (ours and tvmjs's)

/** Raised when this browser/GPU cannot run the model; the message says what to do. */
export class WebGPUUnavailable extends Error {}

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
 * A GPUDevice for the model, or a WebGPUUnavailable error saying why not. We request the device
 * ourselves rather than with tvmjs.detectGPUDevice: that one caps buffer limits at 1 GiB and
 * would not tell which of the model's required limits the adapter misses.
 */
export async function requestDevice(requiredLimits = {}) {
  if (globalThis.navigator?.gpu === undefined) {
    throw new WebGPUUnavailable(`WebGPU is unavailable in this browser (no navigator.gpu). ${ADVICE}`);
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (adapter === null) {
    throw new WebGPUUnavailable(`WebGPU is unavailable: the browser offers no GPU adapter. ${ADVICE}`);
  }
  for (const [name, need] of Object.entries(requiredLimits)) {
    if (!(adapter.limits[name] >= need)) {
      throw new WebGPUUnavailable(`This GPU's WebGPU limit ${name} is ${adapter.limits[name]}, `
        + `but the model needs ${need}. Try a GPU with more memory or a smaller model.`);
    }
  }
  // Ask for the adapter's full limits where kernels or weights may need them (the defaults are
  // small, e.g. 128 MiB bindings, 8 storage buffers per stage).
  const names = ["maxBufferSize", "maxStorageBufferBindingSize", "maxStorageBuffersPerShaderStage",
    "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ"];
  return adapter.requestDevice({
    requiredLimits: Object.fromEntries(names.map((n) => [n, adapter.limits[n]])),
    requiredFeatures: ["shader-f16"].filter((f) => adapter.features.has(f)),
  });
}

/**
 * One compiled component: a tvmjs instance with its VM and weights on the GPU. Returns its
 * functions by name (manifest `functions`: the UNet has `main` at batch 2 and `unguided` at
 * batch 1), each taking typed arrays and returning its output as a typed array.
 */
async function loadComponent(baseUrl, device, name, spec) {
  const wasm = await (await fetchOk(new URL(spec.wasm, baseUrl))).arrayBuffer();
  const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), console.log);
  tvm.initWebGPU(device);
  tvm.beginScope(); // the outermost scope: keeps the VM and the weights alive with the page
  const dev = tvm.webgpu();
  const vm = tvm.createVirtualMachine(dev);
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule()); // compiles every WGSL kernel
  // The shards are in the cache already (ensureWeights), so this only reads and uploads them.
  await tvm.fetchTensorCache(paramsUrl(baseUrl, spec), dev, CACHE_SCOPE);
  const params = tvm.getParamsFromCache(name, spec.num_params);
  // Each Relax function takes the inputs, then every weight as its own argument.
  const weights = Array.from({ length: params.size() }, (_, i) => params.get(i));

  const call = (func, inputSpecs) => async (...inputs) => {
    tvm.beginScope(); // everything made for this call is freed at endScope
    try {
      const args = inputSpecs.map((s, i) => tvm.empty(s.shape, s.dtype, dev).copyFrom(inputs[i]));
      const out = func(...args, ...weights).get(0); // every function returns a 1-tuple
      const host = tvm.empty(out.shape, out.dtype, tvm.cpu()).copyFrom(out);
      await dev.sync();
      return host.toArray(); // a copy, valid after the scope ends
    } finally {
      tvm.endScope();
    }
  };
  return Object.fromEntries(Object.entries(spec.functions)
    .map(([entry, signature]) => [entry, call(vm.getFunction(entry), signature.inputs)]));
}

/**
 * Load the model served at `baseUrl` (the dist folder). Options: onWeightsProgress(loaded,
 * total) in bytes, onStatus(text), manifest (if already fetched).
 */
export async function loadPipeline(baseUrl, { onWeightsProgress, onStatus = () => {}, manifest } = {}) {
  baseUrl = new URL(baseUrl, document.baseURI).href;
  manifest ??= await loadManifest(baseUrl);
  const device = await requestDevice(manifest.required_limits); // fail early, before downloads
  await Promise.all([
    loadScript(new URL("vendor/tvmjs.js", baseUrl).href, "tvmjs"),
    loadScript(new URL("vendor/spark-md5.js", baseUrl).href, "SparkMD5"),
  ]);
  const tokenizer = await loadTokenizer(new URL("tokenizer/", baseUrl));

  onStatus("Downloading weights…");
  await ensureWeights(baseUrl, manifest.components, CACHE_SCOPE, onWeightsProgress);
  const run = {};
  for (const [name, spec] of Object.entries(manifest.components)) {
    onStatus(`Compiling ${name} shaders and loading its weights…`);
    run[name] = await loadComponent(baseUrl, device, name, spec);
  }
  const canGenerate = ["text_encoder", "unet", "vae_decoder"].every((c) => c in run);
  const schedulers = canGenerate ? await (await fetchOk(new URL("schedulers.json", baseUrl))).json() : {};

  // One GPU job at a time: each tvmjs instance has a single scope stack, and calls overlapping
  // across awaits would interleave it.
  let queue = Promise.resolve();
  const serial = (job) => {
    const result = queue.then(job);
    queue = result.catch(() => {});
    return result;
  };

  const encodeNow = (prompt) => run.text_encoder.main(tokenizer.encode(prompt));

  async function generateNow(options) {
    if (!canGenerate) throw new Error("this build has only the text encoder: it cannot generate images");
    const o = { ...manifest.defaults, ...options };
    const inputs = checkInputs(o, manifest.max_steps);
    if (inputs.errors) throw new InputError(...Object.entries(inputs.errors)[0]);
    const { seed, steps, scheduler, guidance } = inputs;
    const plan = schedulers[scheduler][String(steps)];

    // As diffusers: classifier-free guidance only above 1, with the negative prompt first in the
    // batch; else the prompt alone through the UNet's batch-1 function.
    const guided = guidance > 1;
    const cond = await encodeNow(o.prompt);
    const latents = randn(seed, manifest.latent_shape);
    let predictNoise = (x, timestep) => run.unet.unguided(x, Float32Array.of(timestep), cond);
    if (guided) {
      const uncond = await encodeNow(o.negativePrompt ?? manifest.defaults.negative_prompt ?? "");
      const embeddings = new Float32Array(uncond.length * 2);
      embeddings.set(uncond, 0);
      embeddings.set(cond, uncond.length);
      const batch = new Float32Array(latents.length * 2);
      predictNoise = async (x, timestep) => {
        batch.set(x, 0);
        batch.set(x, x.length);
        const noise = await run.unet.main(batch, Float32Array.of(timestep), embeddings);
        return guide(noise.subarray(0, x.length), noise.subarray(x.length), guidance);
      };
    }
    const final = await denoise({ plan, latents, predictNoise, onStep: o.onStep });
    const image = await run.vae_decoder.main(final); // [1, 3, H, W] in [0, 1]

    const { height, width } = manifest.image;
    const pixels = new Uint8ClampedArray(width * height * 4);
    const plane = width * height;
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) pixels[4 * p + c] = Math.round(image[c * plane + p] * 255);
      pixels[4 * p + 3] = 255;
    }
    return { pixels, width, height };
  }

  return {
    manifest,
    canGenerate,
    components: Object.keys(run),
    /** Embeddings [1, max_length, D] of one prompt, as a flat Float32Array. */
    encode: (prompt) => serial(() => encodeNow(prompt)),
    /**
     * {prompt, negativePrompt, seed, steps, scheduler, guidance, onStep(done, total)} -> RGBA
     * pixels. seed: a BigInt, a safe integer or a decimal string. Throws an InputError (with its
     * `field`) for an input out of range, before any GPU work.
     */
    generate: (options = {}) => serial(() => generateNow(options)),
  };
}
