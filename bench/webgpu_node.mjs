#!/usr/bin/env node
// Runs and times a websd bundle (dist/: manifest.json, schedulers.json, the .wasm files,
// params/, tokenizer/, vendor/tvmjs.js) with the page's own pipeline (web/src/pipeline.js) in
// Node, on Dawn from the npm package `webgpu` (pinned in bench/package.json). A bundle of other
// kernels (a manifest whose components cannot generate, e.g. bench/attention_bench.py's) gets
// its functions (and its variants') timed and nothing generated:
//
//   node bench/webgpu_node.mjs spec.json
//
// The spec (JSON) holds what the bundle does not (relative paths: against the spec's folder):
//
//   bundle           the dist folder
//   webgpu_package   folder of the npm `webgpu` package (its index.js is imported); default
//                    bench/node_modules/webgpu
//   dawn_options     passed to webgpu's create([...]), e.g. ["backend=opengl"],
//                    ["enable-dawn-features=disable_robustness"]; default []
//   adapter_options  merged into requestAdapter({powerPreference: "high-performance", ...}),
//                    e.g. {"featureLevel": "compatibility"}; default {}
//   generation       optional {prompt, negative_prompt, seed, steps, scheduler, guidance}, each
//                    defaulting to the manifest's `defaults`
//   runs, warmup     timed calls of each function after untimed ones; default 20 and 3
//   warmup_ms        the untimed calls go on for at least this long; default 1000 (below)
//   generation_runs  timed generations after the untimed one; default 2 (0: the untimed one only)
//   variants         optional {name: {component, wasm}}: other builds of a component of the
//                    bundle (e.g. "vae_decoder-tile-128x128": {"component": "vae_decoder", ...}),
//                    on that component's weights
//   profile          optional {runs} (default 3): also profile every function's kernels (below)
//   out, image_out   the results (JSON) and the generated image (raw RGB uint8, H*W*3)
//
// Output (`out`): node/webgpu/tvmjs versions, adapter info, features and limits (all, those the
// build requires, those requested from the adapter, those granted), per component load times
// (instantiate, WGSL pipeline compilation, weight read + upload), the timings of every function
// of every component with its inputs already on the GPU (median/min/max/mean and each sample),
// the generation's times (total and per part) and its image's sha256; one summary line on
// stdout, progress on stderr; exit 1 with a message on any error (no adapter, a missing limit,
// a WebGPU validation error, ...).
//
// With `profile`, the device also gets "timestamp-query" where the adapter has it, Dawn's
// timestamp rounding is disabled (dawn option disable-dawn-features=timestamp_quantization) and
// each function of each component (and of each variant), after its timings, runs `runs`
// times under bench/dispatch_profile.mjs, then `runs` times plainly: `profile` (and each
// variant's `profile`) holds per function the dispatches of one call; per kernel (its
// PrimFunc's name: the WGSL kernel's without `_kernel`/`_kernel_N`) the calls and dispatches of
// one call and its GPU time (ms, median over the runs; null without timestamp-query); the sum of
// every dispatch's GPU time and the GPU span (first dispatch's start to the last one's end);
// from the plain calls, the host's time until `invoke` returns (tvmjs has encoded every
// dispatch and submitted none: that happens at the sync), per call and per dispatch, and the
// whole call's. Without `profile` nothing of this runs and the device is requested as before.
//
// Variants run each on a device of their own, requested from the same GPU after the rest (the
// generation too, where the bundle can generate): tvmjs's Instance.dispose() destroys the device
// it was given, which frees all its buffers. `variants` in the output holds, per variant, its
// component, load times, the timings of every function of its component and, with `profile`,
// its profile. To compare a variant under the same conditions, list the component's own build
// as a variant too.
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

import { createPipeline, DEFAULT_LIMITS, loadComponent, requestDevice, WebGPUUnavailable } from "../web/src/pipeline.js";
import { randn } from "../web/src/randn.js";
import { loadTokenizer } from "../web/src/tokenizer.js";
import { primFuncOf, profileDispatches } from "./dispatch_profile.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const UNET_TIMESTEP = 500; // the timestep of the UNet's timed calls
// The untimed calls' default least duration: right after loading, the text encoder's calls (5 ms
// of GPU work) took 5 to 17 ms for their first second or so (H200, 2026-11-28), the same loop
// 5.5 ms a little later.
const WARMUP_MS = 1000;
const NO_GPU_ADVICE = "Without a GPU: EGL_PLATFORM=surfaceless, dawn_options [\"backend=opengl\"], "
  + "adapter_options {\"featureLevel\": \"compatibility\"}.";

class BenchError extends Error {}

const log = (...args) => console.error("[webgpu_node]", ...args);
const now = () => performance.now();
const round3 = (x) => Math.round(x * 1000) / 1000;

function median(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  return n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  return {
    median_ms: round3(median(samples)),
    min_ms: round3(sorted[0]),
    max_ms: round3(sorted[n - 1]),
    mean_ms: round3(samples.reduce((a, b) => a + b, 0) / n),
    samples_ms: samples.map(round3),
  };
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (error) {
    throw new BenchError(`cannot read ${what} ${file}: ${error.message}`);
  }
}

function loadSpec(file) {
  const spec = readJson(file, "the spec");
  const at = (p) => path.resolve(path.dirname(path.resolve(file)), p);
  for (const key of ["bundle", "out", "image_out"]) {
    if (spec[key] === undefined) throw new BenchError(`spec ${file}: "${key}" is missing`);
  }
  spec.variants = Object.fromEntries(Object.entries(spec.variants ?? {}).map(([name, v]) => {
    for (const key of ["component", "wasm"]) {
      if (v?.[key] === undefined) throw new BenchError(`spec ${file}: variants.${name}.${key} is missing`);
    }
    return [name, { component: v.component, wasm: at(v.wasm) }];
  }));
  const profile = spec.profile === undefined ? null : { runs: spec.profile?.runs ?? 3 };
  if (profile !== null && !(profile.runs >= 1)) throw new BenchError(`spec ${file}: profile.runs must be at least 1`);
  const dawnOptions = spec.dawn_options ?? [];
  return {
    ...spec,
    bundle: at(spec.bundle),
    webgpu_package: at(spec.webgpu_package ?? path.join(ROOT, "bench", "node_modules", "webgpu")),
    out: at(spec.out),
    image_out: at(spec.image_out),
    profile,
    dawn_options: profile ? withDawnToggleDisabled(dawnOptions, "timestamp_quantization") : dawnOptions,
    adapter_options: spec.adapter_options ?? {},
    generation: spec.generation ?? {},
    runs: spec.runs ?? 20,
    warmup: spec.warmup ?? 3,
    warmup_ms: spec.warmup_ms ?? WARMUP_MS,
    generation_runs: spec.generation_runs ?? 2,
  };
}

/** Dawn options with `toggle` added to their "disable-dawn-features=" list (made if absent). */
function withDawnToggleDisabled(options, toggle) {
  const key = "disable-dawn-features=";
  if (!options.some((o) => o.startsWith(key))) return [...options, key + toggle];
  return options.map((o) => (o.startsWith(key) ? `${o},${toggle}` : o));
}

/**
 * tvmjs's bundle is UMD though its package.json says "type": "module": require a .cjs copy.
 * Its WASI is an Emscripten module that, under Node, adds a process "uncaughtException" listener
 * rethrowing everything (one per instance); ours drops it, so our own error report stands.
 */
function loadTvmjs(file) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tvmjs-"));
  const copy = path.join(dir, "tvmjs.cjs");
  fs.copyFileSync(file, copy);
  let tvmjs;
  try {
    tvmjs = createRequire(import.meta.url)(copy);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const createPolyfillWASI = () => {
    const before = new Set(process.listeners("uncaughtException"));
    const wasi = tvmjs.createPolyfillWASI();
    for (const l of process.listeners("uncaughtException")) if (!before.has(l)) process.off("uncaughtException", l);
    return wasi;
  };
  return { ...tvmjs, createPolyfillWASI };
}

/**
 * The weight loader for Node: each component's tensor cache read from the bundle on disk and
 * uploaded record by record; `reads` gets each component's read time and bytes.
 */
function weightsFromDisk(bundle, reads) {
  return async (tvm, dev, name, spec) => {
    if (spec.num_params === 0) return [];
    const folder = path.join(bundle, spec.params);
    const cache = readJson(path.join(folder, "tensor-cache.json"), `${name}'s tensor cache`);
    const read = { weights_read_ms: 0, weight_bytes: 0 };
    const byName = new Map();
    for (const shard of cache.records) {
      const started = now();
      const data = fs.readFileSync(path.join(folder, shard.dataPath));
      read.weights_read_ms += now() - started;
      for (const record of shard.records) {
        if (record.format !== "raw") throw new BenchError(`${name}: weight ${record.name} has format ${record.format}; only "raw" is supported`);
        const bytes = new Uint8Array(data.buffer, data.byteOffset + record.byteOffset, record.nbytes);
        byName.set(record.name, tvm.empty(record.shape, record.dtype, dev).copyFromRawBytes(bytes));
        // As tvmjs's fetchTensorCache (the page's loader): each upload's staging memory is
        // freed before the next, not all of the weights' at once.
        await dev.sync();
        read.weight_bytes += record.nbytes;
      }
    }
    read.weights_read_ms = round3(read.weights_read_ms);
    reads[name] = read;
    // Named as tvmjs's getParamsFromCache expects them: `${component}_${i}`, in the functions' order.
    return Array.from({ length: byName.size }, (_, i) => {
      const weight = byName.get(`${name}_${i}`);
      if (weight === undefined) throw new BenchError(`${name}: weight ${name}_${i} is not in ${folder}/tensor-cache.json`);
      return weight;
    });
  };
}

/**
 * A device for the bundle (as the page requests it) that collects WebGPU errors; with a profile,
 * with timestamp queries where the adapter has them, and its dispatches' profiler.
 */
async function deviceFor(gpu, run, manifest) {
  const granted = await requestDevice(gpu, manifest.required_limits, {
    adapterOptions: run.adapter_options, advice: NO_GPU_ADVICE, features: run.profile ? ["timestamp-query"] : [],
  });
  const profiler = run.profile ? profileDispatches(granted.device) : null; // before any pipeline is made
  const errors = [];
  granted.device.addEventListener("uncapturederror", (event) => errors.push(String(event.error?.message ?? event.error)));
  granted.device.lost.then((lost) => { if (lost.reason !== "destroyed") errors.push(`device lost: ${lost.message}`); });
  const check = (where) => {
    if (errors.length > 0) {
      throw new BenchError(`WebGPU error during ${where}: ${errors.slice(0, 3).join(" | ")}`
        + (errors.length > 3 ? ` (and ${errors.length - 3} more)` : ""));
    }
  };
  return { ...granted, check, profiler };
}

const numericLimits = (limits) => {
  const out = {};
  for (const key in limits) if (typeof limits[key] === "number") out[key] = limits[key];
  return out;
};

function deviceReport(gpu) {
  const { adapter, device } = gpu;
  const info = {};
  for (const key of ["vendor", "architecture", "device", "description", "subgroupMinSize", "subgroupMaxSize", "isFallbackAdapter"]) {
    if (adapter.info?.[key] !== undefined) info[key] = adapter.info[key];
  }
  return {
    adapter_info: info,
    adapter_features: [...adapter.features].sort(),
    adapter_limits: numericLimits(adapter.limits),
    requested_limits: gpu.requestedLimits,
    device_features: [...device.features].sort(),
    limits_granted: Object.fromEntries(Object.keys(DEFAULT_LIMITS.core).map((name) => [name, device.limits[name]])),
  };
}

/** What the pipeline's load measured, plus what the bench knows of the component. */
function loadReport(component, wasmFile, read) {
  const { tvm, vm, report, spec } = component;
  let kernels = null;
  tvm.beginScope();
  try {
    kernels = Object.keys(JSON.parse(vm.getInternalModule().getFunction("webgpu.get_fmap", true)())).length;
  } catch {
    kernels = null; // a runtime without the function: the count is unknown
  } finally {
    tvm.endScope();
  }
  return { wasm: wasmFile, wasm_bytes: fs.statSync(wasmFile).size, kernels, ...report, ...read, num_params: spec.num_params };
}

/** Deterministic, non-zero inputs for a timing: the prompt's ids, the timestep, randn for the rest. */
function timingInputs(signature, promptIds) {
  return signature.inputs.map((s, i) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.dtype === "int32") {
      if (n !== promptIds.length) throw new BenchError(`int32 input of shape ${s.shape}: expected the ${promptIds.length} token ids`);
      return promptIds;
    }
    if (n === 1) return Float32Array.of(UNET_TIMESTEP);
    return randn(1000 + i, s.shape);
  });
}

/**
 * Each function of a component: `warmup` then `runs` timed calls, the inputs already on the GPU;
 * then, with a profile, its kernels (profileFunction). Returns {timings, profile}.
 */
async function timeFunctions(component, gpu, run, promptIds, label) {
  const { tvm, dev, spec } = component;
  const timings = {};
  const profile = {};
  for (const [entry, signature] of Object.entries(spec.functions)) {
    tvm.beginScope();
    try {
      const args = component.toDevice(entry, timingInputs(signature, promptIds));
      await dev.sync();
      const call = async () => {
        tvm.beginScope(); // frees this call's output
        const started = now();
        component.invoke(entry, args);
        await dev.sync();
        tvm.endScope();
        return now() - started;
      };
      let warmup = 0;
      for (const started = now(); warmup < run.warmup || now() - started < run.warmup_ms; warmup++) await call();
      const samples = [];
      for (let i = 0; i < run.runs; i++) samples.push(await call());
      gpu.check(`${label}.${entry}: timing`);
      timings[entry] = { inputs: signature.inputs, warmup, runs: run.runs, ...stats(samples) };
      log(`${label}.${entry}: median ${timings[entry].median_ms} ms (min ${timings[entry].min_ms}, max ${timings[entry].max_ms}) over ${run.runs} runs`);
      if (gpu.profiler) {
        profile[entry] = await profileFunction(component, gpu.profiler, entry, args, run.profile.runs);
        gpu.check(`${label}.${entry}: profile`);
        const p = profile[entry];
        log(`${label}.${entry}: profile: ${p.dispatches} dispatches, kernels ${p.gpu_kernel_ms ?? "(untimed)"} ms of GPU, `
          + `span ${p.gpu_span_ms ?? "-"} ms; host ${p.host_ms} ms (${p.host_us_per_dispatch} us per dispatch), call ${p.wall_ms} ms`);
      }
      component.release(); // as a generation does between its parts: the peak is a generation's
    } finally {
      tvm.endScope();
    }
  }
  return { timings, profile: gpu.profiler ? profile : null };
}

/**
 * The kernels of `entry` on `args`: `runs` calls under the profiler (each dispatch named, and
 * timed on the GPU where the device can), then `runs` plain calls, timed until `invoke` returns
 * (the host's part: tvmjs encodes every dispatch and submits them at the sync) and to the sync's end.
 */
async function profileFunction(component, profiler, entry, args, runs) {
  const { tvm, dev } = component;
  const submitted = () => tvm.lib.webGPUContext.shaderSubmitCounter; // tvmjs's count of its dispatches
  const recorded = [];
  for (let i = 0; i < runs; i++) {
    tvm.beginScope();
    const before = submitted();
    const run = await profiler.record(async () => {
      component.invoke(entry, args);
      await dev.sync();
    });
    if (run.dispatches.length !== submitted() - before) {
      throw new BenchError(`profile of ${entry}: tvmjs made ${submitted() - before} dispatches, the profiler saw ${run.dispatches.length} compute passes`);
    }
    recorded.push(run);
    tvm.endScope();
  }
  const hostMs = [];
  const wallMs = [];
  for (let i = 0; i < runs; i++) {
    tvm.beginScope();
    const started = now();
    component.invoke(entry, args);
    hostMs.push(now() - started);
    await dev.sync();
    wallMs.push(now() - started);
    tvm.endScope();
  }
  return summarizeProfile(recorded, hostMs, wallMs, profiler.timestamps);
}

/** profileFunction's result from the recorded runs (profiler.record's) and the plain calls. */
function summarizeProfile(recorded, hostMs, wallMs, timestamps) {
  const dispatches = recorded[0].dispatches.length;
  if (recorded.some((r) => r.dispatches.length !== dispatches)) {
    throw new BenchError(`profile: the calls made different numbers of dispatches: ${recorded.map((r) => r.dispatches.length)}`);
  }
  const kernels = {};
  recorded.forEach(({ dispatches: runDispatches }, run) => {
    for (const { kernel, ns } of runDispatches.filter((d) => d.kernel !== null)) {
      const name = primFuncOf(kernel);
      kernels[name] ??= { wgsl: new Map(), ms: recorded.map(() => 0) };
      if (run === 0) kernels[name].wgsl.set(kernel, (kernels[name].wgsl.get(kernel) ?? 0) + 1);
      kernels[name].ms[run] += ns / 1e6;
    }
  });
  const msOrNull = (samples) => (timestamps ? round3(median(samples)) : null);
  const totals = recorded.map((r) => r.dispatches.reduce((sum, d) => sum + d.ns, 0) / 1e6);
  const host = median(hostMs);
  return {
    runs: recorded.length,
    timestamps,
    quantized: timestamps ? recorded.some((r) => r.quantized) : null,
    dispatches,
    unnamed_dispatches: recorded[0].dispatches.filter((d) => d.kernel === null).length,
    // A PrimFunc's call dispatches each of its WGSL kernels once.
    kernels: Object.fromEntries(Object.entries(kernels).map(([name, k]) => [name, {
      calls: Math.max(...k.wgsl.values()),
      dispatches: [...k.wgsl.values()].reduce((a, b) => a + b, 0),
      gpu_ms: msOrNull(k.ms),
    }])),
    gpu_kernel_ms: msOrNull(totals),
    gpu_span_ms: msOrNull(recorded.map((r) => r.span_ns / 1e6)),
    host_ms: round3(host),
    host_us_per_dispatch: round3((1000 * host) / dispatches),
    wall_ms: round3(median(wallMs)),
  };
}

/** The page's RGBA pixels as raw RGB. */
function rgb(pixels) {
  const out = new Uint8Array((pixels.length / 4) * 3);
  for (let p = 0; p < pixels.length / 4; p++) out.set(pixels.subarray(4 * p, 4 * p + 3), 3 * p);
  return out;
}

async function main() {
  const specFile = process.argv[2];
  if (!specFile) throw new BenchError("usage: node bench/webgpu_node.mjs spec.json");
  const run = loadSpec(specFile);
  const manifest = readJson(path.join(run.bundle, "manifest.json"), "the bundle's manifest");
  for (const [variant, { component }] of Object.entries(run.variants)) {
    if (manifest.components[component] === undefined) {
      throw new BenchError(`variant ${variant}: the bundle has no component ${component} (it has ${Object.keys(manifest.components).join(", ")})`);
    }
  }
  const tvmjsFile = path.join(run.bundle, "vendor", "tvmjs.js");
  const result = {
    spec: path.resolve(specFile),
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    hostname: os.hostname(),
    env: Object.fromEntries(["EGL_PLATFORM", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "MESA_SHADER_CACHE_DISABLE",
      "__GL_SHADER_DISK_CACHE", "DAWN_DEBUG_BREAK_ON_ERROR"]
      .filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]])),
    bundle: { path: run.bundle, name: manifest.name, fingerprint: manifest.build?.fingerprint ?? null },
    webgpu_version: readJson(path.join(run.webgpu_package, "package.json"), "webgpu's package.json").version,
    // The bundle's copy has no package.json: the version is the one web/ pins.
    tvmjs_version: readJson(path.join(ROOT, "web", "package-lock.json"), "web's lock file")
      .packages["node_modules/@mlc-ai/web-runtime"]?.version ?? null,
    tvmjs_sha256: sha256(fs.readFileSync(tvmjsFile)),
    dawn_options: run.dawn_options,
    adapter_options: run.adapter_options,
    required_limits: manifest.required_limits,
  };

  const { create, globals } = await import(pathToFileURL(path.join(run.webgpu_package, "index.js")).href);
  Object.assign(globalThis, globals); // GPUBufferUsage, GPUMapMode, GPUShaderStage... for tvmjs
  const tvmjs = loadTvmjs(tvmjsFile);
  const tokenizer = manifest.components.text_encoder === undefined ? null
    : await loadTokenizer(pathToFileURL(path.join(run.bundle, "tokenizer") + "/"));
  const dawn = create(run.dawn_options);
  const gpu = await deviceFor(dawn, run, manifest);
  Object.assign(result, deviceReport(gpu));
  const describe = Object.values(result.adapter_info).filter((v) => typeof v === "string" && v).join(" / ");
  log(`adapter: ${describe || "(no info)"}; Dawn options ${JSON.stringify(run.dawn_options)}`);
  log(`limits requested: ${JSON.stringify(gpu.requestedLimits)}; granted: ${JSON.stringify(result.limits_granted)}`);

  // The whole pipeline on the one device, as the page loads it.
  const reads = {};
  const pipeline = await createPipeline({
    manifest,
    gpu,
    tvmjs,
    tokenizer,
    readFile: async (file) => fs.readFileSync(path.join(run.bundle, file)),
    loadWeights: weightsFromDisk(run.bundle, reads),
    onStatus: (text) => log(text),
    log: (text) => log(text),
  });
  gpu.check("loading the pipeline");
  result.load = {};
  for (const name of pipeline.components) {
    const spec = manifest.components[name];
    result.load[name] = loadReport(pipeline.component(name), path.join(run.bundle, spec.wasm), reads[name]);
    log(`${name}: ${JSON.stringify(result.load[name])}`);
  }

  const settings = { ...manifest.defaults, ...run.generation }; // named as in the manifest
  const promptIds = tokenizer?.encode(settings.prompt);

  result.timings = {};
  if (run.profile) result.profile = {};
  for (const name of pipeline.components) {
    const { timings, profile } = await timeFunctions(pipeline.component(name), gpu, run, promptIds, name);
    result.timings[name] = timings;
    if (profile) result.profile[name] = profile;
  }
  if (pipeline.canGenerate) {
    result.generation = await timeGeneration(pipeline, gpu, run, settings, manifest.latent_shape);
    for (const name of pipeline.components) {
      result.load[name].runtime_stats = pipeline.component(name).tvm.runtimeStatsText();
    }
  }

  // Other builds of the bundle's components: each on a device of its own (tvmjs's dispose()
  // destroys its device, which frees every buffer the build made), one at a time.
  result.variants = {};
  for (const [variant, { component: name, wasm: wasmFile }] of Object.entries(run.variants)) {
    log(`${variant}: ${name} from ${wasmFile}`);
    const vgpu = await deviceFor(dawn, run, manifest);
    const variantReads = {};
    const component = await loadComponent({
      tvmjs, device: vgpu.device, name, spec: manifest.components[name], wasm: fs.readFileSync(wasmFile),
      loadWeights: weightsFromDisk(run.bundle, variantReads), log: (text) => log(`${variant}: ${text}`),
    });
    vgpu.check(`${variant}: loading`);
    const load = loadReport(component, wasmFile, variantReads[name]);
    log(`${variant}: ${JSON.stringify(load)}`);
    const { timings, profile } = await timeFunctions(component, vgpu, run, promptIds, variant);
    load.runtime_stats = component.tvm.runtimeStatsText();
    result.variants[variant] = { component: name, load, timings, ...(profile && { profile }) };
    component.tvm.endScope();
    component.tvm.dispose(); // destroys vgpu.device
  }

  fs.mkdirSync(path.dirname(run.out), { recursive: true });
  fs.writeFileSync(run.out, JSON.stringify(result, null, 1) + "\n");
  if (!pipeline.canGenerate) {
    console.log(`webgpu_node: ${[...pipeline.components, ...Object.keys(result.variants)].join(", ")} timed -> ${run.out}`);
    return;
  }
  const ms = (t) => `${t.median_ms} ms`;
  const variants = Object.entries(result.variants).map(([v, r]) => ` ${v} ${ms(r.timings.main)}`).join("");
  console.log(`webgpu_node: ${describe || "adapter"} | text_encoder ${ms(result.timings.text_encoder.main)}`
    + ` unet ${ms(result.timings.unet.main)} vae_decoder ${ms(result.timings.vae_decoder.main)}${variants}`
    + ` | generation (${result.generation.steps} steps) ${result.generation.median_ms ?? result.generation.untimed_ms} ms`
    + ` | -> ${run.out}`);
}

/**
 * The whole generation: one untimed, then `generation_runs` timed; writes the last one's image
 * to `image_out`. `settings` are named as in the manifest.
 */
async function timeGeneration(pipeline, gpu, run, settings, latentShape) {
  const generation = { ...settings, negativePrompt: settings.negative_prompt }; // as pipeline.generate names them
  log(`generation: ${settings.steps} steps of ${settings.scheduler}, guidance ${settings.guidance}, seed ${settings.seed}`);
  const first = await pipeline.generate(generation);
  gpu.check("generation");
  const timed = [];
  for (let i = 0; i < run.generation_runs; i++) timed.push(await pipeline.generate(generation));
  gpu.check("generation");
  const last = timed.at(-1) ?? first;
  const image = rgb(last.pixels);
  fs.mkdirSync(path.dirname(run.image_out), { recursive: true });
  fs.writeFileSync(run.image_out, image);
  const report = {
    ...settings,
    latent_shape: latentShape,
    untimed_ms: first.timings.total_ms,
    ...(timed.length ? stats(timed.map((g) => g.timings.total_ms)) : {}),
    parts: timed.map((g) => g.timings),
    deterministic: timed.every((g) => Buffer.compare(Buffer.from(g.pixels), Buffer.from(first.pixels)) === 0),
    image: { path: run.image_out, height: last.height, width: last.width, format: "raw uint8 RGB, row-major",
      sha256: sha256(image) },
  };
  log(`generation: ${JSON.stringify(report.samples_ms ?? report.untimed_ms)} ms, image ${run.image_out}`);
  return report;
}

main().then(
  () => process.exit(0), // Dawn may keep the event loop alive
  (error) => {
    const plain = error instanceof BenchError || error instanceof WebGPUUnavailable;
    console.error(`webgpu_node: error: ${plain ? error.message : error?.stack ?? error}`);
    process.exit(1);
  },
);
