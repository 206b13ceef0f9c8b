// The rules for a generation's inputs, as websd/inputs.py applies them to `websd generate`: the
// same ranges and meaning as diffusers. Each parser takes what a form field or a script gives
// and returns the value, or throws an InputError that names the input and what is allowed.

export class InputError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field; // "seed", "guidance", "steps" or "scheduler"
  }
}

// Exactly what torch.Generator.manual_seed accepts (diffusers seeds through it); a negative seed
// means seed + 2^64. Seeds are BigInts: a JS number is exact only below 2^53.
export const SEED_MIN = -(2n ** 63n);
export const SEED_MAX = 2n ** 64n - 1n;

const SEED_RULE = `an integer from ${SEED_MIN} to ${SEED_MAX} (2^64 - 1)`;

/** A seed from a BigInt, a safe-integer number, or a decimal string. */
export function parseSeed(value) {
  let seed;
  if (typeof value === "bigint") seed = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) seed = BigInt(value);
  else if (typeof value === "string" && /^\s*-?\d+\s*$/.test(value)) seed = BigInt(value.trim());
  else if (typeof value === "number" && Number.isInteger(value)) {
    throw new InputError("seed", `Seed ${value} is above 2^53, where JavaScript numbers are not exact: `
      + "pass it as a string or a BigInt.");
  } else throw new InputError("seed", `Seed must be ${SEED_RULE}${value === "" ? "." : `, got "${value}".`}`);
  if (seed < SEED_MIN || seed > SEED_MAX) throw new InputError("seed", `Seed must be ${SEED_RULE}, got ${seed}.`);
  return seed;
}

/** Any finite number; at most 1 turns classifier-free guidance off, as in diffusers. */
export function parseGuidance(value) {
  const guidance = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof guidance !== "number" || !Number.isFinite(guidance)) {
    throw new InputError("guidance", `Guidance must be a finite number, got "${value}".`);
  }
  return guidance;
}

/** A whole number of steps from 1 to what the scheduler plans (manifest.max_steps). */
export function parseSteps(value, scheduler, maxSteps) {
  const most = maxSteps[scheduler];
  if (most === undefined) {
    throw new InputError("scheduler", `Unknown scheduler "${scheduler}" (${Object.keys(maxSteps).join(", ")}).`);
  }
  const steps = typeof value === "string" && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (!Number.isInteger(steps) || steps < 1 || steps > most) {
    throw new InputError("steps", `Steps must be a whole number from 1 to ${most} for ${scheduler}, got "${value}".`);
  }
  return steps;
}

/**
 * Every input of a generation checked: {seed, steps, scheduler, guidance} with their values, or
 * the errors by field ({errors: {seed: "...", ...}}) when any is out of its range.
 */
export function checkInputs({ seed, steps, scheduler, guidance }, maxSteps) {
  const values = {};
  const errors = {};
  const parsers = {
    seed: () => parseSeed(seed),
    steps: () => parseSteps(steps, scheduler, maxSteps),
    guidance: () => parseGuidance(guidance),
  };
  for (const [field, parse] of Object.entries(parsers)) {
    try {
      values[field] = parse();
    } catch (error) {
      if (!(error instanceof InputError)) throw error;
      errors[error.field] = error.message;
    }
  }
  return Object.keys(errors).length ? { errors } : { ...values, scheduler };
}
