"""Achieved GFLOP/s of one converted convnet (ResNet50, 224×224, random weights) against this machine's fp32 peak.

Run from the repo root:  .venv/bin/python benchmarks/gflops.py [--model ResNet50_224] [--seconds 6]

FLOPs are counted from the ONNX graph the stage produces (after shape inference with the batch dimension fixed):
2 × multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes; everything else (adds, activations,
pooling) is left out, so the figure slightly understates the work done. The model runs with the session options the
stage would register (`onnx_stage.tasks.benchmark.pick_session_options) and, for reference, with default options.

Peak fp32 = cores × clock × FMA pipes per core × fp32 lanes per FMA × 2 (an FMA is 2 FLOPs). Cores and ISA flags are
read from /proc/cpuinfo and lscpu; the microarchitecture (and so the FMA pipe count) is inferred from vendor, family
and model, and the clock from the TSC (BogoMIPS / 2): in a VM neither the model name nor the boost clock is visible,
so both are stated as assumptions. A large float32 matrix product through numpy's BLAS gives a measured ceiling.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from bench_common import (build_models, cpu_flags, load_and_convert, machine_line, make_inputs, median_ms, ort_timer,
                          stopwatch, time_rounds)
from onnx import shape_inference

from onnx_stage.config import BenchmarkConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.tasks.benchmark import pick_session_options

BATCHES = [1, 8]
MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# (vendor, family) -> (microarchitecture, FMA pipes per core, fp32 lanes per FMA) for the CPUs this can meet
MICROARCHITECTURES = {
    ("AuthenticAMD", "23"): ("Zen / Zen 2", 2, 8),
    ("AuthenticAMD", "25"): ("Zen 3 (models 0x00-0x0f: EPYC Milan) / Zen 4", 2, 8),  # Zen 4: AVX-512 double-pumped
    ("AuthenticAMD", "26"): ("Zen 5", 2, 16),
}


def count_macs(model: onnx.ModelProto, batch: int) -> dict[str, int]:
    """Multiply-accumulates per op type, from shapes inferred with the batch dimension set to `batch`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    shapes |= {t.name: list(t.dims) for t in inferred.graph.initializer}
    macs: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not (a and b and out) or None in [*a, *b, *out]:
            raise ValueError(f"{node.op_type} {node.name}: shapes not inferred ({a}, {b} -> {out})")
        if node.op_type == "Conv":  # out [N, Cout, *spatial], weight [Cout, Cin/group, *kernel]
            count = int(np.prod(out)) * int(np.prod(b[1:]))
        elif node.op_type == "ConvTranspose":  # each input element is scattered through Cout/group × kernel
            count = int(np.prod(a)) * int(np.prod(b[1:]))
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            count = int(np.prod(out)) * (a[0] if trans_a else a[1])
        else:  # MatMul: out [..., M, N], K = last dim of A
            count = int(np.prod(out)) * a[-1]
        macs[node.op_type] = macs.get(node.op_type, 0) + count
    return macs


def peak_gflops() -> tuple[float, float, list[str]]:
    """fp32 peak at the TSC clock and at an assumed boost clock, and the lines saying how it was derived."""
    cpu = cpu_flags()
    cores = os.cpu_count() or 1
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    threads_per_core = next((int(line.split(":")[1]) for line in lscpu.splitlines()
                             if line.startswith("Thread(s) per core")), 1)
    physical = cores // threads_per_core
    arch, pipes, lanes = MICROARCHITECTURES.get((cpu["vendor"], cpu["family"]), ("unknown", 2, 8))
    if "avx512f" not in cpu["flags"] and arch == "Zen 5":
        lanes = 8
    if "fma" not in cpu["flags"]:
        pipes = 0
    tsc_ghz = cpu["bogomips"] / 2 / 1000
    boost_ghz = 3.5  # assumption: EPYC Milan parts (e.g. 7B13, 7763) boost to ~3.5 GHz; a VM cannot see it
    at_tsc = physical * tsc_ghz * pipes * lanes * 2
    at_boost = physical * boost_ghz * pipes * lanes * 2
    lines = [
        f"cpu (from /proc/cpuinfo, lscpu): vendor {cpu['vendor']}, family {cpu['family']}, model "
        f"{cpu['model_number']}, model name '{cpu['model']}', {cores} CPUs, {threads_per_core} thread(s) per core "
        f"-> {physical} cores (measured; in a VM whether a vCPU is a whole host core or an SMT sibling is not "
        f"visible: ASSUMPTION whole cores); flags: fma={'fma' in cpu['flags']}, avx2={'avx2' in cpu['flags']}, "
        f"avx512f={'avx512f' in cpu['flags']}",
        f"microarchitecture {arch} (inferred from vendor+family: ASSUMPTION) -> {pipes} FMA pipes/core × {lanes} "
        f"fp32 lanes (256-bit AVX2) × 2 FLOP/FMA = {pipes * lanes * 2} FLOP/cycle/core",
        f"clock: {tsc_ghz:.3f} GHz = BogoMIPS/2 = TSC rate (measured; the base clock on these parts); boost "
        f"{boost_ghz} GHz is an ASSUMPTION (not visible in a VM)",
        f"fp32 peak = {physical} cores × {tsc_ghz:.3f} GHz × {pipes} × {lanes} × 2 = {at_tsc:.1f} GFLOP/s at the TSC "
        f"clock; {at_boost:.1f} GFLOP/s at {boost_ghz} GHz",
    ]
    return at_tsc, at_boost, lines


def blas_gflops(size: int = 1536, seconds: float = 3.0) -> float:
    """Measured ceiling: median GFLOP/s of a float32 square matrix product through numpy's BLAS (all cores)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    durations, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(durations) < 5:
        before = time.perf_counter()
        a @ b
        durations.append(time.perf_counter() - before)
    return 2 * size**3 / float(np.median(durations)) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50_224", help="model name (bench_common / model_zoo.zoo)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing seconds per session and batch size")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    at_tsc, at_boost, lines = peak_gflops()
    cores = os.cpu_count() or 1
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="gflops-") as scratch, KerasWorker(900) as worker:
        with stopwatch(f"built {args.model}"):
            files = build_models(Path(scratch) / "models", [args.model])
        with stopwatch("loaded and converted with the stage's routes"):
            source, converted = load_and_convert(worker, args.model, files[args.model], Path(scratch) / "work")
        batches = {b: make_inputs(source, worker, b) for b in BATCHES}
        model = onnx.load(str(converted.onnx_path))
        print(f"{args.model}: route {converted.route}, opset {converted.opset}")
        registered = pick_session_options(converted, batches, BenchmarkConfig(warmup_runs=2, screening_runs=5))
        print(f"session options the stage would register: {registered or 'default'}", flush=True)
        blas_before = blas_gflops()
        for batch, inputs in batches.items():
            macs = count_macs(model, batch)
            flops = 2 * sum(macs.values())
            rounds = time_rounds({"registered": ort_timer(converted.onnx_path, registered, inputs),
                                  "default": ort_timer(converted.onnx_path, {}, inputs)}, args.seconds)
            print(f"batch {batch}: {flops / 1e9:.2f} GFLOP per call ("
                  + ", ".join(f"{op} {2 * n / 1e9:.3f}" for op, n in macs.items()) + ")")
            for name, durations in rounds.items():
                best = min(d for r in durations for d in r)
                achieved = flops / (median_ms(durations) / 1e3) / 1e9
                threads = int((registered if name == "registered" else {}).get("intra_op_num_threads", cores))
                print(f"  {name:10}: median {median_ms(durations):8.1f} ms -> {achieved:6.1f} GFLOP/s = "
                      f"{achieved / at_tsc:5.1%} of peak at TSC clock ({at_tsc:.0f}), {achieved / at_boost:5.1%} at "
                      f"boost ({at_boost:.0f}); {threads} thread(s): {achieved / (at_tsc * threads / cores):5.1%} of "
                      f"their peak at TSC clock; best call {flops / best / 1e9:6.1f} GFLOP/s", flush=True)
    blas_after = blas_gflops()
    print(f"numpy float32 1536×1536 matmul (BLAS, measured ceiling), before/after: {blas_before:.1f} / "
          f"{blas_after:.1f} GFLOP/s = {max(blas_before, blas_after) / at_tsc:.0%} of the TSC-clock peak")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
