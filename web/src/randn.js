// Bit-compatible port of torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed),
// dtype=torch.float32), so the browser starts from the same latents as diffusers on CPU.
// Behaviour follows torch's ATen sources (core/MT19937RNGEngine.h, core/DistributionsHelper.h,
// core/TransformationHelper.h, native/cpu/DistributionTemplates.h) and was checked against torch:
// bit-identical to x86 torch (AVX2/AVX512 kernels); torch builds that use libm instead (CPU
// capability DEFAULT, e.g. aarch64) differ from it, and from us, by about 1 ulp (<= ~2e-6).

const f32 = Math.fround;

// torch's mt19937: standard MT19937, but seeded from only the low 32 bits of the 64-bit seed
// (init_with_uint32), so manual_seed(s) and manual_seed(s + 2**32) give the same stream.
function mt19937(seed) {
  const s = Number(BigInt.asUintN(32, BigInt(seed))); // BigInt: exact for any |seed| (also negative)
  const mt = new Uint32Array(624);
  mt[0] = s;
  for (let j = 1; j < 624; j++) {
    const p = mt[j - 1] ^ (mt[j - 1] >>> 30);
    mt[j] = Math.imul(1812433253, p) + j; // 32-bit wraparound like uint32_t
  }
  let idx = 624;
  return function next() {
    if (idx >= 624) { // regenerate the whole state block (twist)
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      idx = 0;
    }
    let y = mt[idx++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  };
}

export function randn(seed, shape) {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const next = mt19937(seed);

  if (n < 16) {
    // Scalar path (numel < 16): at::normal_distribution<double> per element. Each draw takes two
    // double uniforms (53 bits from random64() = (first u32 << 32) | second u32, masked to 53 bits,
    // times 2^-53), returns r*cos(theta) and caches r*sin(theta) in the generator for the next
    // element. Math is in double, then cast to float.
    const u53 = () => ((next() & 0x1fffff) * 4294967296 + next()) / 9007199254740992;
    for (let i = 0; i < n; i += 2) {
      const u1 = u53();
      const u2 = u53();
      const r = Math.sqrt(-2 * Math.log1p(-u2));
      const theta = 2 * Math.PI * u1;
      out[i] = r * Math.cos(theta);
      if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  }

  // Vector path (numel >= 16, contiguous float): first fill every element with a float uniform
  // (low 24 bits of one u32 times 2^-24), then Box-Muller in blocks of 16: element j (j<8) pairs
  // with j+8; u1 = 1 - data[j] (so log never sees 0), u2 = data[j+8]; data[j] = r*cos,
  // data[j+8] = r*sin, all in float32. On x86 torch (CPU capability AVX2 or AVX512) this uses
  // log256_ps/sincos256_ps from avx_mathfun.h, so we emulate those float polynomials (logf32,
  // sincosf32 below) to get bit-identical output rather than 1-ulp-off libm results.
  const fill16 = (d, o) => {
    for (let j = 0; j < 8; j++) {
      const u1 = 1 - d[o + j]; // exact in float32
      const radius = f32(Math.sqrt(-2 * logf32(u1))); // *-2 is exact
      sincosf32(f32(TWO_PI_F * d[o + j + 8]));
      d[o + j] = radius * COS; // Float32Array store rounds the product once, like mul_ps
      d[o + j + 8] = radius * SIN;
    }
  };
  for (let i = 0; i < n; i++) out[i] = (next() & 0xffffff) / 16777216;
  for (let i = 0; i + 16 <= n; i += 16) fill16(out, i);
  if (n % 16 !== 0) {
    // Tail: torch redraws 16 *fresh* uniforms into the last 16 slots (overlapping already
    // transformed values) and transforms them again.
    for (let i = n - 16; i < n; i++) out[i] = (next() & 0xffffff) / 16777216;
    fill16(out, n - 16);
  }
  return out;
}

// ---- float32 emulation of avx_mathfun.h (cephes) as compiled into torch's AVX2 kernel ----
// GCC contracts some mul+add pairs of those intrinsics into FMAs; which ones was determined by
// matching torch bit for bit over 2M samples. fma(a,b,c) below: a*b is exact in double, so one
// rounding to double then one to float (double rounding only matters in astronomically rare ties).
const fma = (a, b, c) => f32(a * b + c);
const TWO_PI_F = f32(2 * Math.PI);
const LOG_P = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
  1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f32);
const bits = new DataView(new ArrayBuffer(4));

// log256_ps for x in (0, 1] (always a normal float here, >= 2^-24).
function logf32(x) {
  bits.setFloat32(0, x);
  const i = bits.getInt32(0);
  let e = (i >> 23) - 127 + 1; // exponent such that x = m * 2^e, m in [0.5, 1)
  bits.setInt32(0, (i & ~0x7f800000) | 0x3f000000);
  let m = bits.getFloat32(0);
  let t = 0;
  if (m < f32(Math.SQRT1_2)) { t = m; e -= 1; } // m in [sqrt(.5), sqrt(2)) after the next line
  m = f32(f32(m - 1) + t);
  const z = f32(m * m);
  let y = LOG_P[0];
  for (let k = 1; k < 9; k++) y = fma(y, m, LOG_P[k]);
  y = f32(y * m);
  y = fma(y, z, f32(e * f32(-2.12194440e-4)));
  y = fma(z, -0.5, y);
  return fma(e, 0.693359375, f32(m + y));
}

// sincos256_ps for x in [0, 2*pi); results in SIN/COS (avoids an allocation per call).
let SIN = 0, COS = 0;
function sincosf32(x) {
  let j = Math.trunc(f32(x * f32(4 / Math.PI))); // octant
  j = (j + 1) & ~1;
  // Cody-Waite reduction by j*pi/4 in three float parts.
  x = fma(j, -0.78515625, x);
  x = fma(j, f32(-2.4187564849853515625e-4), x);
  x = fma(j, f32(-3.77489497744594108e-8), x);
  const z = f32(x * x);
  let c = f32(2.443315711809948e-5);
  c = fma(c, z, f32(-1.388731625493765e-3));
  c = fma(c, z, f32(4.166664568298827e-2));
  c = f32(c * z);
  c = f32(fma(c, z, -f32(z * 0.5)) + 1);
  let s = f32(-1.9515295891e-4);
  s = fma(s, z, f32(8.3321608736e-3));
  s = fma(s, z, f32(-1.6666654611e-1));
  s = fma(f32(s * z), x, x);
  const swap = (j & 2) !== 0; // octants where sin/cos polynomials trade places
  SIN = (j & 4 ? -1 : 1) * (swap ? c : s);
  COS = ((j - 2) & 4 ? 1 : -1) * (swap ? s : c);
}
