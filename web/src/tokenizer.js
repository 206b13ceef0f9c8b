// CLIP prompt tokenizer for the browser (and Node, for tests).
//
// Reads the folder written by stages/build_tokenizer_wasm.py:
//   web-tokenizers.js     @mlc-ai/web-tokenizers (Hugging Face `tokenizers` compiled to wasm,
//                         the wasm inlined as a data URI); a UMD bundle, not an ES module
//   tokenizer.json        the `tokenizers` JSON of the CLIP tokenizer
//   tokenizer_meta.json   {bos_token_id, eos_token_id, pad_token_id, max_length}
//
// encode(prompt) gives the ids the diffusers SD pipeline feeds its text encoder
// (padding="max_length", max_length=77, truncation=True): BOS, the text's ids cut to
// max_length - 2, EOS, then pad ids up to max_length.
//
// Loading the UMD bundle: it is fetched as text and run with `new Function`, with `exports`
// and `module` passed in, so its UMD header takes the CommonJS branch and hands its exports to
// us instead of setting a `tokenizers` global. This works alike in a page, a (module) worker and
// Node. Under Node the bundle's Emscripten code also wants `require` and `__filename`, which
// are supplied from node:module; in a browser they stay undefined and are never touched.

export const BUNDLE_FILE = "web-tokenizers.js";
export const TOKENIZER_FILE = "tokenizer.json";
export const META_FILE = "tokenizer_meta.json";

// The same test the bundle's Emscripten code makes to decide it runs under Node.
const IS_NODE =
  typeof process == "object" &&
  typeof process.versions == "object" &&
  typeof process.versions.node == "string";

const bundles = new Map(); // bundle URL -> Promise<Tokenizer class>

function folderUrl(baseUrl) {
  let s = String(baseUrl);
  if (!s.endsWith("/")) s += "/";
  const here = globalThis.document?.baseURI ?? globalThis.location?.href;
  return here === undefined ? new URL(s) : new URL(s, here);
}

async function fetchBytes(url) {
  if (url.protocol === "file:" && IS_NODE) {
    // Node's fetch does not read file: URLs.
    const { readFile } = await import("node:fs/promises");
    const buf = await readFile(url);
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  }
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`tokenizer: fetching ${url} failed: ${response.status} ${response.statusText}`);
  }
  return response.arrayBuffer();
}

async function fetchText(url) {
  return new TextDecoder().decode(await fetchBytes(url));
}

async function evaluateBundle(url) {
  const source = (await fetchText(url)).replace(/\n\/\/# sourceMappingURL=\S*\s*$/, "\n");
  let require;
  let filename;
  if (IS_NODE) {
    const { createRequire } = await import("node:module");
    const { fileURLToPath } = await import("node:url");
    const { join } = await import("node:path");
    filename = url.protocol === "file:" ? fileURLToPath(url) : join(process.cwd(), BUNDLE_FILE);
    require = createRequire(filename);
  }
  const module = { exports: {} };
  const run = new Function(
    "exports", "module", "define", "require", "__filename",
    `${source}\n//# sourceURL=${url.href}\n`,
  );
  run.call(globalThis, module.exports, module, undefined, require, filename);
  const { Tokenizer } = module.exports;
  if (typeof Tokenizer?.fromJSON !== "function") {
    throw new Error(`tokenizer: ${url} did not export web-tokenizers' Tokenizer`);
  }
  return Tokenizer;
}

function loadBundle(url) {
  let p = bundles.get(url.href);
  if (p === undefined) {
    p = evaluateBundle(url);
    p.catch(() => bundles.delete(url.href));
    bundles.set(url.href, p);
  }
  return p;
}

function checkMeta(meta, url) {
  for (const key of ["bos_token_id", "eos_token_id", "pad_token_id", "max_length"]) {
    if (!Number.isInteger(meta[key])) throw new Error(`tokenizer: ${url} has no integer ${key}`);
  }
  if (meta.max_length < 2) throw new Error(`tokenizer: ${url}: max_length ${meta.max_length} < 2`);
  return meta;
}

/**
 * Load the tokenizer folder at `baseUrl` (absolute, or relative to the page; in Node an
 * absolute http(s): or file: URL).
 *
 * @returns {Promise<{encode(prompt: string): Int32Array, tokenize(prompt: string): Int32Array,
 *   maxLength: number, bosId: number, eosId: number, padId: number, dispose(): void}>}
 */
export async function loadTokenizer(baseUrl) {
  const base = folderUrl(baseUrl);
  const metaUrl = new URL(META_FILE, base);
  const [Tokenizer, json, metaText] = await Promise.all([
    loadBundle(new URL(BUNDLE_FILE, base)),
    fetchBytes(new URL(TOKENIZER_FILE, base)),
    fetchText(metaUrl),
  ]);
  const meta = checkMeta(JSON.parse(metaText), metaUrl);
  const maxLength = meta.max_length;
  const bosId = meta.bos_token_id;
  const eosId = meta.eos_token_id;
  const padId = meta.pad_token_id;
  const tokenizer = await Tokenizer.fromJSON(json);

  /** The text's own ids: no BOS/EOS, no truncation, no padding. */
  function tokenize(prompt) {
    return tokenizer.encode(String(prompt));
  }

  /** The SD pipeline's ids: BOS, text ids truncated to maxLength - 2, EOS, pad to maxLength. */
  function encode(prompt) {
    const text = tokenize(prompt);
    const n = Math.min(text.length, maxLength - 2);
    const ids = new Int32Array(maxLength).fill(padId);
    ids[0] = bosId;
    ids.set(text.subarray(0, n), 1);
    ids[n + 1] = eosId;
    return ids;
  }

  return {
    encode,
    tokenize,
    maxLength,
    bosId,
    eosId,
    padId,
    dispose: () => tokenizer.dispose(),
  };
}
