"""SD 1.5 at 512x512 on one GPU, in one run: our WebGPU build (tvmjs in Node on Dawn's Vulkan
backend, default robustness and `disable_robustness`), our native CUDA build, and PyTorch
diffusers (fp32 without TF32, fp32 with TF32, fp16) on the same card.

For each: the UNet step at batch 2 (classifier-free guidance), the text encoder (one prompt),
the VAE decode, a whole 20-step DPM-Solver generation, and peak GPU memory; the images of our
builds against PyTorch fp32's. Every time is wall clock around a call that ends with a device
sync, median of RUNS after WARMUP calls. Runs on the GPU machine through bench/gpu_bench.sh;
writes gpu-bench.json, gpu-bench.md and gpu-bench.png into --out.

The native CUDA row and the WebGPU row with Dawn's default robustness also time variants:
other builds of a component, each named <component>-<name> (e.g. unet-untuned,
vae_decoder-tile-128x64-vec4x4-k16), the carry's cuda/<variant>.so and webgpu/<variant>.wasm (a variant
built for CUDA only has no .wasm), on the component's weights, after the generation; the report
puts each variant's `main` below its component's. Those two rows also profile every kernel of
every component and variant (bench/profile_cuda.py, webgpu_node.mjs's `profile`),
after their timings: profile-cuda.json, profile-webgpu.json and, side by side,
profile-<component>.{md,json} and, for a component with variants,
profile-<component>-variants.{md,json} (bench/profile_tables.py). A row whose profile fails
runs again without it.

    python3 bench/gpu_bench.py --config config/sd-v1-5-random.yaml --carry bench/.carry --variants vae_decoder-untuned --out $OUT
    python3 bench/gpu_bench.py merge-chromium chromium.json bench/results   # chromium_bench.py's row into gpu-bench.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import profile_tables  # noqa: E402  (bench/, beside this file)
from profile_cuda import PROFILE_RUNS  # noqa: E402
from websd.config import COMPONENTS, Config, load_config  # noqa: E402

RUNS, WARMUP = 20, 3
WARMUP_S = 1.0  # as webgpu_node.mjs's WARMUP_MS
STEPS, GUIDANCE, SCHEDULER = 20, 7.5, "dpm-solver"
PROMPT, NEGATIVE_PROMPT = "a photo of an astronaut riding a horse on mars", ""
TORCH_MODES = ("fp32-no-tf32", "fp32-tf32", "fp16")
ROBUSTNESS = {"default": [], "disable_robustness": ["enable-dawn-features=disable_robustness"]}
PROFILED_WEBGPU = "default"  # the WebGPU row that also profiles its kernels
WORK = Path("/tmp/websd-bench")  # the model, requests, results and images of each engine


def median_ms(call, sync, runs: int = RUNS, warmup: int = WARMUP, warmup_s: float = WARMUP_S) -> dict:
    """Median of `runs` synced calls after `warmup` untimed ones, and at least `warmup_s` of them."""
    started, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - started < warmup_s:
        call()
        sync()
        done += 1
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(samples), 3), "min_ms": round(min(samples), 3), "max_ms": round(max(samples), 3)}


class PeakMemory:
    """The card's peak used memory while a child process runs, above what was used before it
    started (NVML; one engine runs at a time)."""

    def __enter__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.baseline = self.peak = self.used()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.used())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.gib = round((self.peak - self.baseline) / 2**30, 2)


def component_of(variant: str) -> str:
    """The component a variant is a build of: its name is <component>-<name>."""
    component, dash, name = variant.partition("-")
    if component not in COMPONENTS or not dash or not name:
        raise ValueError(f"{variant!r}: a variant is named <component>-<name>, the component one of {', '.join(COMPONENTS)} "
                         "(e.g. unet-untuned, vae_decoder-tile-128x64-vec4x4-k16)")
    return component


def variants_of(row: dict) -> dict:
    """A row's variants, {variant: {component, median_ms, ...}}. A gpu-bench.json written before
    variants of any component (its rows' `unet_variants`: {name: timing}) held UNet builds only."""
    unet_only = {f"unet-{name}": {"component": "unet", **timing} for name, timing in row.get("unet_variants", {}).items()}
    return {**unet_only, **row.get("variants", {})}


def run_logged(command: list[str]) -> None:
    """Run a command, its output passed through; on failure raise with the output's last lines
    (the exact error goes into the results)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in process.stdout:
        print(line, end="", flush=True)
        tail = [*tail, line.rstrip()][-12:]
    if process.wait() != 0:
        raise RuntimeError(f"{Path(command[1]).name} exited with {process.returncode}: " + " | ".join(tail))


# --- the shared inputs: model, weights in each build's order, the prompt's ids ----------------


def prepare(config: Config, bundle: Path, work: Path, shard_cap_mb: int = 512, encode_format: str = "raw") -> dict:
    """The random-weight model from the config's seed (as make_model builds it), each
    component's weights written into the WebGPU bundle as the tensor cache its build takes (the
    weights its cache's `param_names` names, in that order; the CUDA build takes the same), the
    prompt's ids and each component's functions (the bundle's manifest). The page's benchmark
    (chromium_bench.py) shards them as the config's shard_params does."""
    from stages.make_model import make_random_model
    from websd import relax_io
    from websd.components import load_component
    from websd.tokenizer import token_ids
    from transformers import CLIPTokenizer

    model = work / "model"
    if not model.exists():
        started = time.perf_counter()
        make_random_model(config.architecture_path, config.model["seed"], model)
        print(f"prepare: random weights from seed {config.model['seed']} in {time.perf_counter() - started:.0f} s", flush=True)
    for name in COMPONENTS:
        cache = bundle / "params" / name
        weights = {n: p.numpy() for n, p in load_component(name, model).named_parameters()}
        selected = relax_io.select_weights(weights, relax_io.tensor_cache_param_names(cache))
        relax_io.save_tensor_cache(name, selected, cache, shard_cap_mb=shard_cap_mb, encode_format=encode_format)
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {
        "model": str(model),
        "prompt_ids": token_ids(CLIPTokenizer.from_pretrained(model / "tokenizer"), PROMPT).tolist(),
        "functions": {name: manifest["components"][name]["functions"] for name in COMPONENTS},
        "memory_plan_mib": {
            name: {"weights": round(c["weight_bytes"] / 2**20, 1), "activations": {f: round(b / 2**20, 1) for f, b in c["activation_bytes"].items()}}
            for name, c in manifest["components"].items()
        },
        "seed": config.model["seed"],
        "height": config.height,
        "width": config.width,
    }


# --- engines: each runs in a child process (python3 gpu_bench.py <engine> ...) ----------------


def run_torch(mode: str, inputs: dict) -> dict:
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "fp32-tf32"
    dtype = torch.float16 if mode == "fp16" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(inputs["model"], torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    unet, decoder = inputs["functions"]["unet"]["main"], inputs["functions"]["vae_decoder"]["main"]
    gen = torch.Generator("cuda").manual_seed(1)
    rand = lambda spec: torch.randn(spec["shape"], generator=gen, device="cuda", dtype=dtype)  # noqa: E731
    ids = torch.tensor(inputs["prompt_ids"], device="cuda")
    latents, embeddings = rand(unet["inputs"][0]), rand(unet["inputs"][2])
    timestep = torch.tensor([500.0], device="cuda")
    decode_in = rand(decoder["inputs"][0])
    sync = torch.cuda.synchronize
    result = {"torch": torch.__version__, "dtype": str(dtype)}
    with torch.no_grad():
        result["text_encoder"] = median_ms(lambda: pipe.text_encoder(ids), sync)
        result["unet"] = median_ms(lambda: pipe.unet(latents, timestep, encoder_hidden_states=embeddings), sync)
        result["vae_decoder"] = median_ms(lambda: pipe.vae.decode(decode_in / pipe.vae.config.scaling_factor), sync)

    def generate():
        generator = torch.Generator("cpu").manual_seed(inputs["seed"])
        return pipe(PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=generator, output_type="np").images[0]

    result["generation"] = median_ms(generate, sync, runs=1, warmup=1)
    image = (generate() * 255).round().astype(np.uint8)  # as diffusers' image processor rounds
    result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if mode == "fp32-no-tf32":
        result["fp32_peak_tflops"] = fp32_matmul_tflops()
    return result, image


def fp32_matmul_tflops(n: int = 8192) -> float:
    """The card's fp32 rate without tensor cores: a large matmul through cuBLAS, TF32 off."""
    import torch

    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    timing = median_ms(lambda: a @ b, torch.cuda.synchronize, runs=10, warmup=2)
    return round(2 * n**3 / (timing["median_ms"] / 1000) / 1e12, 1)


def run_cuda(libraries: dict, variants: dict, params: Path, inputs: dict, cuda_include: str, profile: bool) -> dict:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from profile_cuda import CudaClock, profile_build, signature_inputs
    from websd.generate import Generator
    from websd.runtime import Component, release_activations

    enable_cuda(cuda_include)
    started = time.perf_counter()
    components = {name: Component(name, Path(libraries[name]), params / name, "cuda") for name in COMPONENTS}
    result = {"load_s": round(time.perf_counter() - started, 1)}
    rng = np.random.default_rng(1)

    def timing(vm, component, name) -> dict:
        """`main`, its inputs on the GPU (profile_cuda.signature_inputs)."""
        args = [tvm.runtime.tensor(x, component.device) for x in signature_inputs(inputs["functions"][name]["main"], rng, inputs["prompt_ids"])]
        main = vm["main"]
        timed = median_ms(lambda: main(*args, *component.weights), component.device.sync)
        release_activations()  # as a generation does between its parts: the peak is a generation's
        return timed

    for name in COMPONENTS:
        result[name] = timing(components[name].vm, components[name], name)
    generator = Generator(Path(inputs["model"]), inputs["height"], inputs["width"], components)
    run = lambda: generator(PROMPT, NEGATIVE_PROMPT, inputs["seed"], STEPS, SCHEDULER, GUIDANCE)  # noqa: E731
    result["generation"] = median_ms(run, lambda: None, runs=1, warmup=1)
    image, _ = run()
    variant_vms = {}  # variant: (its component, its VM on the component's device; it takes the component's weights)
    for variant, path in variants.items():
        name = component_of(variant)
        variant_vms[variant] = (name, VirtualMachine(tvm.runtime.load_module(path), components[name].device))
    result["variants"] = {variant: {"component": name, **timing(vm, components[name], name)} for variant, (name, vm) in variant_vms.items()}
    if profile:  # a profile set (bench/profile_tables.py) of every build, with the timings' weights
        clock = CudaClock()
        builds = {name: (name, c.vm) for name, c in components.items()}  # build: (component, its VM)
        builds.update(variant_vms)
        result["profile"] = {
            build: profile_build(build, vm, inputs["functions"][name], components[name].weights, components[name].device, clock,
                                 inputs["prompt_ids"])
            for build, (name, vm) in builds.items()
        }
    return result, image


def run_webgpu(robustness: str, node: Path, node_dir: Path, bundle: Path, variants: dict, inputs: dict, work: Path,
               profile: bool, backend: str = "vulkan", adapter_options: dict | None = None) -> dict:
    """The WebGPU bundle in Node: bench/webgpu_node.mjs with a spec; with `profile`, its kernels
    too. (Without a GPU, Dawn runs on backend "opengl" with adapter_options {"featureLevel":
    "compatibility"}.)"""
    spec = {
        "bundle": str(bundle),
        "webgpu_package": str(node_dir / "webgpu"),
        "dawn_options": [f"backend={backend}", *ROBUSTNESS[robustness]],
        "adapter_options": adapter_options or {},
        "generation": {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": inputs["seed"], "steps": STEPS,
                       "scheduler": SCHEDULER, "guidance": GUIDANCE},
        "runs": RUNS, "warmup": WARMUP, "generation_runs": 1,
        "variants": {variant: {"component": component_of(variant), "wasm": path} for variant, path in variants.items()},
        "out": str(work / f"webgpu-{robustness}.json"), "image_out": str(work / f"webgpu-{robustness}.u8"),
        **({"profile": {"runs": PROFILE_RUNS}} if profile else {}),
    }
    spec_file = work / f"webgpu-{robustness}.spec.json"
    spec_file.write_text(json.dumps(spec))
    run_logged([str(node), str(ROOT / "bench" / "webgpu_node.mjs"), str(spec_file)])
    raw = json.loads(Path(spec["out"]).read_text())
    image = np.fromfile(spec["image_out"], np.uint8).reshape(raw["generation"]["image"]["height"], raw["generation"]["image"]["width"], 3)
    return webgpu_row(raw, profile), image


def webgpu_row(raw: dict, profile: bool) -> dict:
    """The WebGPU row from webgpu_node.mjs's result: each component's and variant's `main` (the
    UNet's: batch 2), the generation, the adapter and limits; with `profile`, the profile set."""
    row = {name: timing_of(raw["timings"][name]["main"]) for name in COMPONENTS}
    row["generation"] = {"median_ms": raw["generation"].get("median_ms", raw["generation"]["untimed_ms"])}
    row["variants"] = {v: {"component": r["component"], **timing_of(r["timings"]["main"])} for v, r in raw["variants"].items()}
    row.update(adapter=raw["adapter_info"], node=raw["node"], webgpu_package=raw["webgpu_version"], load=raw["load"],
               required_limits=raw["required_limits"], requested_limits=raw["requested_limits"])
    if profile:
        row["profile"] = webgpu_profiles(raw)
    return row


def webgpu_profiles(raw: dict) -> dict:
    """webgpu_node.mjs's profiles as a profile set (bench/profile_tables.py), its builds named
    as the CUDA row's: each component, and each variant by its name (<component>-<name>)."""
    return {**raw["profile"], **{variant: r["profile"] for variant, r in raw["variants"].items()}}


def timing_of(raw: dict) -> dict:
    return {k: raw[k] for k in ("median_ms", "min_ms", "max_ms") if k in raw}


def enable_cuda(cuda_include: str) -> None:
    """TVM without its compiler library (too big to carry) runs runtime-only: load its CUDA
    runtime, and give it the compile callback it calls at load (TVM 0.27 keeps CUDA source in
    the library). This one calls NVRTC from the CUDA libraries torch ships."""
    import ctypes
    import glob

    import torch
    import tvm
    import tvm_ffi

    ctypes.CDLL(str(Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    nvidia = Path(torch.__file__).parent.parent / "nvidia"
    nvrtc = ctypes.CDLL(sorted(glob.glob(str(nvidia / "**" / "libnvrtc.so*"), recursive=True))[0])
    major, minor = torch.cuda.get_device_capability()
    # The generated code includes libcu++ (<cuda/std/...>): the toolkit's cccl headers, carried.
    options = [f"--gpu-architecture=sm_{major}{minor}", "-default-device", "--device-int128", f"-I{cuda_include}"]

    def check(status: int, program=None) -> None:
        if status == 0:
            return
        log = ""
        if program is not None:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = buffer.value.decode()[-3000:]
        raise RuntimeError(f"NVRTC error {status}: {log}")

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_cuda(code: str, *_) -> bytes:
        # NVRTC has no <cuda.h> (host-only) and no INFINITY macro.
        code = "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n" + "\n".join(
            line for line in code.splitlines() if line.strip() != "#include <cuda.h>"
        )
        program = ctypes.c_void_p()
        check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), code.encode(), b"kernel.cu", 0, None, None))
        encoded = [o.encode() for o in options]
        check(nvrtc.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded)), program)
        size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetCUBIN(program, cubin))
        return bytes(cubin.raw)


# --- the run: every engine in turn, then the report ------------------------------------------

GFLOP_PER_STEP = 1606.5  # batch-2 SD 1.5 UNet forward at 64x64 latents (../shared FINDINGS.md)
MEMORY_TARGET_GIB = 5.0  # issue 9: peak GPU memory of a whole SD 1.5 fp32 generation, weights 3.97 GiB


def child(engine: str, args: dict, work: Path) -> tuple[dict, np.ndarray]:
    """Run one engine in a process of its own (its GPU memory is its own), under PeakMemory."""
    request = work / f"{engine}.request.json"
    request.write_text(json.dumps(args))
    with PeakMemory() as memory:
        run_logged([sys.executable, __file__, "engine", engine, str(request)])
    result = json.loads((work / f"{engine}.result.json").read_text())
    result["peak_gpu_memory_gib"] = memory.gib
    return result, np.load(work / f"{engine}.image.npy")


def engine_main(engine: str, request: Path) -> None:
    args = json.loads(request.read_text())
    if engine.startswith("pytorch-"):
        result, image = run_torch(engine.removeprefix("pytorch-"), args["inputs"])
    else:
        result, image = run_cuda(args["libraries"], args["variants"], Path(args["params"]), args["inputs"], args["cuda_include"],
                                 args["profile"])
    (request.parent / f"{engine}.result.json").write_text(json.dumps(result))
    np.save(request.parent / f"{engine}.image.npy", image)


def run_all(args) -> dict:
    config = load_config(args.config)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    carry = args.carry
    missing = [v for v in args.variants if not (carry / "cuda" / f"{v}.so").is_file()]
    if missing:  # before the minutes of making the weights
        sys.exit(f"gpu_bench: no {', '.join(f'cuda/{v}.so' for v in missing)} in {carry} (bench/pack_gpu.sh variant, bench/matmul_tiles.py)")
    bundle = carry / "dist"  # the WebGPU bundle; its params/ get the weights, which the CUDA build shares
    inputs = prepare(config, bundle, work)
    rows, images, errors = {}, {}, {}

    def attempt(name, run, profiled: bool = False):
        """`run(profile)` gives the row; with `profiled`, it profiles too, and if that fails,
        the row runs again without its profile (the error is kept under "<name> profile")."""
        try:
            rows[name], images[name] = run(profiled)
            print(f"gpu_bench: {name}: UNet step {rows[name]['unet']['median_ms']} ms", flush=True)
        except Exception as error:  # a row that cannot run says why, and the others still run
            failed = f"{name} profile" if profiled else name
            errors[failed] = f"{type(error).__name__}: {error}"
            print(f"gpu_bench: {failed} failed: {errors[failed]}", flush=True)
            if profiled:
                attempt(name, run)
        # What is done so far, in case the call runs out of time.
        (args.out / "gpu-bench.partial.json").write_text(json.dumps({"rows": rows, "errors": errors}, indent=1))

    for mode in args.pytorch:
        attempt(f"pytorch-{mode}", lambda _, mode=mode: child(f"pytorch-{mode}", {"inputs": inputs}, work))
    libraries = {name: str(carry / "cuda" / f"{name}.so") for name in COMPONENTS}
    variants = {v: str(carry / "cuda" / f"{v}.so") for v in args.variants}
    attempt("tvm-cuda", lambda profile: child("tvm-cuda", {"inputs": inputs, "libraries": libraries, "variants": variants,
                                                           "params": str(bundle / "params"), "cuda_include": args.cuda_include,
                                                           "profile": profile}, work), profiled=True)
    # Variants built for CUDA only have no .wasm; they run in the profiled row alone.
    wasm_variants = {v: str(path) for v in args.variants if (path := carry / "webgpu" / f"{v}.wasm").is_file()}
    for robustness in args.robustness:

        def webgpu(profile, robustness=robustness):
            variants = wasm_variants if robustness == PROFILED_WEBGPU else {}
            with PeakMemory() as memory:
                result, image = run_webgpu(robustness, args.node, args.node_dir, bundle, variants, inputs, work, profile)
            result["peak_gpu_memory_gib"] = memory.gib
            return result, image

        attempt(f"webgpu-{robustness}", webgpu, profiled=robustness == PROFILED_WEBGPU)
    # The profiles go to files of their own (profile_tables.py), not into the rows.
    profiles = {side: rows[name].pop("profile") for side, name in (("cuda", "tvm-cuda"), ("webgpu", f"webgpu-{PROFILED_WEBGPU}"))
                if "profile" in rows.get(name, {})}
    return report(rows, images, errors, inputs), profiles


def report(rows: dict, images: dict, errors: dict, inputs: dict) -> dict:
    import torch

    reference = images.get("pytorch-fp32-no-tf32")
    for name, image in images.items():
        if reference is not None:
            rows[name]["max_pixel_diff_vs_pytorch_fp32"] = int(np.abs(image.astype(int) - reference.astype(int)).max())
    peak = rows.get("pytorch-fp32-no-tf32", {}).get("fp32_peak_tflops")
    for row in rows.values():
        row["unet_tflops"] = round(GFLOP_PER_STEP / row["unet"]["median_ms"], 1)
        if peak:
            row["unet_fraction_of_fp32_peak"] = round(row["unet_tflops"] / peak, 3)
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    step = lambda name: rows[name]["unet"]["median_ms"] if name in rows else None  # noqa: E731
    ratios = {}
    for robustness in ROBUSTNESS:
        webgpu = step(f"webgpu-{robustness}")
        ratios[f"webgpu-{robustness} / pytorch-fp32-no-tf32"] = profile_tables.ratio(webgpu, step("pytorch-fp32-no-tf32"))
        ratios[f"webgpu-{robustness} / tvm-cuda"] = profile_tables.ratio(webgpu, step("tvm-cuda"))
    ratios["tvm-cuda / pytorch-fp32-no-tf32"] = profile_tables.ratio(step("tvm-cuda"), step("pytorch-fp32-no-tf32"))
    return {
        "card": pynvml.nvmlDeviceGetName(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "setup": {"image": [inputs["height"], inputs["width"]], "unet_batch": 2, "steps": STEPS, "scheduler": SCHEDULER,
                  "guidance": GUIDANCE, "seed": inputs["seed"], "prompt": PROMPT, "runs": RUNS, "warmup": WARMUP,
                  "warmup_s": WARMUP_S, "gflop_per_unet_step": GFLOP_PER_STEP},
        "fp32_peak_tflops": peak,
        "memory_target_gib": MEMORY_TARGET_GIB,
        # The bundle's static memory plan: weights and activations of each component's functions.
        "memory_plan_mib": inputs["memory_plan_mib"],
        "rows": rows,
        "unet_step_ratios": ratios,
        "errors": errors,
    }


ROW_LABELS = {
    "webgpu-default": "our WebGPU build (Node + Dawn, Vulkan)",
    "webgpu-disable_robustness": "our WebGPU build, Dawn `disable_robustness`",
    "tvm-cuda": "our native CUDA build",
    "pytorch-fp32-no-tf32": "PyTorch fp32, TF32 off",
    "pytorch-fp32-tf32": "PyTorch fp32, TF32 on",
    "pytorch-fp16": "PyTorch fp16",
}


def markdown(results: dict) -> str:
    rows, peak = results["rows"], results["fp32_peak_tflops"]
    warmup_s = results["setup"].get("warmup_s")  # (runs before 2026-11-28 11:45 UTC warmed up for 3 calls only)
    warmup = f"at least {WARMUP} warm-up calls and {warmup_s:g} s of them" if warmup_s else f"{WARMUP} warm-up calls"
    lines = [
        f"SD 1.5 (random weights), 512x512, UNet at batch 2, {STEPS}-step {SCHEDULER}; {results['card']}, driver "
        f"{results['driver']}, {results['date']}. Median of {RUNS} calls after {warmup} (generation: "
        f"one after one warm-up); measured fp32 peak without tensor cores {peak} TFLOP/s, so the UNet step's floor is "
        f"{GFLOP_PER_STEP / peak:.1f} ms." if peak else "",
        "",
        "| | UNet step (ms) | TFLOP/s | of fp32 peak | text encoder (ms) | VAE decode (ms) | 20-step generation (ms) | peak GPU memory (GiB) | max pixel diff vs PyTorch fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in ROW_LABELS.items():
        if name not in rows:
            if name in results["errors"]:  # else the row was not asked for
                lines.append(f"| {label} | did not run: {results['errors'][name]} |||||||")
            continue
        r = rows[name]
        lines.append(
            f"| {label} | {r['unet']['median_ms']:.1f} | {r['unet_tflops']} | {r.get('unet_fraction_of_fp32_peak', 0):.0%} "
            f"| {r['text_encoder']['median_ms']:.2f} | {r['vae_decoder']['median_ms']:.1f} | {r['generation']['median_ms']:.0f} "
            f"| {r['peak_gpu_memory_gib']} | {r.get('max_pixel_diff_vs_pytorch_fp32', '')} |"
        )
    if "chromium" in rows:
        lines += chromium_table(rows["chromium"])
    lines += ["", f"Peak GPU memory of the whole generation (NVML, the process's and the card's), against the "
              f"{results['memory_target_gib']} GiB target:", ""]
    for name, label in ROW_LABELS.items():
        if name in rows and "peak_gpu_memory_gib" in rows[name]:
            peak_gib = rows[name]["peak_gpu_memory_gib"]
            # Variants load after the generation (in WebGPU each on a device of its own), while
            # the build's own weights are still held.
            variants = " (with the variants loaded after it)" if variants_of(rows[name]) else ""
            lines.append(f"- {label}: {peak_gib} GiB{variants}, target {'met' if peak_gib <= results['memory_target_gib'] else 'not met'}")
    lines += ["", "The static memory plan (MiB): weights, and activations per function:", ""]
    for component, plan in results["memory_plan_mib"].items():
        lines.append(f"- {component}: weights {plan['weights']}, activations " + ", ".join(f"{f} {mib}" for f, mib in plan["activations"].items()))
    webgpu_rows = [name for name in ROW_LABELS if name.startswith("webgpu") and name in rows]
    if webgpu_rows:
        lines += ["", "WebGPU limits the build requires (manifest) and that the bench requested of the adapter:", ""]
        lines += [f"- {ROW_LABELS[name]}: required {rows[name]['required_limits']}; requested {rows[name]['requested_limits'] or 'nothing (the defaults)'}"
                  for name in webgpu_rows]
    lines += ["", "UNet step ratios (lower is faster for the first):", ""]
    lines += [f"- {pair}: {ratio}" for pair, ratio in results["unet_step_ratios"].items() if ratio is not None]
    lines += variants_table(rows)
    if results.get("profile_tables"):
        lines += ["", f"Where the time goes, kernel by kernel, {ROW_LABELS['tvm-cuda']} beside {ROW_LABELS[f'webgpu-{PROFILED_WEBGPU}']}: "
                  + ", ".join(results["profile_tables"])]
    lines += [f"- {name} failed (the row ran again without it): {error}" for name, error in results["errors"].items() if name.endswith(" profile")]
    return "\n".join(lines) + "\n"


def variants_table(rows: dict) -> list[str]:
    """Other builds of each component (`main`, ms), each below the component's own build, in
    every row that ran them ("-": not in that row, e.g. a variant built for CUDA only)."""
    ran = {name: variants_of(rows[name]) for name in ROW_LABELS if name in rows}
    engines = [name for name, variants in ran.items() if variants]
    if not engines:
        return []
    variants = {v: t["component"] for name in engines for v, t in ran[name].items()}
    digits = lambda component: 2 if component == "text_encoder" else 1  # noqa: E731  (as the table above)
    lines = ["", "Other builds of a component, same run, each below the component's own build (the table above): `main`, ms "
             "(the UNet's: the step at batch 2):", "", "| build | " + " | ".join(ROW_LABELS[name] for name in engines) + " |",
             "|---|" + "---:|" * len(engines)]
    for component in (c for c in COMPONENTS if c in variants.values()):
        lines.append(f"| {component} (the build above) | " + " | ".join(f"{rows[name][component]['median_ms']:.{digits(component)}f}"
                                                                          for name in engines) + " |")
        for variant in (v for v, c in variants.items() if c == component):
            cells = [ran[name].get(variant) for name in engines]
            lines.append(f"| {variant} | " + " | ".join(f"{t['median_ms']:.{digits(component)}f}" if t else "-" for t in cells) + " |")
    return lines


def chromium_table(row: dict) -> list[str]:
    """The page in headless Chromium (chromium_bench.py's result, merged in by merge-chromium)."""
    cell = lambda key, spec: format(row[key], spec) if key in row else ""  # noqa: E731  (a step that failed has none)
    info = row.get("adapter") or {}
    adapter = " ".join(info[k] for k in ("vendor", "architecture") if info.get(k)) or "unknown"
    lines = [
        "", f"The page itself (`dist/index.html`) in {row.get('chromium', 'headless Chromium')}, WebGPU adapter {adapter} "
        f"({row['card'] or 'no GPU'}; {row['date']}): the first load from 127.0.0.1 in a fresh profile and a reload from the "
        f"Cache API ({row.get('reload_shard_requests', '?')} shards fetched), each from navigation until the page is ready to "
        f"generate; generation {len(row.get('generations', []))} in a row, from clicking Generate until the image is drawn.",
        "",
        f"| | first load (s) | reload (s) | {STEPS}-step generation (ms) | max pixel diff vs PyTorch fp32 |",
        "|---|---:|---:|---:|---:|",
        f"| the page in headless Chromium | {cell('first_load_s', '.1f')} | {cell('reload_s', '.1f')} | {cell('generation_ms', '.0f')} "
        f"| {row.get('max_pixel_diff_vs_pytorch_fp32', '')} |",
    ]
    return lines + [f"- {step} failed: {error}" for step, error in row["errors"].items()]


def merge_chromium(chromium: Path, results_dir: Path) -> None:
    """chromium_bench.py's result as the `chromium` row of gpu-bench.{json,md} in `results_dir`."""
    path = results_dir / "gpu-bench.json"
    results = json.loads(path.read_text())
    results["rows"]["chromium"] = json.loads(chromium.read_text())
    path.write_text(json.dumps(results, indent=1) + "\n")
    (results_dir / "gpu-bench.md").write_text(markdown(results))


CHART_AXES = {  # component: what its panel of the chart shows
    "text_encoder": "text encoder, one prompt (ms, median)",
    "unet": "SD 1.5 UNet step, batch 2, 512x512 (ms, median)",
    "vae_decoder": "VAE decode, 512x512 (ms, median)",
}


def chart(results: dict, path: Path) -> None:
    """The UNet step of every row and, for each component with variants, a panel of its own: the
    component's time in every row, then its variants'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    engines = [n for n in ROW_LABELS if n in rows]
    bars = {}  # component: [(label, ms)]
    for component in COMPONENTS:
        variants = [(f"{ROW_LABELS[n]}, {v}", t["median_ms"]) for n in engines for v, t in variants_of(rows[n]).items()
                    if t["component"] == component]
        if component == "unet" or variants:
            bars[component] = [(ROW_LABELS[n], rows[n][component]["median_ms"]) for n in engines] + variants
    heights = [0.5 * len(b) + 1.5 for b in bars.values()]
    fig, axes = plt.subplots(len(bars), figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (component, panel) in zip(axes[:, 0], bars.items()):
        ax.barh([b[0] for b in panel][::-1], [b[1] for b in panel][::-1], color="#4C72B0")
        for y, (_, ms) in enumerate(panel[::-1]):
            ax.text(ms, y, f" {ms:.1f}", va="center")
        if component == "unet" and results["fp32_peak_tflops"]:
            ax.axvline(GFLOP_PER_STEP / results["fp32_peak_tflops"], color="gray", linestyle="--", label="fp32 floor (no tensor cores)")
            ax.legend(loc="lower right")
        ax.set_xlabel(CHART_AXES[component])
    axes[0, 0].set_title(f"{results['card']}, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def variant_name(variant: str) -> str:
    """argparse's check of a variant's name."""
    try:
        component_of(variant)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return variant


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_main(sys.argv[2], Path(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "merge-chromium":  # merge-chromium chromium.json RESULTS_DIR
        merge_chromium(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--carry", type=Path, required=True, help="the unpacked builds: cuda/, dist/ and webgpu/ (bench/gpu_bench.sh)")
    parser.add_argument("--node", type=Path, required=True, help="the node binary")
    parser.add_argument("--node-dir", type=Path, required=True, help="holds webgpu/, the npm package (bench/unpack_node.sh)")
    parser.add_argument("--cuda-include", required=True, help="a folder holding cuda/std/ (libcu++)")
    parser.add_argument("--variants", nargs="*", default=[], type=variant_name,
                        help="other builds of a component in the carry, each <component>-<name>: cuda/<variant>.so, webgpu/<variant>.wasm")
    parser.add_argument("--robustness", nargs="+", choices=ROBUSTNESS, default=list(ROBUSTNESS),
                        help="the WebGPU rows: Dawn's robustness on (default) and off (disable_robustness)")
    parser.add_argument("--pytorch", nargs="+", choices=TORCH_MODES, default=list(TORCH_MODES),
                        help="the PyTorch rows (fp32-no-tf32 is the images' reference)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, profiles = run_all(args)
    for side, profile in profiles.items():
        (args.out / f"profile-{side}.json").write_text(json.dumps(profile, indent=1) + "\n")
    results["profile_tables"] = [path.name for path in profile_tables.write_tables(args.out, **profiles) if path.suffix == ".md"]
    (args.out / "gpu-bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gpu-bench.md").write_text(markdown(results))
    chart(results, args.out / "gpu-bench.png")
    (args.out / "gpu-bench.partial.json").unlink(missing_ok=True)  # only for a run cut short
    print(markdown(results))


if __name__ == "__main__":
    main()
