// Which kernel each WebGPU dispatch of tvmjs runs, and its GPU time from timestamp queries.
//
//   const profiler = profileDispatches(device); // before tvmjs compiles its pipelines
//   ...load the component...
//   const run = await profiler.record(async () => { invoke(...); await dev.sync(); });
//   // run.dispatches: [{kernel, ns}] in dispatch order; run.span_ns, run.quantized
//
// tvmjs runs every dispatch as a compute pass of its own (beginComputePass, setPipeline,
// setBindGroup, dispatchWorkgroups, end) and creates each pipeline with its kernel's WGSL
// function as entry point (`<PrimFunc>_kernel`, `..._kernel_1`, ...). So the device's pipeline
// creation is wrapped for good, to learn each pipeline's kernel, and only while `record` runs,
// its command encoders, to name each pass's kernel and, where the device has "timestamp-query",
// to write a timestamp at the beginning and the end of every pass. Calls outside `record` go to
// Dawn unwrapped. Without "timestamp-query" the dispatches are named but untimed (ns null).
//
// Dawn rounds timestamps to 65,536 ns unless its device toggle `timestamp_quantization` is
// disabled (Dawn option "disable-dawn-features=timestamp_quantization"); `quantized` says
// whether every timestamp of a run looked rounded so.

const QUERIES_PER_SET = 4096; // WebGPU's largest query set
const QUANTUM_BITS = 0xffffn; // what Dawn's quantization clears

/** The PrimFunc a WGSL kernel belongs to: its name without `_kernel` or `_kernel_N`. */
export const primFuncOf = (kernel) => kernel.replace(/_kernel(_\d+)?$/, "");

/**
 * Replaces `object[name]` by `wrap(the original, bound)` as an own property (Dawn's methods
 * live on read-only prototype properties); returns what undoes it.
 */
function override(object, name, wrap) {
  const original = object[name].bind(object);
  Object.defineProperty(object, name, { value: wrap(original), configurable: true, writable: true });
  return () => delete object[name];
}

export function profileDispatches(device) {
  const kernelOf = new WeakMap(); // GPUComputePipeline -> its entry point
  const remember = (pipeline, descriptor) => {
    kernelOf.set(pipeline, descriptor.compute.entryPoint);
    return pipeline;
  };
  override(device, "createComputePipeline", (create) => (descriptor) => remember(create(descriptor), descriptor));
  override(device, "createComputePipelineAsync", (create) => async (descriptor) => remember(await create(descriptor), descriptor));

  const timestamps = device.features.has("timestamp-query");
  const querySets = []; // reused by every record: {querySet, resolved, readable}
  const timestampWrites = (pass) => {
    const first = 2 * pass; // each pass writes 2 queries; QUERIES_PER_SET is even
    const set = Math.floor(first / QUERIES_PER_SET);
    while (querySets.length <= set) {
      const bytes = QUERIES_PER_SET * 8;
      querySets.push({
        querySet: device.createQuerySet({ type: "timestamp", count: QUERIES_PER_SET }),
        resolved: device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
        readable: device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
      });
    }
    const index = first % QUERIES_PER_SET;
    return { querySet: querySets[set].querySet, beginningOfPassWriteIndex: index, endOfPassWriteIndex: index + 1 };
  };

  /** The first `count` timestamps written, in ns (BigInt). */
  async function readTimestamps(count) {
    const used = querySets.slice(0, Math.ceil(count / QUERIES_PER_SET));
    const encoder = device.createCommandEncoder();
    used.forEach(({ querySet, resolved, readable }, i) => {
      const n = Math.min(QUERIES_PER_SET, count - i * QUERIES_PER_SET);
      encoder.resolveQuerySet(querySet, 0, n, resolved, 0);
      encoder.copyBufferToBuffer(resolved, 0, readable, 0, n * 8);
    });
    device.queue.submit([encoder.finish()]);
    const out = [];
    for (const [i, { readable }] of used.entries()) {
      const n = Math.min(QUERIES_PER_SET, count - i * QUERIES_PER_SET);
      await readable.mapAsync(GPUMapMode.READ, 0, n * 8);
      out.push(...new BigUint64Array(readable.getMappedRange(0, n * 8).slice(0)));
      readable.unmap();
    }
    return out;
  }

  /**
   * Runs `run` (async; it must leave no work pending, e.g. end with a sync, and start with none)
   * with every compute pass named, and timed where the device can: {dispatches: [{kernel, ns}],
   * span_ns (first pass's start to the last one's end), quantized}.
   */
  async function record(run) {
    const kernels = []; // per pass, in order; null for a pass that set no pipeline of ours
    const restore = override(device, "createCommandEncoder", (create) => (descriptor) => {
      const encoder = create(descriptor);
      override(encoder, "beginComputePass", (begin) => (passDescriptor = {}) => {
        const pass = kernels.push(null) - 1;
        const compute = begin(timestamps ? { ...passDescriptor, timestampWrites: timestampWrites(pass) } : passDescriptor);
        override(compute, "setPipeline", (set) => (pipeline) => {
          kernels[pass] = kernelOf.get(pipeline) ?? null;
          set(pipeline);
        });
        return compute;
      });
      return encoder;
    });
    try {
      await run();
    } finally {
      restore();
    }
    if (!timestamps || kernels.length === 0) {
      return { dispatches: kernels.map((kernel) => ({ kernel, ns: null })), span_ns: null, quantized: null };
    }
    const stamps = await readTimestamps(2 * kernels.length);
    const starts = stamps.filter((_, i) => i % 2 === 0);
    const ends = stamps.filter((_, i) => i % 2 === 1);
    const min = (xs) => xs.reduce((a, b) => (b < a ? b : a));
    const max = (xs) => xs.reduce((a, b) => (b > a ? b : a));
    return {
      dispatches: kernels.map((kernel, i) => ({ kernel, ns: Number(ends[i] - starts[i]) })),
      span_ns: Number(max(ends) - min(starts)),
      quantized: stamps.every((t) => (t & QUANTUM_BITS) === 0n),
    };
  }

  return { timestamps, record };
}
