#!/usr/bin/env node
// Times our compiled WebGPU components (build_wasm's .wasm + shard_params' tensor caches) with
// tvmjs in Node, on Dawn from the npm package `webgpu` (pinned in bench/package.json):
//
//   node bench/webgpu_node.mjs spec.json
//
// The spec (JSON) names everything, so the script needs no fixed paths beyond the repository's
// web/src (randn.js and scheduler.js, found relative to this file):
//
//   webgpu_package   folder of the npm `webgpu` package (its index.js is imported)
//   tvmjs            tvmjs's UMD bundle (@mlc-ai/web-runtime lib/index.js, or a copy of it)
//   dawn_options     passed to webgpu's create([...]), e.g. ["backend=opengl"],
//                    ["enable-dawn-features=disable_robustness"]; default []
//   adapter_options  merged into requestAdapter({powerPreference: "high-performance", ...}),
//                    e.g. {"featureLevel": "compatibility"}; default {}
//   required_limits  optional, as dist/manifest.json's: fail early if the adapter has less
//   components       text_encoder, unet, vae_decoder: {wasm, params, num_params, inputs}
//                    as in dist/manifest.json (relative paths: against the spec's folder)
//   unet_variants    optional {name: {wasm}}: other UNet builds, same weights and inputs
//   ids              [[77 ints] (negative prompt), [77 ints] (prompt)]
//   plan             one scheduler plan, as in dist/schedulers.json
//   guidance, seed, latent_shape, runs, warmup, out, image_out (raw RGB uint8, H*W*3)
//   generation_runs  optional, timed generations after the untimed one (default 2; 0 reports
//                    the untimed one only)
//   tvmjs_version    optional, recorded when tvmjs has no ../package.json (a bare copy)
//
// Output (`out`): node/webgpu/tvmjs versions, adapter info, features and limits (all, and those
// granted), per component load times (instantiate, WGSL pipeline compilation, weight read+upload),
// the timings of main (median/min/max/mean and every sample), the generation's times (total and
// per part) and its image's sha256; one summary line on stdout, progress on stderr; exit 1 with
// a message on any error (no adapter, a missing limit, a WebGPU validation error, ...).
//
// UNet variants run each on a device of their own, requested from the same GPU after the rest:
// tvmjs's Instance.dispose() destroys the device it was given, which frees all its buffers.
// To compare a variant under the same conditions, list the main UNet build as a variant too.
//
// On a machine without a GPU, Dawn's OpenGL backend on Mesa works (and nothing else did):
//   EGL_PLATFORM=surfaceless, dawn_options ["backend=opengl"],
//   adapter_options {"featureLevel": "compatibility"}.
//
// Every sample is wall clock (performance.now()) and ends with `await dev.sync()`.

import { createHash } from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WEB_SRC = path.resolve(HERE, "..", "web", "src");

// Limits requested at the adapter's maximum: the same names as web/src/pipeline.js's requestDevice.
const LIMIT_NAMES = ["maxBufferSize", "maxStorageBufferBindingSize", "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ"];
const COMPONENTS = ["text_encoder", "unet", "vae_decoder"];
const UNET_TIMESTEP = 500; // the UNet step timing's timestep

class BenchError extends Error {}

const log = (...args) => console.error("[webgpu_node]", ...args);
const now = () => performance.now();
const round3 = (x) => Math.round(x * 1000) / 1000;

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return {
    median_ms: round3(median),
    min_ms: round3(sorted[0]),
    max_ms: round3(sorted[n - 1]),
    mean_ms: round3(samples.reduce((a, b) => a + b, 0) / n),
    samples_ms: samples.map(round3),
  };
}

const sha256 = (file) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (error) {
    throw new BenchError(`cannot read ${what} ${file}: ${error.message}`);
  }
}

function loadSpec(file) {
  const spec = readJson(file, "the spec");
  const base = path.dirname(path.resolve(file));
  const at = (p) => path.resolve(base, p);
  const need = (cond, what) => { if (!cond) throw new BenchError(`spec ${file}: ${what}`); };
  for (const key of ["webgpu_package", "tvmjs", "components", "ids", "plan", "latent_shape", "out", "image_out"]) {
    need(spec[key] !== undefined, `"${key}" is missing`);
  }
  for (const name of COMPONENTS) {
    const c = spec.components[name];
    need(c !== undefined, `components.${name} is missing`);
    for (const key of ["wasm", "params", "num_params", "inputs"]) need(c[key] !== undefined, `components.${name}.${key} is missing`);
    c.wasm = at(c.wasm);
    c.params = at(c.params);
  }
  spec.unet_variants = Object.fromEntries(Object.entries(spec.unet_variants ?? {}).map(([name, v]) => {
    need(v?.wasm !== undefined, `unet_variants.${name}.wasm is missing`);
    return [name, { ...spec.components.unet, ...v, wasm: at(v.wasm) }];
  }));
  need(Array.isArray(spec.ids) && spec.ids.length === 2, `"ids" must be [negative prompt ids, prompt ids]`);
  need(Array.isArray(spec.plan) && spec.plan.length > 0, `"plan" must be a non-empty list of steps`);
  spec.webgpu_package = at(spec.webgpu_package);
  spec.tvmjs = at(spec.tvmjs);
  spec.out = at(spec.out);
  spec.image_out = at(spec.image_out);
  spec.dawn_options ??= [];
  spec.adapter_options ??= {};
  spec.guidance ??= 7.5;
  spec.seed ??= 0;
  spec.runs ??= 20;
  spec.warmup ??= 3;
  spec.generation_runs ??= 2;
  return spec;
}

/** tvmjs's bundle is UMD though its package.json says "type": "module": require a .cjs copy. */
function loadTvmjs(file) {
  if (!fs.existsSync(file)) throw new BenchError(`tvmjs not found: ${file}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tvmjs-"));
  const copy = path.join(dir, "tvmjs.cjs");
  fs.copyFileSync(file, copy);
  try {
    return createRequire(import.meta.url)(copy);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * tvmjs's WASI is an Emscripten module that, under Node, adds a process "uncaughtException"
 * listener rethrowing everything (one per instance); drop it so our own error report stands.
 */
function createWASI(tvmjs) {
  const before = new Set(process.listeners("uncaughtException"));
  const wasi = tvmjs.createPolyfillWASI();
  for (const l of process.listeners("uncaughtException")) if (!before.has(l)) process.off("uncaughtException", l);
  return wasi;
}

function packageVersion(file) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")).version ?? null;
  } catch {
    return null;
  }
}

const ADAPTER_INFO = ["vendor", "architecture", "device", "description", "subgroupMinSize", "subgroupMaxSize", "isFallbackAdapter"];

async function requestAdapter(gpu, spec) {
  const options = { powerPreference: "high-performance", ...spec.adapter_options };
  const adapter = await gpu.requestAdapter(options);
  if (adapter === null || adapter === undefined) {
    throw new BenchError(`no WebGPU adapter for requestAdapter(${JSON.stringify(options)}) with Dawn options `
      + `${JSON.stringify(spec.dawn_options)} (without a GPU: EGL_PLATFORM=surfaceless, ["backend=opengl"], `
      + `{"featureLevel": "compatibility"})`);
  }
  return adapter;
}

function allLimits(limits) {
  const out = {};
  for (const key in limits) if (typeof limits[key] === "number") out[key] = limits[key];
  return out;
}

/** A device with the adapter's full limits (LIMIT_NAMES), shader-f16 when offered; errors are collected. */
async function requestDevice(gpu, spec) {
  const adapter = await requestAdapter(gpu, spec);
  const info = {};
  for (const key of ADAPTER_INFO) if (adapter.info?.[key] !== undefined) info[key] = adapter.info[key];
  for (const [name, need] of Object.entries(spec.required_limits ?? {})) {
    if (!(adapter.limits[name] >= need)) {
      throw new BenchError(`the adapter's limit ${name} is ${adapter.limits[name]}, the model needs ${need}`);
    }
  }
  const requiredLimits = {};
  for (const name of LIMIT_NAMES) {
    if (adapter.limits[name] === undefined) throw new BenchError(`the adapter reports no limit ${name}`);
    requiredLimits[name] = adapter.limits[name];
  }
  const requiredFeatures = ["shader-f16"].filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const errors = [];
  device.addEventListener("uncapturederror", (event) => errors.push(String(event.error?.message ?? event.error)));
  device.lost.then((lost) => { if (lost.reason !== "destroyed") errors.push(`device lost: ${lost.message}`); });
  const granted = {};
  for (const name of LIMIT_NAMES) granted[name] = device.limits[name];
  return {
    adapter,
    device,
    errors,
    report: {
      adapter_info: info,
      adapter_features: [...adapter.features].sort(),
      adapter_limits: allLimits(adapter.limits),
      device_features: [...device.features].sort(),
      limits_granted: granted,
    },
  };
}

function checkErrors(gpu, where) {
  if (gpu.errors.length > 0) {
    throw new BenchError(`WebGPU error during ${where}: ${gpu.errors.slice(0, 3).join(" | ")}`
      + (gpu.errors.length > 3 ? ` (and ${gpu.errors.length - 3} more)` : ""));
  }
}

function tensorBytes(data, dtype) {
  const Type = { float32: Float32Array, int32: Int32Array }[dtype];
  if (Type === undefined) throw new BenchError(`input dtype ${dtype} is not supported by this benchmark`);
  const typed = data instanceof Type ? data : Type.from(data);
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

/**
 * One compiled component in its own tvmjs instance on `gpu.device`, with its weights uploaded
 * from the tensor cache on disk. Returns {tvm, dev, main, weights, call, report}.
 */
async function loadComponent(tvmjs, gpu, name, spec, label = name) {
  const report = {};
  let t = now();
  const wasm = fs.readFileSync(spec.wasm);
  const tvm = await tvmjs.instantiate(new Uint8Array(wasm), createWASI(tvmjs),
    (msg) => log(`${label}: ${msg}`));
  tvm.initWebGPU(gpu.device);
  tvm.beginScope(); // the outermost scope: the VM and the weights live until dispose()
  const dev = tvm.webgpu();
  const vm = tvm.createVirtualMachine(dev);
  report.wasm = spec.wasm;
  report.wasm_bytes = wasm.length;
  report.instantiate_ms = round3(now() - t);
  try {
    tvm.beginScope();
    const fmap = vm.getInternalModule().getFunction("webgpu.get_fmap", true)();
    report.kernels = Object.keys(JSON.parse(fmap)).length;
  } catch {
    report.kernels = null;
  } finally {
    tvm.endScope();
  }

  t = now();
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule()); // compiles every WGSL kernel
  await dev.sync();
  report.shader_compile_ms = round3(now() - t);
  checkErrors(gpu, `${label}: shader compilation`);

  // Weights: main takes the inputs, then `${component}_${i}` for i in 0..num_params-1.
  t = now();
  let readMs = 0;
  let bytes = 0;
  const cache = readJson(path.join(spec.params, "tensor-cache.json"), `${name}'s tensor cache`);
  const byName = new Map();
  for (const shard of cache.records) {
    const t0 = now();
    const data = fs.readFileSync(path.join(spec.params, shard.dataPath));
    readMs += now() - t0;
    for (const rec of shard.records) {
      if (rec.format !== "raw") throw new BenchError(`${name}: weight ${rec.name} has format ${rec.format}; only "raw" is supported`);
      const view = new Uint8Array(data.buffer, data.byteOffset + rec.byteOffset, rec.nbytes);
      byName.set(rec.name, tvm.empty(rec.shape, rec.dtype, dev).copyFromRawBytes(view));
      bytes += rec.nbytes;
    }
  }
  const weights = Array.from({ length: spec.num_params }, (_, i) => {
    const w = byName.get(`${name}_${i}`);
    if (w === undefined) throw new BenchError(`${name}: weight ${name}_${i} is not in ${spec.params}/tensor-cache.json`);
    return w;
  });
  if (byName.size !== spec.num_params) {
    throw new BenchError(`${name}: the tensor cache holds ${byName.size} weights, the spec says ${spec.num_params}`);
  }
  await dev.sync();
  report.weights_ms = round3(now() - t);
  report.weights_read_ms = round3(readMs);
  report.weight_bytes = bytes;
  report.num_params = spec.num_params;
  checkErrors(gpu, `${label}: weight upload`);
  const main = vm.getFunction("main");

  /** As web/src/pipeline.js: typed arrays in (one per spec input), typed array out, via the CPU. */
  async function call(...inputs) {
    tvm.beginScope();
    try {
      const args = spec.inputs.map((s, i) => tvm.empty(s.shape, s.dtype, dev).copyFromRawBytes(tensorBytes(inputs[i], s.dtype)));
      const out = main(...args, ...weights).get(0); // main returns a 1-tuple
      const host = tvm.empty(out.shape, out.dtype, tvm.cpu()).copyFrom(out);
      await dev.sync();
      return { data: host.toArray(), shape: out.shape };
    } finally {
      tvm.endScope();
    }
  }
  return { tvm, dev, main, weights, call, report };
}

/** Deterministic, non-zero inputs for a timing: the prompt ids, the timestep, randn for the rest. */
function timingInputs(randn, spec, run) {
  return spec.inputs.map((s, i) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.dtype === "int32") {
      if (n !== run.ids[1].length) throw new BenchError(`int32 input of shape ${s.shape}: expected the ${run.ids[1].length} token ids`);
      return Int32Array.from(run.ids[1]);
    }
    if (n === 1) return Float32Array.of(UNET_TIMESTEP);
    return randn(run.seed + 1000 + i, s.shape);
  });
}

/** `warmup` then `runs` timed calls of main, the inputs already on the GPU. */
async function timeMain(comp, gpu, inputs, spec, run, label) {
  const { tvm, dev, main, weights } = comp;
  tvm.beginScope();
  try {
    const args = spec.inputs.map((s, i) => tvm.empty(s.shape, s.dtype, dev).copyFromRawBytes(tensorBytes(inputs[i], s.dtype)));
    await dev.sync();
    const samples = [];
    for (let i = 0; i < run.warmup + run.runs; i++) {
      tvm.beginScope(); // frees this call's output
      const t = now();
      main(...args, ...weights);
      await dev.sync();
      const ms = now() - t;
      tvm.endScope();
      if (i >= run.warmup) samples.push(ms);
    }
    checkErrors(gpu, `${label}: timing`);
    const result = { warmup: run.warmup, runs: run.runs, ...stats(samples) };
    log(`${label}: median ${result.median_ms} ms (min ${result.min_ms}, max ${result.max_ms}) over ${run.runs} runs`);
    return result;
  } finally {
    tvm.endScope();
  }
}

/** numpy's (image * 255).round().astype(uint8) on float32: product in float32, ties to even. */
function toPixels(image, shape) {
  const [, channels, height, width] = shape;
  if (channels !== 3) throw new BenchError(`the VAE decoder returned ${channels} channels, expected 3`);
  const plane = height * width;
  const pixels = new Uint8Array(plane * 3);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.fround(image[c * plane + p] * 255);
      let r = Math.round(v);
      if (r - v === 0.5 && r % 2 !== 0) r -= 1; // Math.round rounds .5 up; numpy to even
      pixels[3 * p + c] = Math.min(255, Math.max(0, r));
    }
  }
  return { pixels, height, width };
}

async function generate(run, comps, randn, denoise) {
  const parts = { text_encoder_ms: 0, unet_ms: 0, scheduler_ms: 0, vae_decoder_ms: 0 };
  const start = now();
  let t = now();
  const uncond = (await comps.text_encoder.call(Int32Array.from(run.ids[0]))).data;
  const cond = (await comps.text_encoder.call(Int32Array.from(run.ids[1]))).data;
  parts.text_encoder_ms = now() - t;
  const embeddings = new Float32Array(uncond.length * 2);
  embeddings.set(uncond, 0);
  embeddings.set(cond, uncond.length);

  const latents = randn(run.seed, run.latent_shape);
  const batch = new Float32Array(latents.length * 2);
  let unetMs = 0;
  const predictNoise = async (x, timestep) => {
    const t0 = now();
    batch.set(x, 0);
    batch.set(x, x.length);
    const noise = (await comps.unet.call(batch, Float32Array.of(timestep), embeddings)).data;
    unetMs += now() - t0;
    return noise;
  };
  t = now();
  const final = await denoise({ plan: run.plan, latents, guidance: run.guidance, predictNoise });
  parts.unet_ms = unetMs;
  parts.scheduler_ms = now() - t - unetMs;
  t = now();
  const image = await comps.vae_decoder.call(final);
  const img = toPixels(image.data, image.shape);
  parts.vae_decoder_ms = now() - t;
  const total = now() - start;
  return { total, parts: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, round3(v)])), ...img };
}

async function main() {
  const specFile = process.argv[2];
  if (!specFile) throw new BenchError("usage: node bench/webgpu_node.mjs spec.json");
  const run = loadSpec(specFile);
  const result = {
    spec: path.resolve(specFile),
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    hostname: os.hostname(),
    env: Object.fromEntries(["EGL_PLATFORM", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "MESA_SHADER_CACHE_DISABLE",
      "__GL_SHADER_DISK_CACHE", "DAWN_DEBUG_BREAK_ON_ERROR"]
      .filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]])),
  };

  const webgpuIndex = path.join(run.webgpu_package, "index.js");
  if (!fs.existsSync(webgpuIndex)) throw new BenchError(`no index.js in webgpu_package ${run.webgpu_package}`);
  const { create, globals } = await import(pathToFileURL(webgpuIndex).href);
  Object.assign(globalThis, globals); // GPUBufferUsage, GPUMapMode, GPUShaderStage... for tvmjs
  const { randn } = await import(pathToFileURL(path.join(WEB_SRC, "randn.js")).href);
  const { denoise } = await import(pathToFileURL(path.join(WEB_SRC, "scheduler.js")).href);
  const tvmjs = loadTvmjs(run.tvmjs);
  result.webgpu_version = packageVersion(path.join(run.webgpu_package, "package.json"));
  result.tvmjs_version = run.tvmjs_version ?? packageVersion(path.join(path.dirname(run.tvmjs), "..", "package.json"));
  result.tvmjs_sha256 = sha256(run.tvmjs);
  result.dawn_options = run.dawn_options;
  result.adapter_options = run.adapter_options;

  const gpuInstance = create(run.dawn_options);
  const gpu = await requestDevice(gpuInstance, run);
  Object.assign(result, gpu.report);
  const describe = Object.values(gpu.report.adapter_info).filter((v) => typeof v === "string" && v).join(" / ");
  log(`adapter: ${describe || "(no info)"}; Dawn options ${JSON.stringify(run.dawn_options)}`);
  log(`limits granted: ${JSON.stringify(gpu.report.limits_granted)}`);

  // Load every component onto the one device, as the page does.
  const comps = {};
  result.load = {};
  for (const name of COMPONENTS) {
    log(`${name}: loading ${run.components[name].wasm}`);
    comps[name] = await loadComponent(tvmjs, gpu, name, run.components[name]);
    result.load[name] = comps[name].report;
    log(`${name}: ${JSON.stringify(comps[name].report)}`);
  }

  // Each component's main, inputs on the GPU.
  result.timings = {};
  for (const name of COMPONENTS) {
    const spec = run.components[name];
    result.timings[name] = {
      inputs: spec.inputs,
      ...await timeMain(comps[name], gpu, timingInputs(randn, spec, run), spec, run, name),
    };
  }

  // The whole generation: one untimed, then generation_runs timed.
  log(`generation: ${run.plan.length} steps, guidance ${run.guidance}, seed ${run.seed}`);
  const warm = await generate(run, comps, randn, denoise);
  checkErrors(gpu, "generation");
  const timed = [];
  for (let i = 0; i < run.generation_runs; i++) timed.push(await generate(run, comps, randn, denoise));
  checkErrors(gpu, "generation");
  const last = timed.at(-1) ?? warm;
  const deterministic = [...timed].every((g) => Buffer.compare(Buffer.from(g.pixels), Buffer.from(warm.pixels)) === 0);
  fs.mkdirSync(path.dirname(run.image_out), { recursive: true });
  fs.writeFileSync(run.image_out, last.pixels);
  result.generation = {
    steps: run.plan.length,
    guidance: run.guidance,
    seed: run.seed,
    latent_shape: run.latent_shape,
    untimed_ms: round3(warm.total),
    ...(timed.length ? stats(timed.map((g) => g.total)) : {}),
    parts: timed.map((g) => g.parts),
    deterministic,
    image: { path: run.image_out, height: last.height, width: last.width, format: "raw uint8 RGB, row-major",
      sha256: createHash("sha256").update(last.pixels).digest("hex") },
  };
  log(`generation: ${JSON.stringify(result.generation.samples_ms ?? result.generation.untimed_ms)} ms, image ${run.image_out}`);
  for (const name of COMPONENTS) {
    result.load[name].runtime_stats = comps[name].tvm.runtimeStatsText();
  }

  // Other UNet builds: each on a device of its own (tvmjs's dispose() destroys its device,
  // which frees every buffer the build made), one at a time.
  result.unet_variants = {};
  for (const [variant, spec] of Object.entries(run.unet_variants)) {
    const label = `unet[${variant}]`;
    log(`${label}: loading ${spec.wasm}`);
    const vgpu = await requestDevice(gpuInstance, run);
    const comp = await loadComponent(tvmjs, vgpu, "unet", spec, label);
    log(`${label}: ${JSON.stringify(comp.report)}`);
    const timing = await timeMain(comp, vgpu, timingInputs(randn, spec, run), spec, run, label);
    comp.report.runtime_stats = comp.tvm.runtimeStatsText();
    result.unet_variants[variant] = { load: comp.report, timing };
    comp.tvm.endScope();
    comp.tvm.dispose(); // destroys vgpu.device
  }

  fs.mkdirSync(path.dirname(run.out), { recursive: true });
  fs.writeFileSync(run.out, JSON.stringify(result, null, 1) + "\n");
  const ms = (t) => `${t.median_ms} ms`;
  const variants = Object.entries(result.unet_variants).map(([v, r]) => ` unet[${v}] ${ms(r.timing)}`).join("");
  console.log(`webgpu_node: ${describe || "adapter"} | text_encoder ${ms(result.timings.text_encoder)}`
    + ` unet ${ms(result.timings.unet)} vae_decoder ${ms(result.timings.vae_decoder)}${variants}`
    + ` | generation (${run.plan.length} steps) ${result.generation.median_ms ?? result.generation.untimed_ms} ms`
    + ` | -> ${run.out}`);
}

main().then(
  () => process.exit(0), // Dawn may keep the event loop alive
  (error) => {
    console.error(`webgpu_node: error: ${error instanceof BenchError ? error.message : error?.stack ?? error}`);
    process.exit(1);
  },
);
