// The page: a form around pipeline.js. Everything here is UI; the model work is in pipeline.js.
// window.websd exposes the API for scripts and tests:
//   websd.ready     a promise of the loaded pipeline (rejects with the error shown in #error)
//   websd.pipeline  the loaded pipeline, once ready
//   websd.loadPipeline, websd.loadManifest

import { loadManifest, loadPipeline } from "./pipeline.js";

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
  Object.assign($("steps"), { max: manifest.max_steps, value: d.steps });
  $("guidance").value = d.guidance;
  for (const name of manifest.schedulers) $("scheduler").add(new Option(name, name, false, name === d.scheduler));
  $("encode-prompt").value = d.prompt;
  Object.assign($("image"), manifest.image); // {height, width}
}

async function generate(pipeline) {
  $("generate").disabled = true; // one generation at a time
  $("error").hidden = true;
  const steps = Number($("steps").value);
  Object.assign($("steps-progress"), { value: 0, max: steps });
  const started = performance.now();
  try {
    const { pixels, width, height } = await pipeline.generate({
      prompt: $("prompt").value,
      negativePrompt: $("negative-prompt").value,
      seed: Number($("seed").value),
      steps,
      scheduler: $("scheduler").value,
      guidance: Number($("guidance").value),
      onStep: (i, n) => {
        $("steps-progress").value = i;
        $("status").textContent = `Step ${i} of ${n}…`;
      },
    });
    const canvas = $("image");
    Object.assign(canvas, { width, height });
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
    $("status").textContent = `Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
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
    $("generate").disabled = false;
    $("controls").onsubmit = (event) => { event.preventDefault(); generate(pipeline); };
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
