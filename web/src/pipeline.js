// The websd text-to-image pipeline, without any DOM: the page (browser.js) and the GPU
// benchmark's Node runner (bench/webgpu_node.mjs) both run this one.
//
//   const gpu = await requestDevice(navigator.gpu, manifest.required_limits);
//   const sd = await createPipeline({ manifest, gpu, tvmjs, tokenizer, readFile, loadWeights });
//   const emb = await sd.encode("a cat");                       // Float32Array [1, 77, D]
//   const { pixels, width, height } = await sd.generate({ prompt: "a cat", seed: 1 });
//
// What differs between environments is passed in: the GPU (navigator.gpu, or Dawn's create() in
// Node), tvmjs, the tokenizer (tokenizer.js), how to read a file of the bundle (dist/) and how to
// put a component's weights on the GPU (the page: its verified Cache API copy through tvmjs;
// Node: the tensor cache on disk).
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

/** Raised when this browser/GPU cannot run the model; the message says what to do. */
export class WebGPUUnavailable extends Error {}

// What a device has unless more is requested: the WebGPU spec's defaults, lower for some on a
// compatibility-mode device (featureLevel "compatibility", e.g. Dawn on OpenGL).
// websd/targets.py holds the same core values for the build.
const CORE_DEFAULT_LIMITS = {
  maxStorageBufferBindingSize: 134217728,
  maxBufferSize: 268435456,
  maxStorageBuffersPerShaderStage: 8,
  maxComputeWorkgroupStorageSize: 16384,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
  maxComputeWorkgroupSizeY: 256,
  maxComputeWorkgroupSizeZ: 64,
};
export const DEFAULT_LIMITS = {
  core: CORE_DEFAULT_LIMITS,
  compatibility: {
    ...CORE_DEFAULT_LIMITS,
    maxComputeInvocationsPerWorkgroup: 128,
    maxComputeWorkgroupSizeX: 128,
    maxComputeWorkgroupSizeY: 128,
  },
};

/**
 * The limits to request for a build: what its manifest's `required_limits` names, and WebGPU's
 * core default for any other limit (the build keeps within those), each requested at exactly
 * that value where it is above what a device of `featureLevel` has by default; nothing else.
 */
export function limitsToRequest(requiredLimits = {}, featureLevel = "core") {
  const defaults = DEFAULT_LIMITS[featureLevel];
  if (defaults === undefined) throw new Error(`unknown WebGPU featureLevel "${featureLevel}"`);
  const needs = { ...CORE_DEFAULT_LIMITS, ...requiredLimits };
  // A limit without a known default is requested: asking for no more than the default is harmless.
  return Object.fromEntries(Object.entries(needs).filter(([name, need]) => !(need <= defaults[name])));
}

/**
 * A GPUDevice for a build of `requiredLimits`, from `gpu` (navigator.gpu, or Dawn's GPU in Node),
 * or a WebGPUUnavailable error naming what is missing; `advice` ends those messages. Returns
 * {adapter, device, requestedLimits}. We request the device ourselves rather than with
 * tvmjs.detectGPUDevice: that one asks for the adapter's maximum buffer limits and would not
 * tell which of the model's required limits the adapter lacks. `features` are optional
 * features (e.g. "timestamp-query" for a profile) requested where the adapter has them, as
 * "shader-f16" always is; the device's `features` tell which it got.
 */
export async function requestDevice(gpu, requiredLimits, { adapterOptions = {}, advice = "", features = [] } = {}) {
  const options = { powerPreference: "high-performance", ...adapterOptions };
  const adapter = await gpu.requestAdapter(options);
  if (!adapter) throw new WebGPUUnavailable(`WebGPU is unavailable: no GPU adapter was offered. ${advice}`);
  const requestedLimits = limitsToRequest(requiredLimits, options.featureLevel);
  for (const [name, need] of Object.entries(requestedLimits)) {
    if (!(adapter.limits[name] >= need)) {
      throw new WebGPUUnavailable(`This GPU's WebGPU limit ${name} is ${adapter.limits[name]}, `
        + `but the model needs ${need}. Try a GPU with more memory or a smaller model.`);
    }
  }
  const device = await adapter.requestDevice({
    requiredLimits: requestedLimits,
    requiredFeatures: ["shader-f16", ...features].filter((f) => adapter.features.has(f)),
  });
  return { adapter, device, requestedLimits };
}

const now = () => performance.now();
const round3 = (x) => Math.round(x * 1000) / 1000;

// tvmjs encodes every dispatch of a call into one command buffer and submits it at the next
// sync, so the GPU waits while JS encodes the whole call: about 50 us a dispatch in Dawn, 48 of
// the 270 ms of an SD 1.5 UNet step on an H200 (bench/results/tile-sweep/profile-unet.md). Submitting
// every SUBMIT_EVERY dispatches lets the GPU run the first ones while the rest are encoded. A call
// starts on an idle GPU (the last one ended with a sync), so its first submits come sooner: after
// FIRST_SUBMIT dispatches, then twice as many each time up to SUBMIT_EVERY (at 64 from the start,
// the GPU sat idle for the first 3 ms of every UNet step: bench/results/profile-unet.md).
const SUBMIT_EVERY = 64;
const FIRST_SUBMIT = 8;

/**
 * Makes tvmjs's WebGPU context submit its commands as they are encoded (above). Its dispatch
 * counter (shaderSubmitCounter) goes up once a dispatch is fully encoded, so a submit there
 * never splits one; a uniform buffer the next dispatches reuse is rewritten by
 * queue.writeBuffer, which the queue orders after the commands already submitted. Any other
 * flush (a sync, a read-back) ends a call: the next batch is small again.
 */
export function submitAsEncoded(context) {
  let dispatches = context.shaderSubmitCounter;
  let pending = 0; // dispatches encoded since the last submit
  let batch = FIRST_SUBMIT; // dispatches to encode before the next one
  const flush = context.flushCommands.bind(context);
  context.flushCommands = () => {
    pending = 0;
    batch = FIRST_SUBMIT;
    flush();
  };
  Object.defineProperty(context, "shaderSubmitCounter", {
    get: () => dispatches,
    set: (value) => {
      dispatches = value;
      if (++pending < batch) return;
      flush();
      pending = 0;
      batch = Math.min(2 * batch, SUBMIT_EVERY);
    },
  });
}

/**
 * One compiled component (manifest entry `spec`) in its own tvmjs instance on `device`: its VM,
 * its WGSL kernels compiled and its weights on the GPU (`loadWeights(tvm, dev, name, spec)`
 * returns them in the functions' order). Each Relax function takes the inputs, then every
 * weight; the manifest's `functions` gives each one's signature (the UNet has `main` at batch 2
 * and `unguided` at batch 1).
 */
export async function loadComponent({ tvmjs, device, name, spec, wasm, loadWeights, log = console.log }) {
  let started = now();
  const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), log);
  tvm.initWebGPU(device);
  submitAsEncoded(tvm.lib.webGPUContext);
  tvm.beginScope(); // the outermost scope: keeps the VM and the weights alive with the pipeline
  const dev = tvm.webgpu();
  const vm = tvm.createVirtualMachine(dev);
  const report = { instantiate_ms: round3(now() - started) };

  started = now();
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule()); // compiles every WGSL kernel
  await dev.sync();
  report.shader_compile_ms = round3(now() - started);

  started = now();
  const weights = await loadWeights(tvm, dev, name, spec);
  await dev.sync();
  report.weights_ms = round3(now() - started);
  if (weights.length !== spec.num_params) {
    throw new Error(`${name}: ${weights.length} weights loaded, the manifest says ${spec.num_params}`);
  }

  const vmFunctions = Object.fromEntries(Object.keys(spec.functions).map((entry) => [entry, vm.getFunction(entry)]));
  /** The inputs of `entry` (typed arrays) as GPU tensors of the current scope. */
  const toDevice = (entry, inputs) => spec.functions[entry].inputs
    .map((s, i) => tvm.empty(s.shape, s.dtype, dev).copyFrom(inputs[i]));
  /** `entry` on GPU tensors; its output tensor, of the current scope (every function returns a 1-tuple). */
  const invoke = (entry, args) => vmFunctions[entry](...args, ...weights).get(0);
  const call = (entry) => async (...inputs) => {
    tvm.beginScope(); // everything made for this call is freed at endScope
    try {
      const out = invoke(entry, toDevice(entry, inputs));
      const host = tvm.empty(out.shape, out.dtype, tvm.cpu()).copyFrom(out);
      await dev.sync();
      return host.toArray(); // a copy, valid after the scope ends
    } finally {
      tvm.endScope();
    }
  };
  const functions = Object.fromEntries(Object.keys(spec.functions).map((entry) => [entry, call(entry)]));
  // The VM keeps a call's activation buffers pooled for the next call; each component's static
  // plan is a few large buffers of its own sizes. Released between the parts of a generation,
  // at most one component's activations are held at a time (the weights stay).
  const clearPool = tvm.getGlobalFunc("vm.builtin.memory_manager.clear");
  const release = () => clearPool();
  return { name, spec, tvm, dev, vm, weights, report, toDevice, invoke, functions, release };
}

/** RGBA bytes of the VAE's image ([1, 3, H, W] in [0, 1], planar), for a canvas. */
export function toPixels(image, width, height) {
  const pixels = new Uint8ClampedArray(width * height * 4);
  const plane = width * height;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) pixels[4 * p + c] = Math.round(image[c * plane + p] * 255);
    pixels[4 * p + 3] = 255;
  }
  return pixels;
}

const GENERATING_COMPONENTS = ["text_encoder", "unet", "vae_decoder"];

/**
 * The pipeline of the bundle described by `manifest` (dist/manifest.json), on `gpu`
 * (requestDevice's result). `readFile(path)` gives the bytes of a file of the bundle by its path
 * in it; `loadWeights` as for loadComponent; onStatus(text) tells what it is doing.
 */
export async function createPipeline({ manifest, gpu, tvmjs, tokenizer, readFile, loadWeights, onStatus = () => {}, log }) {
  const loaded = {};
  for (const [name, spec] of Object.entries(manifest.components)) {
    onStatus(`Compiling ${name} shaders and loading its weights…`);
    const wasm = await readFile(spec.wasm);
    loaded[name] = await loadComponent({ tvmjs, device: gpu.device, name, spec, wasm, loadWeights, log });
  }
  const run = Object.fromEntries(Object.entries(loaded).map(([name, component]) => [name, component.functions]));
  const canGenerate = GENERATING_COMPONENTS.every((c) => c in run);
  const schedulers = canGenerate ? JSON.parse(new TextDecoder().decode(await readFile("schedulers.json"))) : {};

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
    const timings = { text_encoder_ms: 0, unet_ms: 0, scheduler_ms: 0, vae_decoder_ms: 0 };
    const started = now();

    // As diffusers: classifier-free guidance only above 1, with the negative prompt first in the
    // batch; else the prompt alone through the UNet's batch-1 function.
    const guided = guidance > 1;
    let t = now();
    const cond = await encodeNow(o.prompt);
    const uncond = guided ? await encodeNow(o.negativePrompt ?? manifest.defaults.negative_prompt ?? "") : null;
    timings.text_encoder_ms = now() - t;
    const latents = randn(seed, manifest.latent_shape);
    const timedUnet = async (entry, ...inputs) => {
      const t0 = now();
      const noise = await run.unet[entry](...inputs);
      timings.unet_ms += now() - t0;
      return noise;
    };
    let predictNoise = (x, timestep) => timedUnet("unguided", x, Float32Array.of(timestep), cond);
    if (guided) {
      const embeddings = new Float32Array(uncond.length * 2);
      embeddings.set(uncond, 0);
      embeddings.set(cond, uncond.length);
      const batch = new Float32Array(latents.length * 2);
      predictNoise = async (x, timestep) => {
        batch.set(x, 0);
        batch.set(x, x.length);
        const noise = await timedUnet("main", batch, Float32Array.of(timestep), embeddings);
        return guide(noise.subarray(0, x.length), noise.subarray(x.length), guidance);
      };
    }
    loaded.text_encoder.release();
    t = now();
    const final = await denoise({ plan, latents, predictNoise, onStep: o.onStep });
    timings.scheduler_ms = now() - t - timings.unet_ms;
    loaded.unet.release(); // before the VAE decoder makes its own

    t = now();
    const image = await run.vae_decoder.main(final); // [1, 3, H, W] in [0, 1]
    loaded.vae_decoder.release();
    const { height, width } = manifest.image;
    const pixels = toPixels(image, width, height);
    timings.vae_decoder_ms = now() - t;
    timings.total_ms = now() - started;
    return { pixels, width, height, timings: Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, round3(v)])) };
  }

  return {
    manifest,
    canGenerate,
    components: Object.keys(run),
    adapter: gpu.adapter,
    device: gpu.device,
    /** The limits asked of the adapter beyond a device's defaults ({} when the build needs none). */
    requestedLimits: gpu.requestedLimits,
    /** A loaded component (loadComponent's result), for measuring it. */
    component: (name) => loaded[name],
    /** Embeddings [1, max_length, D] of one prompt, as a flat Float32Array. */
    encode: (prompt) => serial(() => encodeNow(prompt)),
    /**
     * {prompt, negativePrompt, seed, steps, scheduler, guidance, onStep(done, total)} -> RGBA
     * pixels, width, height and the time of each part. seed: a BigInt, a safe integer or a
     * decimal string. Throws an InputError (with its `field`) for an input out of range, before
     * any GPU work.
     */
    generate: (options = {}) => serial(() => generateNow(options)),
  };
}
