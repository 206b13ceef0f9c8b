// Executes a scheduler plan (schedulers.json, written from websd/schedulers) exactly as
// websd.schedulers.denoise does with numpy, so the browser's latents follow the native ones.
//
// A plan step is {timestep, sample: [c0..c4], eps: [c0..c4]} and means
//   x_next = sum_k sample[k] * x[i-k] + sum_k eps[k] * eps[i-k]      (k = 0 is the newest).
// numpy computes every term in float32: a Python float times a float32 array is
// float32(float32(c) * x), and np.sum(terms, axis=0, dtype=float32) adds the terms one after
// another in list order (sample terms, then eps terms; zero coefficients are skipped). Math.fround
// after each double operation gives exactly the float32 result (a double holds the exact
// product/sum of two float32s, or rounds it harmlessly), so we match numpy bit for bit.

const f32 = Math.fround;

export const HISTORY = 5; // websd.schedulers.HISTORY: how far back a step may reach

/** Classifier-free guidance: uncond + g * (cond - uncond), each operation in float32. */
export function guide(uncond, cond, guidance) {
  const g = f32(guidance);
  const out = new Float32Array(uncond.length);
  for (let i = 0; i < out.length; i++) {
    out[i] = f32(uncond[i] + f32(g * f32(cond[i] - uncond[i])));
  }
  return out;
}

/** One plan step; samples[0] and eps[0] are the newest (lists may be shorter than HISTORY). */
export function applyStep(step, samples, eps) {
  const terms = [];
  step.sample.forEach((c, k) => { if (c && k < samples.length) terms.push([f32(c), samples[k]]); });
  step.eps.forEach((c, k) => { if (c && k < eps.length) terms.push([f32(c), eps[k]]); });
  const out = new Float32Array(samples[0].length); // all-zero coefficients give zeros, like numpy
  terms.forEach(([c, x], t) => {
    for (let i = 0; i < out.length; i++) {
      const term = f32(c * x[i]);
      out[i] = t === 0 ? term : f32(out[i] + term);
    }
  });
  return out;
}

/**
 * Run a whole plan from `latents`. `predictNoise(x, timestep)` returns the (guided) noise
 * prediction for x. `onStep(done, total)` follows the steps as diffusers counts them (each plan
 * step's `progress`: PNDM's warm-up evaluation counts no step). Returns the final latents.
 */
export async function denoise({ plan, latents, predictNoise, onStep }) {
  let samples = [latents];
  let eps = [];
  const total = plan[plan.length - 1].progress;
  for (const step of plan) {
    eps = [await predictNoise(samples[0], step.timestep), ...eps].slice(0, HISTORY);
    samples = [applyStep(step, samples, eps), ...samples].slice(0, HISTORY);
    if (step.progress > 0) onStep?.(step.progress, total);
  }
  return samples[0];
}
