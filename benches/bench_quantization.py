"""Quantization filters: bytes on the wire per type for a synthetic 1B-parameter model, and the CPU kernels'
throughput against bitsandbytes' CPU functions.

    .venv/bin/python benches/bench_quantization.py [--scale 1] [--tensor-mib 256] [--reps 5] [--json out.json]

The model has Llama-3.2-1B's state-dict shapes with ``lm_head`` listed apart: 1,498,482,688 float32 values, the
seeds' "1B" model of 5716.26 MB. ``--scale N`` divides its widths by N (for a quick run). Its tensors are made one
at a time (normal values) and each goes through ``ModelQuantizer`` and back through ``ModelDequantizer`` for every
type before the next is made, so the process holds one tensor of the model, not the model.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import harness
from flare.apis.filter import FilterContext, FilterDirection
from flare.app_common.abstract.fl_model import FLModel
from flare.filters import ModelDequantizer, ModelQuantizer
from flare.filters.quantization import kernels, message_bytes

MB = 1 << 20
GB = 1e9
TYPES = ["float16", "bfloat16", "blockwise8", "float4", "normfloat4"]
CONTEXT = FilterContext("train", "server", "site-1", FilterDirection.OUT)
# the seeds' 2.6 notes, MB of values + MB of quant_state (% of float32)
SEEDS_TABLE = {
    "float32": "5716.26",
    "float16": "2858.13",
    "bfloat16": "2858.13",
    "blockwise8": "1429.06 + 1.54 (25.03%)",
    "float4": "714.53 + 89.33 (14.06%)",
    "normfloat4": "714.53 + 89.33 (14.06%)",
}

log = harness.bench_logger("bench_quantization")


def llama_1b_shapes(scale: int) -> dict[str, tuple[int, ...]]:
    hidden, intermediate, kv, vocab = 2048 // scale, 8192 // scale, 512 // scale, 128256 // scale
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(16):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate), p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def wire_sizes(scale: int) -> dict[str, Any]:
    """Per type: bytes of values and of quant_state over the whole model, and the filters' time both ways."""
    shapes = llama_1b_shapes(scale)
    rng = np.random.default_rng(0)
    totals = {kind: {"values": 0, "meta": 0, "quantize_s": 0.0, "dequantize_s": 0.0, "max_error": 0.0}
              for kind in TYPES}
    source_bytes = 0
    for index, (name, shape) in enumerate(shapes.items()):
        tensor = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        source_bytes += tensor.nbytes
        # the first type to run on a tensor pays for mapping fresh memory for its outputs: take turns
        for kind in TYPES[index % len(TYPES):] + TYPES[:index % len(TYPES)]:
            t0 = time.perf_counter()
            sent = ModelQuantizer(kind).process(FLModel(params={name: tensor}), CONTEXT)
            t1 = time.perf_counter()
            back = ModelDequantizer().process(sent, CONTEXT).params[name]
            t2 = time.perf_counter()
            values, meta = message_bytes(sent.params, sent.meta["quant_state"])
            entry = totals[kind]
            entry["values"] += values
            entry["meta"] += meta
            entry["quantize_s"] += t1 - t0
            entry["dequantize_s"] += t2 - t1
            entry["max_error"] = max(entry["max_error"], float(np.max(np.abs(back - tensor))))
            del sent, back
        del tensor
        gc.collect()
        if index % 20 == 0:
            log(f"tensor {index + 1}/{len(shapes)} ({name})")
    return {"values": sum(math.prod(s) for s in shapes.values()), "source_bytes": source_bytes, "types": totals}


def median_time(reps: int, work: Work) -> float:
    """The median time of ``reps`` runs after one warm-up run."""
    work()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


Work = Callable[[], Any]


def kernel_pairs(kind: str, array: np.ndarray, tensor: Any, bnb: Any) -> tuple[Work, Work, Work | None, Work | None]:
    """flare's quantize and dequantize of ``array`` to ``kind``, and the reference's (None without it)."""
    import torch

    if kind in ("float16", "bfloat16"):
        quantized = kernels.quantize_cast(array, kind)
        dtype = getattr(torch, kind)
        info = torch.finfo(torch.float16)

        def reference_cast() -> Any:
            return (tensor.clamp(info.min, info.max) if kind == "float16" else tensor).to(dtype)

        return (partial(kernels.quantize_cast, array, kind),
                partial(kernels.dequantize_cast, "w", quantized, kind, "float32"),
                reference_cast, partial(reference_cast().to, torch.float32))
    if kind == "blockwise8":
        codes, state = kernels.quantize_8bit(array)
        ours = (partial(kernels.quantize_8bit, array), partial(kernels.dequantize_8bit, "w", codes, state, "float32"))
        if bnb is None:
            return (*ours, None, None)
        q8, s8 = bnb.quantize_blockwise(tensor)
        return (*ours, partial(bnb.quantize_blockwise, tensor), partial(bnb.dequantize_blockwise, q8, s8))
    packed, state = kernels.quantize_4bit(array, kind)
    ours = (partial(kernels.quantize_4bit, array, kind),
            partial(kernels.dequantize_4bit, "w", packed, state, kind, "float32"))
    if bnb is None:
        return (*ours, None, None)
    quant_type = "fp4" if kind == "float4" else "nf4"
    q4, s4 = bnb.quantize_4bit(tensor, quant_type=quant_type)
    return (*ours, partial(bnb.quantize_4bit, tensor, quant_type=quant_type), partial(bnb.dequantize_4bit, q4, s4))


def throughput(tensor_mib: int, reps: int) -> list[dict[str, Any]]:
    """GB/s of float32 values through flare's kernels and through the reference (bitsandbytes' CPU functions; torch
    casts for float16/bfloat16, as NVFlare does them), quantizing and dequantizing one tensor."""
    import torch

    try:
        import bitsandbytes.functional as bnb
    except Exception as e:  # compare what can be compared
        log(f"bitsandbytes does not import ({type(e).__name__}: {e}); its columns stay empty")
        bnb = None
    n = tensor_mib * MB // 4
    array = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    tensor = torch.from_numpy(array)
    rows = []
    for kind in TYPES:
        ours_q, ours_d, ref_q, ref_d = kernel_pairs(kind, array, tensor, bnb)
        nbytes = array.nbytes
        row = {
            "type": kind,
            "reference": "torch" if kind in ("float16", "bfloat16") else "bitsandbytes",
            "flare_quantize_gb_s": nbytes / median_time(reps, ours_q) / GB,
            "flare_dequantize_gb_s": nbytes / median_time(reps, ours_d) / GB,
            "reference_quantize_gb_s": nbytes / median_time(reps, ref_q) / GB if ref_q else None,
            "reference_dequantize_gb_s": nbytes / median_time(reps, ref_d) / GB if ref_d else None,
        }
        rows.append(row)
        log(f"{kind}: {row}")
        gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1, help="divide the model's widths by this (1: the full model)")
    parser.add_argument("--tensor-mib", type=int, default=256, help="float32 MiB of the tensor timed per kernel")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per kernel (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = harness.OtherLoad()

    wire = wire_sizes(args.scale)
    source = wire["source_bytes"]
    full = args.scale == 1
    rows = [["float32", source / MB, 0.0, 100.0, None, None, None, SEEDS_TABLE["float32"] if full else "—"]]
    for kind, t in wire["types"].items():
        rows.append([kind, t["values"] / MB, t["meta"] / MB, 100 * (t["values"] + t["meta"]) / source,
                     source / t["quantize_s"] / GB, source / t["dequantize_s"] / GB, t["max_error"],
                     SEEDS_TABLE[kind] if full else "—"])
    wire_section = {
        "title": f"Bytes on the wire: a {wire['values'] / 1e9:.2f}B-parameter model (Llama-3.2-1B shapes"
                 + (")" if full else f", widths / {args.scale})"),
        "headers": ["type", "values, MB", "quant_state, MB", "% of float32", "quantize, GB/s", "dequantize, GB/s",
                    "max abs error", "seeds' table, MB"],
        "digits": [0, 2, 2, 2, 2, 2, 4, 0],
        "rows": rows,
        "notes": [
            "MB = 2**20 bytes, as in the seeds' table; values and quant_state are counted as NVFlare's quantizer "
            "counts them (array bytes; quant_state: one float32 absmax per block of 4096 (8-bit) or 64 (4-bit) "
            "values, plus each param's code table, 1 KiB (8-bit) or 64 bytes (4-bit)). GB/s = 10**9 bytes of "
            "float32 model per second through ModelQuantizer / ModelDequantizer on the CPU, tensor by tensor, "
            "Python included. Max abs error: the largest difference after the round trip, for weights drawn from "
            "N(0, 0.02²).",
        ],
    }

    kernel_rows = throughput(args.tensor_mib, args.reps)
    kernel_section = {
        "title": f"Kernel throughput on one {args.tensor_mib} MiB float32 tensor (CPU)",
        "headers": ["type", "flare quantize, GB/s", "reference quantize, GB/s", "flare dequantize, GB/s",
                    "reference dequantize, GB/s", "reference"],
        "digits": [0, 2, 2, 2, 2, 0],
        "rows": [[r["type"], r["flare_quantize_gb_s"], r["reference_quantize_gb_s"], r["flare_dequantize_gb_s"],
                  r["reference_dequantize_gb_s"], r["reference"]] for r in kernel_rows],
        "notes": [
            f"Median of {args.reps} runs after a warm-up; GB/s = 10**9 bytes of float32 values per second, output "
            "allocation included on both sides. flare: the filters' kernels (Rust, GIL released, blocks in parallel "
            "on all cores), called as the filters call them. Reference: bitsandbytes' CPU functions on a torch "
            "tensor over the same memory (quantize_blockwise / dequantize_blockwise, quantize_4bit / "
            "dequantize_4bit), whose output flare's matches byte for byte; for float16 and bfloat16, torch's "
            "clamp + cast, as NVFlare's filter does it.",
        ],
    }
    other = load.take()
    sections = [wire_section, kernel_section]
    sections[-1]["notes"].append(f"CPU time used by other processes during the run: {other['other_cpu_s']:.1f} s.")
    harness.print_sections(sections)
    elapsed = time.perf_counter() - started
    if args.json:
        harness.write_report(args.json, "bench_quantization", "Quantization filters", elapsed, sections,
                             {"wire": wire, "kernels": kernel_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
