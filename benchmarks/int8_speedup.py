"""The stage's int8 variants vs the fp32 ONNX model on convnets whose outputs depend on their input.

Run from the repo root:  .venv/bin/python benchmarks/int8_speedup.py [--models a,b] [--seconds 3]

Per model:
- fp32: the stage's converted model (default routes).
- int8_dynamic and int8_static: the stage's variants, built and gated by
  `onnx_stage.tasks.validate.gate_variants` exactly as a
  flow run does (onnx_stage/variants.py; int8_static is onnx_stage/quantize.py: quant_pre_process, quantize_static
  in QDQ format, per-channel 7-bit int8 weights, uint8 activations, Softmax left in float).
Gate: the stage's variant gate, atol 0.05 + rtol 0.1, argmax agreement >= 0.9, cosine >= the kind's default (0.99),
against Keras on the model's sample data (trained models) and on one generated batch of GATE_BATCH rows; refused as
VACUOUS when a constant output would pass it. The stage's speed gate (min_speedup) is off: this script measures the
ratio itself. Ratios are printed for every model; the target (int8 >= 1.8x fp32, geomean at batch 1) counts only the
models whose int8 variant passed. The three ONNX models run with default onnxruntime session options, timed
interleaved in rounds (medians), at batch 1 and 8, then fp32 and int8_static at batch 1 on one thread (the kernels'
own speed); the kernel profile says where onnxruntime spends the time.

Models (default: the three trained convnets, then ResNet50_128 as the full-size reference):
- DigitsResNet_32, DigitsVGG_32, DigitsMobileNetV2_32: convnets of the usual blocks (ResNet basic blocks; VGG
  conv-conv-pool stages; MobileNetV2 inverted residuals: depthwise convolutions, ReLU6), 32x32x3 pixels 0-255,
  **trained** on scikit-learn's bundled digits (8x8 upscaled bilinearly; 1541 rows, 2-3 epochs, Adam), then every
  BatchNormalization's moving statistics recomputed on 512 training rows in one pass (a few hundred steps of moving
  averages lag behind weights that moved fast). The 256 held-out rows are the stage's `validation.sample_data`:
  int8_static calibrates on their first `calibration_rows` (32), the gate compares on all 256 plus a generated batch.
  Trained once in a Keras child (~3 min) and cached in ~/.cache/onnx-stage/int8_speedup/<hash of the recipe and the
  library versions>; delete it to retrain.
- Any model_zoo.zoo or bench_common.APPLICATION_SIZES name (ResNet50_128, MobileNetV2_224, ...): random weights,
  as in the other benchmarks. A speed reference at a realistic size; its gate is refused as vacuous.

Why not keras.applications models made input-dependent (measured on this 2-vCPU VM):
- With random weights every input gets nearly the same softmax: 3 of 4 gates were refused as vacuous.
- Re-estimating every BatchNormalization on digits (AdaBN) and fitting the classifier on the pooled features
  (logistic regression) makes the outputs depend on the input (held-out accuracy 34-57 %), but a random-weight
  BatchNorm network amplifies small perturbations layer after layer (it is chaotic), and int8 rounding is one:
  EfficientNetB0_64's int8_static conv outputs had a cosine to fp32 of 0.999 at the stem, 0.95 by block 3, 0.70 by
  block 5, 0.65 on the pooled features, and its gate failed with 46 % argmax agreement (MobileNetV3Small_96: 72 %)
  whatever the classifier's regularisation. That measures the random weights, not int8 on a trained model.
- Training them does not fit the run: TensorFlow trains ResNet50 at 32x32 at 40 ms/image with XLA (160 without), at
  64x64 at 118 ms/image, MobileNetV3Small at 96x96 at 54 ms/image, so one epoch of digits at the benchmark sizes takes
  from 1.4 to over 10 min per model; trained at 32x32 and run at the benchmark size on tiled digits their predictions
  do not carry over (18 % accuracy: receptive fields far larger than a tile).
Result on this CPU (AVX2, no VNNI; benchmarks/README.md): int8_static is no faster than fp32 (QLinearConv, 80-96 % of
its time, runs as fast as fp32 Conv on one core), so the 1.8x target needs a CPU with VNNI.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_common import (build_models, cpu_flags, geomean, load_and_convert, machine_line, make_inputs, median_ms,
                          ort_timer, parse_args, ratio_with_spread, run_keras_script, run_models, time_rounds)

from onnx_stage.config import StageConfig, ValidateConfig, VariantConfig
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.records import VariantOutcome
from onnx_stage.tasks.validate import gate_variants

# trained on digits (TRAIN below): architecture, input size, epochs
TRAINED = {
    "DigitsResNet_32": {"arch": "resnet", "size": 32, "epochs": 2},
    "DigitsVGG_32": {"arch": "vgg", "size": 32, "epochs": 2},
    "DigitsMobileNetV2_32": {"arch": "mobilenet_v2", "size": 32, "epochs": 3},
}
MODELS = [*TRAINED, "ResNet50_128"]
KINDS = ["int8_dynamic", "int8_static"]
BATCHES = [1, 8]
GATE_BATCH = 32
GATE = {"atol": 0.05, "rtol": 0.1, "min_argmax_agreement": 0.9}
TARGET = 1.8
QUANT_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "QuantizeLinear", "DequantizeLinear", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul"}

TRAIN = """
import json, sys, time
from pathlib import Path
import keras, numpy as np
from sklearn.datasets import load_digits

L = keras.layers
out, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
HELD_OUT, ADABN_ROWS = 256, 512


def conv_bn(x, filters, kernel=3, strides=1, activation=L.ReLU):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    return activation()(x) if activation else x


def resnet(x, widths=(32, 64, 128)):
    x = conv_bn(L.Rescaling(1 / 255.0)(x), widths[0])
    for stage, width in enumerate(widths):
        for block in range(2):
            stride = 2 if stage and not block else 1
            y = conv_bn(conv_bn(x, width, strides=stride), width, activation=None)
            shortcut = x if stride == 1 and x.shape[-1] == width else conv_bn(x, width, 1, stride, activation=None)
            x = L.ReLU()(L.Add()([y, shortcut]))
    return x


def vgg(x, widths=(32, 64, 128)):
    x = L.Rescaling(1 / 255.0)(x)
    for stage, width in enumerate(widths):
        x = conv_bn(conv_bn(x, width), width)
        x = L.MaxPooling2D()(x) if stage < len(widths) - 1 else x
    return x


def mobilenet_v2(x, blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))):
    relu6 = lambda: L.ReLU(6.0)  # noqa: E731
    x = conv_bn(L.Rescaling(1 / 127.5, offset=-1)(x), 32, activation=relu6)
    for expansion, width, repeats, first_stride in blocks:
        for index in range(repeats):
            stride = first_stride if index == 0 else 1
            y = conv_bn(x, x.shape[-1] * expansion, 1, activation=relu6) if expansion != 1 else x
            y = L.BatchNormalization()(L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y))
            y = conv_bn(relu6()(y), width, 1, activation=None)
            x = L.Add()([x, y]) if stride == 1 and x.shape[-1] == width else y
    return conv_bn(x, 256, 1, activation=relu6)


digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.target))
images, labels = digits.images[order].astype("float32") / 16.0, digits.target[order]
train_rows = len(labels) - HELD_OUT
for name, spec in specs.items():
    started = time.perf_counter()
    size = spec["size"]
    pixels = keras.ops.image.resize(images[..., None], (size, size), interpolation="bilinear")
    pixels = keras.ops.convert_to_numpy(pixels)
    pixels = np.repeat(255.0 * np.clip(pixels, 0, 1), 3, axis=-1).astype("float32")
    keras.utils.set_random_seed(0)
    image = keras.Input((size, size, 3), name="image")
    features = L.GlobalAveragePooling2D()(globals()[spec["arch"]](image))
    model = keras.Model(image, L.Dense(10, activation="softmax", name="digit")(features), name=name)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(pixels[:train_rows], labels[:train_rows], epochs=spec["epochs"], batch_size=32, verbose=0)
    norms = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    for layer in norms:  # one training-mode pass with momentum 0: moving statistics = those of these rows
        layer.momentum = 0.0
    model(pixels[:ADABN_ROWS], training=True)
    for layer in norms:
        layer.momentum = 0.99
    held_out = model.predict(pixels[train_rows:], verbose=0)
    meta = {"train_accuracy": float(history.history["accuracy"][-1]),
            "held_out_accuracy": float(np.mean(held_out.argmax(1) == labels[train_rows:])),
            "held_out_mean_max_probability": float(held_out.max(1).mean()),
            "train_seconds": round(time.perf_counter() - started, 1), **spec}
    model.save(out / f"{name}.keras")
    np.savez(out / f"{name}.samples.npz", image=pixels[train_rows:])
    (out / f"{name}.json").write_text(json.dumps(meta))  # written last: marks a complete cache entry
    print(f"  trained {name}: held-out accuracy {meta['held_out_accuracy']:.1%}, {meta['train_seconds']:.0f} s",
          flush=True)
"""


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def trained_cache() -> Path:
    libraries = [_version(p) for p in ("keras", "tensorflow", "tensorflow-cpu", "scikit-learn")]
    recipe = json.dumps([TRAIN, TRAINED, libraries])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "onnx-stage" / "int8_speedup" / hashlib.sha256(recipe.encode()).hexdigest()[:16]


def build(out_dir: Path, names: list[str]) -> dict[str, Path]:
    """Trained convnets from the cache (trained first if missing), other names built with random weights."""
    cache = trained_cache()
    files = build_models(out_dir, [n for n in names if n not in TRAINED]) if set(names) - set(TRAINED) else {}
    missing = {n: TRAINED[n] for n in names if n in TRAINED and not (cache / f"{n}.json").exists()}
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        print(f"training {', '.join(missing)} on digits into {cache}", flush=True)
        run_keras_script(TRAIN, str(cache), json.dumps(missing), quiet=False)
    return {**files, **{n: cache / f"{n}.keras" for n in names if n in TRAINED}}


def origin(name: str, model_file: Path) -> str:
    meta_file = model_file.with_name(f"{name}.json")
    if name not in TRAINED or not meta_file.exists():
        return "random weights (a speed reference: its gate cannot be informative)"
    meta = json.loads(meta_file.read_text())
    return (f"trained on digits, {meta['epochs']} epochs: held-out accuracy {meta['held_out_accuracy']:.1%}, mean top "
            f"probability {meta['held_out_mean_max_probability']:.2f}")


def gate_figures(outcome: VariantOutcome) -> str:
    if outcome.refused:
        return f"REFUSED ({outcome.refused[:400]})"
    return "passed (" + "; ".join(
        f"{case.label}: argmax agreement {output.argmax_agreement:.0%}, max|Δ| {output.max_abs:.2g}, "
        f"cosine {output.cosine_similarity:.5f}" for case in outcome.parity.cases for output in case.outputs) + ")"


def op_census(path: Path) -> str:
    counts = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in QUANT_OPS)
    return ", ".join(f"{op}×{n}" for op, n in counts.most_common()) or "no quantized ops"


def kernel_profile(path: Path, inputs: list[np.ndarray], runs: int = 10, top: int = 5) -> str:
    """Share of onnxruntime's node time per op type after its graph optimisations (what actually runs)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], inputs))
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return (f"{total / runs / 1e3:.2f} ms/run: "
            + ", ".join(f"{op} {us / total:.0%}" for op, us in per_op.most_common(top)))


def benchmark_model(worker: KerasWorker, name: str, model_file: Path, work_dir: Path, seconds: float) -> dict:
    source, fp32 = load_and_convert(worker, name, model_file, work_dir)
    samples = model_file.with_name(f"{name}.samples.npz")
    config = StageConfig(validation=ValidateConfig(batch_sizes=[GATE_BATCH],
                                                   sample_data=str(samples) if samples.exists() else None),
                         variants=[VariantConfig(kind=kind, **GATE, min_speedup=None) for kind in KINDS])
    outcomes = dict(zip(KINDS, gate_variants(source=source, onnx_model=fp32, worker=worker, config=config,
                                             work_dir=work_dir / "variants")))
    paths = {"fp32": fp32.onnx_path, **{kind: outcome.onnx_model.onnx_path for kind, outcome in outcomes.items()}}
    result = {"name": name, "origin": origin(name, model_file), "paths": paths, "rounds": {},
              "passed": {kind: outcome.refused is None for kind, outcome in outcomes.items()},
              "gates": {kind: gate_figures(outcome) for kind, outcome in outcomes.items()}}
    for batch in BATCHES:
        inputs = make_inputs(source, worker, batch)
        result["rounds"][batch] = time_rounds({k: ort_timer(p, {}, inputs) for k, p in paths.items()}, seconds)
    # one thread: the kernels' own speed, without what the second core adds to each (parallel scaling, the load)
    one = make_inputs(source, worker, 1)
    result["one_thread"] = time_rounds({k: ort_timer(paths[k], {"intra_op_num_threads": 1}, one)
                                        for k in ("fp32", "int8_static")}, seconds)
    result["profiles"] = {k: kernel_profile(p, one) for k, p in paths.items()}
    return result


def render(result: dict) -> list[str]:
    lines = [f"{result['name']}: {result['origin']}"]
    for kind in KINDS:
        lines.append(f"  {kind:16} gate: {result['gates'][kind]}")
        lines.append(f"  {kind:16} ops: {op_census(result['paths'][kind])}")
    for kind, profile in result["profiles"].items():
        lines.append(f"  {kind:16} node time by op (batch 1): {profile}")
    for batch, rounds in result["rounds"].items():
        parts = [f"fp32 {median_ms(rounds['fp32']):8.2f} ms"]
        for kind in KINDS:
            ratio, lo, hi = ratio_with_spread(rounds["fp32"], rounds[kind])
            result.setdefault("ratios", {}).setdefault(kind, {})[batch] = ratio
            parts.append(f"{kind} {median_ms(rounds[kind]):8.2f} ms fp32/{kind} {ratio:5.2f} [{lo:.2f}–{hi:.2f}]")
        lines.append(f"  batch {batch:>2}: " + "  ".join(parts))
    rounds = result["one_thread"]
    ratio, lo, hi = ratio_with_spread(rounds["fp32"], rounds["int8_static"])
    result["ratios"]["int8_static"]["1, 1 thread"] = ratio
    lines.append(f"  batch  1, 1 thread: fp32 {median_ms(rounds['fp32']):8.2f} ms  int8_static "
                 f"{median_ms(rounds['int8_static']):8.2f} ms fp32/int8_static {ratio:5.2f} [{lo:.2f}–{hi:.2f}]")
    return lines


def main() -> int:
    names, seconds = parse_args(__doc__, MODELS, 3.0)
    flags = cpu_flags()
    print(machine_line())
    print(f"cpu: {flags['model']} (family {flags['family']} model {flags['model_number']}); int8-relevant flags: "
          + ", ".join(f"{f}={'yes' if f in flags['flags'] else 'NO'}"
                      for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")))
    if not {"avx512_vnni", "avx_vnni"} & flags["flags"]:
        print("  no VNNI on this CPU: onnxruntime's MLAS runs int8 GEMMs with its AVX2 U8S8 kernels "
              "(vpmaddubsw + vpmaddwd, about 2× the fp32 FMA rate at best, not the 4× of VNNI)")
    print(f"onnxruntime {ort.__version__}; gate: {GATE} on the sample data (trained models) and one generated batch "
          f"of {GATE_BATCH}", flush=True)
    results = run_models(names, benchmark_model, render, seconds, build=build)

    print(f"\nsummary: fp32 / int8 latency ratio (> 1: int8 faster); target ≥ {TARGET} where the int8 model passes "
          "its gate")
    for kind in KINDS:
        for batch in BATCHES:
            passing = [r["ratios"][kind][batch] for r in results if r["passed"][kind]]
            every = [r["ratios"][kind][batch] for r in results]
            print(f"{kind:16} batch {batch:>2}: gate passed {len(passing)}/{len(results)}; "
                  f"geomean (passed) {geomean(passing):.2f}; geomean (all) {geomean(every):.2f}; "
                  f"per model " + ", ".join(f"{r['name']} {r['ratios'][kind][batch]:.2f}" for r in results))
    one_thread = [r["ratios"]["int8_static"]["1, 1 thread"] for r in results]
    print(f"int8_static      batch  1, 1 thread: geomean (all) {geomean(one_thread):.2f}; per model "
          + ", ".join(f"{r['name']} {r['ratios']['int8_static']['1, 1 thread']:.2f}" for r in results))
    for kind in KINDS:
        passed = [r for r in results if r["passed"][kind]]
        value = geomean([r["ratios"][kind][1] for r in passed])
        verdict = "no model passed its gate" if not passed else "MET" if value >= TARGET else "NOT MET"
        print(f"target {kind}: geomean fp32/{kind} at batch 1 over the {len(passed)} gate-passing model(s) "
              f"({', '.join(r['name'] for r in passed) or '-'}): {value:.2f} vs ≥ {TARGET}: {verdict}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
