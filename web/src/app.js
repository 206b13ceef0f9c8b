// The page: a form around the pipeline (browser.js, pipeline.js). Everything here is UI.
// window.websd exposes the API for scripts and tests:
//   websd.ready     a promise of the loaded pipeline (rejects with the error shown in #error)
//   websd.pipeline  the loaded pipeline, once ready
//   websd.loadPipeline, websd.loadManifest

import { checkInputs } from "./inputs.js";
import { loadManifest, loadPipeline } from "./browser.js";

const $ = (id) => document.getElementById(id);
const baseUrl = new URL(".", location.href); // index.html sits at the root of dist/

function showError(error) {
  console.error(error);
  $("error").textContent = error?.message ?? String(error);
  $("error").hidden = false;
  $("status").textContent = "Error.";
}

// Fill the form from the manifest's defaults and limits.
function setUpForm(manifest) {
  const d = manifest.defaults;
  $("prompt").value = d.prompt;
  $("negative-prompt").value = d.negative_prompt;
  $("seed").value = d.seed;
  $("steps").value = d.steps;
  $("guidance").value = d.guidance;
  for (const name of manifest.schedulers) $("scheduler").add(new Option(name, name, false, name === d.scheduler));
  $("encode-prompt").value = d.prompt;
  Object.assign($("image"), manifest.image); // {height, width}
}

const FIELDS = ["seed", "steps", "guidance"];

// Check the form's values (inputs.js: the CLI's rules); show each problem next to its field.
// Returns the parsed inputs, or null when any is out of range.
function readInputs(manifest) {
  const inputs = checkInputs({
    seed: $("seed").value, steps: $("steps").value, scheduler: $("scheduler").value, guidance: $("guidance").value,
  }, manifest.max_steps);
  for (const field of FIELDS) {
    const message = inputs.errors?.[field];
    Object.assign($(`${field}-error`), { textContent: message ?? "", hidden: message === undefined });
    $(field).setAttribute("aria-invalid", String(message !== undefined));
  }
  return inputs.errors ? null : inputs;
}

async function generate(pipeline, inputs) {
  $("generate").disabled = true; // one generation at a time (the caller turns it back on)
  $("error").hidden = true;
  Object.assign($("steps-progress"), { value: 0, max: inputs.steps });
  const started = performance.now();
  try {
    const { pixels, width, height } = await pipeline.generate({
      ...inputs,
      prompt: $("prompt").value,
      negativePrompt: $("negative-prompt").value,
      onStep: (done, total) => {
        $("steps-progress").value = done;
        $("status").textContent = `Step ${done} of ${total}…`;
      },
    });
    const canvas = $("image");
    Object.assign(canvas, { width, height });
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
    $("status").textContent = `Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (error) {
    showError(error);
  }
}

async function encodeDemo(pipeline) {
  const embeddings = await pipeline.encode($("encode-prompt").value);
  const { max_length: n } = pipeline.manifest;
  const head = Array.from(embeddings.subarray(0, 6), (v) => v.toFixed(4)).join(", ");
  $("encode-output").textContent = `[1, ${n}, ${embeddings.length / n}]: ${head}, …`;
}

async function main() {
  $("status").textContent = "Loading…";
  const manifest = await loadManifest(baseUrl);
  setUpForm(manifest);
  const pipeline = await loadPipeline(baseUrl, {
    manifest,
    onStatus: (text) => { $("status").textContent = text; },
    onWeightsProgress: (loaded, total) => Object.assign($("weights-progress"), { value: loaded, max: total || 1 }),
  });
  window.websd.pipeline = pipeline;
  $("encode").disabled = false;
  $("encode").onclick = () => encodeDemo(pipeline).catch(showError);
  if (pipeline.canGenerate) {
    let running = false;
    const revalidate = () => { $("generate").disabled = running || readInputs(manifest) === null; };
    $("controls").oninput = revalidate; // the button stays off while any value is out of range
    $("controls").onsubmit = async (event) => {
      event.preventDefault();
      const inputs = readInputs(manifest);
      if (inputs === null || running) return; // Enter in a field submits without the button
      running = true;
      try { await generate(pipeline, inputs); } finally { running = false; revalidate(); }
    };
    revalidate();
    $("status").textContent = "Ready.";
  } else {
    $("controls").hidden = true;
    const has = pipeline.components.join(", ");
    $("status").textContent = `Ready. This build holds only ${has}: no image generation, but the text encoder demo `
      + "below and window.websd.pipeline.encode(prompt) work.";
  }
  return pipeline;
}

window.websd = { loadPipeline, loadManifest };
window.websd.ready = main();
window.websd.ready.catch(showError);
