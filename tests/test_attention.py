"""Fused attention (websd/passes/attention.py, websd/kernels/attention.py and row_attention.py)
against PyTorch's scaled_dot_product_attention: the plain form on llvm, both GPU kernels (tiles,
and whole rows where a row fits) in headless Chromium's WebGPU (one wasm for every case: one
link), the CUDA codegen of the SD 1.5 shapes, and the pass on the default model's three
components."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from browser import run_functions
from conftest import DEFAULT_CONFIG, doit, layout_of, write_config
from websd import relax_io
from websd.components import load_component
from websd.paths import Layout, model_folder
from websd.kernels.attention import (ATTR, WORKGROUP_BYTES, WORKGROUP_THREADS, AttentionSpec, Operand, TileConfig, flash_attention,
                                     gpu_kernel, plain_attention, schedule_attention, sd15_specs, tile_config)
from websd.kernels.row_attention import ROWS, RowConfig, row_attention
from websd.targets import kernel_source, tvm_target

# (groups, q_len, kv_len, head_dim, causal, heads of the (batch, tokens, heads * head_dim) layout
# or 0 for (groups, tokens, head_dim)[, projections: q, k and v read as the 1st, 2nd and 3rd
# block of heads * head_dim columns of (batch, tokens, 3 * heads * head_dim) tensors]); small
# enough for the CPU, odd lengths on purpose.
CASES = [
    (1, 1, 1, 8, False, 0),
    (2, 7, 7, 8, True, 0),
    (4, 77, 77, 64, True, 4),  # CLIP-like, 2 x 4 heads
    (4, 77, 77, 64, True, 4, 3),  # the same, projected in one product
    (4, 100, 77, 40, False, 2),  # cross-attention
    (2, 333, 333, 40, False, 2),
    (2, 333, 333, 40, False, 2, 3),
    (2, 100, 100, 80, False, 1),
    (4, 33, 77, 160, False, 4),
    (1, 100, 100, 512, False, 1),  # VAE-like
    (3, 45, 45, 5, True, 3),  # no table entry: the generic tiles
    (3, 45, 45, 5, True, 3, 3),
]


def case_id(case) -> str:
    g, n, m, d, causal, heads, *projections = case
    return f"g{g}_q{n}_kv{m}_d{d}{'_causal' if causal else ''}{f'_h{heads}' if heads else ''}{f'_cols{projections[0]}' if projections else ''}"


def make_spec(groups, q_len, kv_len, head_dim, causal, heads, projections=0) -> AttentionSpec:
    def operand(tokens: int, block: int | None) -> Operand:
        if heads and projections and block is not None:
            return Operand((groups // heads, tokens, projections * heads * head_dim), heads, projections * heads * head_dim, block * heads * head_dim)
        if heads:
            return Operand((groups // heads, tokens, heads * head_dim), heads)
        return Operand((groups, tokens, head_dim))

    return AttentionSpec(groups, q_len, kv_len, head_dim, causal, head_dim**-0.5, operand(q_len, 0), operand(kv_len, 1), operand(kv_len, 2),
                         operand(q_len, None))


def inputs(spec: AttentionSpec, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(op.shape, dtype=np.float32) for op in (spec.q, spec.k, spec.v)]


def reference(spec: AttentionSpec, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    def heads_first(x: np.ndarray, op: Operand, tokens: int) -> torch.Tensor:
        t = torch.from_numpy(x).double()
        if op.row:  # its columns
            t = t[..., op.start:op.start + op.heads * spec.head_dim]
        if op.heads:
            t = t.reshape(spec.groups // op.heads, tokens, op.heads, spec.head_dim).transpose(1, 2)
        return t.reshape(spec.groups, tokens, spec.head_dim)

    out = torch.nn.functional.scaled_dot_product_attention(
        heads_first(q, spec.q, spec.q_len), heads_first(k, spec.k, spec.kv_len), heads_first(v, spec.v, spec.kv_len),
        is_causal=spec.causal, scale=spec.scale,
    )
    if spec.out.heads:
        out = out.reshape(spec.groups // spec.out.heads, spec.out.heads, spec.q_len, spec.head_dim).transpose(1, 2)
    return out.reshape(spec.out.shape).float().numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    error = np.abs(got - want).max()
    assert error <= 1e-5 * np.abs(want).max(), f"max abs error {error:.3g}, max abs {np.abs(want).max():.3g}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_plain_form_on_llvm(case) -> None:
    spec = make_spec(*case)
    executable = tvm.compile(tvm.IRModule({"main": plain_attention(spec).with_attr("global_symbol", "main")}), "llvm")
    q, k, v = inputs(spec)
    out = tvm.runtime.tensor(np.zeros(spec.out.shape, np.float32))
    executable["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), tvm.runtime.tensor(v), out)
    assert_close(out.numpy(), reference(spec, q, k, v))


def kernel_module(kernels: dict[str, tuple[AttentionSpec, tvm.tirx.PrimFunc]]) -> tvm.IRModule:
    """A Relax function per name, each one call_tir of its kernel."""
    bb = relax.BlockBuilder()
    for name, (spec, kernel) in kernels.items():
        params = [relax.Var(n, relax.TensorType(op.shape, "float32")) for n, op in zip("qkv", (spec.q, spec.k, spec.v))]
        with bb.function(name, params):
            gv = bb.add_func(kernel, f"attention_{name}")
            out = bb.emit(relax.call_tir(gv, params, relax.TensorType(spec.out.shape, "float32")))
            bb.emit_func_output(out)
    return bb.get()


def each(specs: dict[str, AttentionSpec], kernel) -> dict:
    """kernel_module's input: every spec with `kernel(spec)`."""
    return {name: (spec, kernel(spec)) for name, spec in specs.items()}


def row_config(head_dim: int) -> RowConfig | None:
    """Whole rows for the cases whose rows fit: two per invocation where they fit, else one."""
    for config in (RowConfig(BQ=64, BK=16, TQ=2), RowConfig(BQ=32, BK=16, TQ=1)):
        try:
            config.check(head_dim)
            return config
        except ValueError:
            continue
    return None


FORMS = [("tiles", case) for case in CASES] + [("rows", case) for case in CASES if row_config(case[3])]


def form_id(form_case) -> str:
    return f"{form_case[0]}_{case_id(form_case[1])}"  # a WGSL identifier: no "-"


def form_kernel(name: str, spec: AttentionSpec):
    return flash_attention(spec) if name.startswith("tiles_") else row_attention(spec, row_config(spec.head_dim))


@pytest.fixture(scope="module")
def webgpu_outputs(tmp_path_factory, browser) -> dict:
    """Every case's kernels, compiled for webgpu into one wasm, run once in Chromium."""
    forms = {form_id(fc): fc for fc in FORMS}
    specs = {name: make_spec(*case) for name, (_, case) in forms.items()}
    executable = tvm.compile(kernel_module({name: (spec, form_kernel(name, spec)) for name, spec in specs.items()}), tvm_target("webgpu"))
    arrays = {name: inputs(spec) for name, spec in specs.items()}
    got = run_functions(browser, tmp_path_factory.mktemp("attention-webgpu"), {"kernels.wasm": executable},
                        {("kernels.wasm", name): arrays[name] for name in specs})
    return {name: (got["kernels.wasm", name].reshape(spec.out.shape), reference(spec, *arrays[name])) for name, spec in specs.items()}


@pytest.mark.parametrize("form_case", FORMS, ids=form_id)
def test_gpu_kernel_in_chromium_webgpu(webgpu_outputs, form_case) -> None:
    got, want = webgpu_outputs[form_id(form_case)]
    assert_close(got, want)


# --- the tile table: every head dim gets tiles within WebGPU's limits ------------------------


def test_every_head_dim_has_tiles() -> None:
    for head_dim in range(1, 1025):
        tile_config(head_dim).check(head_dim)


# --- the pass on small graphs written as the importer writes them ----------------------------


def importer_like(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, mask=None, return_probs: bool = False,
                  projected: bool = False):
    """diffusers' AttnProcessor as torch.export + the importer give it: q, k, v (batch, tokens,
    heads * head_dim) -> head split -> matmul(q, k^T) * scale [+ mask] -> softmax -> matmul v ->
    head merge. `projected`: q, k and v are the three blocks of columns of one (batch, tokens,
    3 * heads * head_dim) tensor, as websd/passes/concat_projections.py gives them."""
    from tvm import relax

    bb = relax.BlockBuilder()
    width = heads * head_dim
    if projected:
        params = [relax.Var("qkv", relax.TensorType((batch, q_len, 3 * width), "float32"))]
    else:
        params = [relax.Var(x, relax.TensorType((batch, t, width), "float32")) for x, t in (("q", q_len), ("k", kv_len), ("v", kv_len))]
    with bb.function("main", params):
        with bb.dataflow():
            if projected:
                projections = [bb.emit(relax.op.strided_slice(params[0], axes=[2], begin=[i * width], end=[(i + 1) * width])) for i in range(3)]
            else:
                projections = params

            def heads_first(x, tokens):
                x = bb.emit(relax.op.reshape(x, (batch, tokens, heads, head_dim)))
                x = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
                return bb.emit(relax.op.reshape(x, (batch * heads, tokens, head_dim)))

            q, k, v = (heads_first(x, t) for x, t in zip(projections, (q_len, kv_len, kv_len)))
            scores = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 2, 1]))))
            scores = bb.emit(relax.op.multiply(scores, relax.const(head_dim**-0.5, "float32")))
            if mask is not None:
                scores = bb.emit(relax.op.add(scores, relax.const(mask.astype(np.float32))))
            probs = bb.emit(relax.op.nn.softmax(scores, axis=-1))
            out = bb.emit(relax.op.matmul(probs, v))
            out = bb.emit(relax.op.reshape(out, (batch, heads, q_len, head_dim)))
            out = bb.emit(relax.op.permute_dims(out, [0, 2, 1, 3]))
            out = bb.emit(relax.op.reshape(out, (batch, q_len, heads * head_dim)))
            result = bb.emit_output(relax.Tuple([out, probs]) if return_probs else out)
        bb.emit_func_output(result)
    return bb.get()


def attention_specs(mod) -> list[AttentionSpec]:
    return [AttentionSpec.from_attr(f.attrs[ATTR]) for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and ATTR in f.attrs]


def run_llvm(mod, *args: np.ndarray):
    from stages.legalize import passes

    executable = tvm.compile(tvm.transform.Sequential(passes()[1:])(mod), "llvm")  # legalize without fusing again
    return relax.VirtualMachine(executable, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()


CAUSAL = np.triu(np.full((20, 20), np.finfo(np.float32).min), 1)[None]


@pytest.mark.parametrize(
    "shape, mask, causal",
    [((2, 4, 20, 20, 8), None, False), ((2, 4, 20, 77, 8), None, False), ((1, 3, 20, 20, 16), CAUSAL, True), ((1, 1, 20, 20, 5), np.zeros((1, 20, 20)), False)],
    ids=["self", "cross", "causal", "zero-mask"],
)
def test_pass_fuses_and_matches(shape, mask, causal) -> None:
    from websd.passes.attention import fuse_attention

    batch, heads, q_len, kv_len, head_dim = shape
    mod = importer_like(*shape, mask=mask)
    fused = fuse_attention(mod)
    (spec,) = attention_specs(fused)
    assert "softmax" not in fused["main"].script()
    assert (spec.groups, spec.q_len, spec.kv_len, spec.head_dim, spec.causal) == (batch * heads, q_len, kv_len, head_dim, causal)
    # the head split and merge are absorbed: the kernel reads and writes the (batch, tokens, heads * d) tensors
    assert {op.shape for op in (spec.q, spec.out)} == {(batch, q_len, heads * head_dim)}
    assert spec.k.shape == spec.v.shape == (batch, kv_len, heads * head_dim)
    assert "permute_dims" not in fused["main"].script()
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((batch, t, heads * head_dim), dtype=np.float32) for t in (q_len, kv_len, kv_len)]
    assert_close(run_llvm(fused, *args), run_llvm(mod, *args))


def test_pass_reads_projections_in_place() -> None:
    """q, k and v as columns of one product: the kernel reads each where it sits, no copies."""
    from websd.passes.attention import fuse_attention

    batch, heads, tokens, head_dim = 2, 4, 20, 8
    mod = importer_like(batch, heads, tokens, tokens, head_dim, projected=True)
    fused = fuse_attention(mod)
    (spec,) = attention_specs(fused)
    width = heads * head_dim
    for i, op in enumerate((spec.q, spec.k, spec.v)):
        assert op == Operand((batch, tokens, 3 * width), heads, 3 * width, i * width)
    assert "strided_slice" not in fused["main"].script()
    qkv = np.random.default_rng(0).standard_normal((batch, tokens, 3 * width), dtype=np.float32)
    assert_close(run_llvm(fused, qkv), run_llvm(mod, qkv))


@pytest.mark.parametrize("why", ["non-causal mask", "probabilities used elsewhere"])
def test_pass_leaves_other_patterns_alone(why) -> None:
    from websd.passes.attention import fuse_attention

    if why == "non-causal mask":
        mod = importer_like(1, 2, 20, 20, 8, mask=np.random.default_rng(0).standard_normal((1, 20, 20)))
    else:
        mod = importer_like(1, 2, 20, 20, 8, return_probs=True)
    fused = fuse_attention(mod)
    assert attention_specs(fused) == []
    assert "softmax" in fused["main"].script()


# --- the pass on the default model's three components ----------------------------------------


@pytest.fixture(scope="module")
def default_legalized() -> Layout:
    doit(f"config={DEFAULT_CONFIG}", "legalize")
    return layout_of(DEFAULT_CONFIG)


def attention_layers(component: str, model_dir: Path) -> int:
    """Attention modules of the PyTorch model that the exported graph runs."""
    module = load_component(component, model_dir).model
    if component == "vae_decoder":
        module = module.decoder  # the encoder's attention is not exported
    kinds = {"text_encoder": "CLIPAttention", "unet": "Attention", "vae_decoder": "Attention"}
    return sum(type(m).__name__ == kinds[component] for m in module.modules())


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_pass_finds_every_attention_of_the_default_model(default_legalized: Layout, component: str) -> None:
    mod = relax_io.load_module(default_legalized.legalized(component))
    kernels = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert not [gv.name_hint for gv in kernels if "softmax" in gv.name_hint]
    calls = [
        kernels[call.args[0]] for call in _calls(mod["main"])
        if call.op.name == "relax.call_tir" and call.args[0] in kernels and ATTR in kernels[call.args[0]].attrs
    ]
    expected = attention_layers(component, model_folder(default_legalized.model))
    assert expected > 0 and len(calls) == expected
    specs = [AttentionSpec.from_attr(f.attrs[ATTR]) for f in calls]
    assert all(spec.causal == (component == "text_encoder") for spec in specs)
    if component != "vae_decoder":  # multi-head: the head transposes are gone
        assert all(op.heads > 1 for spec in specs for op in (spec.q, spec.k, spec.v, spec.out))
        # keys and values (and self-attention's queries) are columns of one product with others
        # (websd/passes/concat_projections.py), read in place
        assert all(spec.k.row and spec.v.row for spec in specs)
        assert all(bool(spec.q.row) == (spec.q_len == spec.kv_len) for spec in specs)


def _calls(func) -> list:
    return [b.value for block in func.body.blocks for b in block.bindings if isinstance(b.value, relax.Call)]


def test_unet_allocates_no_scores_tensor(tmp_path: Path) -> None:
    """At 256x256 the tiny UNet's first attention has 1024 tokens: its scores would be a
    16 x 1024 x 1024 fp32 tensor (64 MiB); after the pass no allocation comes near it."""
    config = write_config(tmp_path / "unet256.yaml", {"components": ["unet"], "targets": ["llvm"], "image": {"height": 256, "width": 256},
                                                     "stages": {"tune": {"components": ["unet"]}}})
    doit(f"config={config}", "memory_plan")
    layout = layout_of(config)
    specs = attention_specs(relax_io.load_module(layout.legalized("unet")))
    scores = max(4 * s.groups * s.q_len * s.kv_len for s in specs)
    assert scores == 4 * 16 * 1024 * 1024
    report = json.loads(layout.memory_report("unet", "llvm").read_text())
    assert report["largest_bytes"] < scores // 8


# --- the GPU kernel builds for every SD 1.5 shape ---------------------------------------------


@pytest.fixture(scope="module")
def sd15() -> dict[str, AttentionSpec]:
    specs = sd15_specs(2)  # the text encoder and the VAE run at batch 1 either way
    specs.update({f"{name}_batch1": spec for name, spec in sd15_specs(1).items() if name.startswith("unet")})
    return specs


def test_sd15_kernels_are_valid_wgsl_within_default_limits(sd15) -> None:
    wgsl = kernel_source(tvm.compile(kernel_module(each(sd15, gpu_kernel)), tvm_target("webgpu")), "webgpu")
    kernels = wgsl.split("@compute")[1:]
    assert len(kernels) == len(sd15)
    for trap in ("i64", "f16", "i8", "inff", "2147483648i"):
        assert not re.search(rf"\b{trap}", wgsl), trap
    for size in re.findall(r"@workgroup_size\((\d+), (\d+), (\d+)\)", wgsl):
        assert math.prod(map(int, size)) <= WORKGROUP_THREADS
    for chunk in wgsl.split("@compute")[:-1]:  # each kernel's workgroup variables precede it
        words = {"f32": 1, "vec2<f32>": 2, "vec4<f32>": 4, "i32": 1}
        shared = re.findall(r"var<workgroup> \w+ : array<([\w<>]+), (\d+)>", chunk.rsplit("@group(0) @binding(0)", 1)[-1])
        assert shared and 4 * sum(words[t] * int(n) for t, n in shared) <= WORKGROUP_BYTES


@pytest.mark.parametrize("other", [TileConfig(BQ=32, BK=32, TQ=2, TK=4, DCS=40, TQO=4, BKV=16, THREADS=128), RowConfig(BQ=128, BK=16, TQ=1)],
                         ids=["tiles", "rows"])
def test_schedule_attention_takes_other_configs(other) -> None:
    """bench/matmul_tiles.py --attention builds a variant with another config for one head dim:
    schedule_attention puts it in for that head dim and keeps the tables' for the others."""
    specs = {name: sd15_specs(2)[name] for name in ("unet_self_4096", "unet_self_1024")}  # head dims 40, 80
    module = schedule_attention("webgpu", {40: other})(kernel_module(each(specs, plain_attention)))
    wgsl = kernel_source(tvm.compile(module, tvm_target("webgpu")), "webgpu")
    threads = {math.prod(map(int, size)) for size in re.findall(r"@workgroup_size\((\d+), (\d+), (\d+)\)", wgsl)}
    assert threads == {other.threads, (ROWS.get(80) or tile_config(80)).threads}


def test_inconsistent_attention_configs_are_named() -> None:
    """A config whose O grid does not fit its threads is reported, not a ZeroDivisionError; rows
    too long for an invocation's registers, or too many for the workgroup memory, are named."""
    with pytest.raises(ValueError, match="O grid: BQ/TQO does not divide the threads"):
        TileConfig(BQ=128, BK=32, TQ=8, TK=8, DCS=40, TQO=1, BKV=8, THREADS=64).check(40)
    with pytest.raises(ValueError, match="1024 floats of Q and O per invocation"):
        RowConfig(BQ=64, BK=16, TQ=1).check(512)
    with pytest.raises(ValueError, match="bytes of workgroup memory > 16384"):
        RowConfig(BQ=256, BK=32, TQ=4).check(8)


def test_sd15_kernels_build_for_cuda(sd15, tmp_path: Path) -> None:
    """TVM's CUDA codegen, then nvcc for sm_90 when it is installed: (almost) no register spills."""
    source = kernel_source(tvm.compile(kernel_module(each(sd15, gpu_kernel)), tvm_target("cuda")), "cuda")
    assert source.count("__global__") == 2 * len(sd15)  # declaration + definition
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: TVM's CUDA source was generated, not compiled")
    (tmp_path / "attention.cu").write_text(source)
    result = subprocess.run(
        ["nvcc", "-arch=sm_90", "-cubin", "--resource-usage", "-o", str(tmp_path / "attention.cubin"), str(tmp_path / "attention.cu")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    usage = result.stdout + result.stderr
    assert usage.count("Compiling entry function") == len(sd15)
    # At most one register's worth: head_dim 160's tiles spill 8 bytes and were still the fastest
    # measured (websd/kernels/attention.py's TILES).
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", usage)]
    assert len(spills) == len(sd15) and max(spills) <= 8, usage
