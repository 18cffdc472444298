"""The run summary: a Prefect markdown artifact and the CLI's closing lines share these tables."""
from __future__ import annotations

from onnx_stage.consumer import consumer_uris
from onnx_stage.records import (ORT_DEFAULT, BenchReport, OnnxArtifacts, ParityReport, RegisteredTwin, SourceModel,
                                VariantOutcome)


def parity_table(parity: ParityReport) -> list[str]:
    lines = ["| inputs | output | max abs | max rel | mean abs | cosine | out of tol. | argmax agree | top-5 | ok |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in parity.cases:
        for o in case.outputs:
            lines.append(f"| {case.label} | {o.output} | {o.max_abs:.3g} | {o.max_rel:.3g} | {o.mean_abs:.3g} | "
                         f"{o.cosine_similarity:.6f} | {o.fraction_out_of_tolerance:.2%} | "
                         f"{_percent(o.argmax_agreement)} | {_percent(o.top5_overlap)} | "
                         f"{'yes' if o.within_tolerance else 'NO'} |")
    return lines


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def latency_table(bench: BenchReport) -> list[str]:
    if not bench.rows:
        return ["benchmark disabled"]
    lines = ["| runtime | batch | runs | p50 ms | p95 ms | p99 ms | mean ms (95 % CI) | items/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.runtime} | {r.batch_size} | {r.runs} | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.p99_ms:.3f} | "
              f"{r.mean_ms:.3f} ± {r.mean_ci95_ms:.3f} | {r.throughput_per_s:,.0f} |" for r in bench.rows]
    lines.append(f"\nRegistered onnxruntime session options: `{bench.session_options or 'defaults'}`")
    if bench.tuning_refused:
        lines.append(f"\nTuned options not registered: {bench.tuning_refused}")
    for batch_size in sorted({r.batch_size for r in bench.rows}):
        versus_default = bench.speedup(batch_size, baseline=ORT_DEFAULT)
        lines.append(f"- batch {batch_size}: registered ONNX is {bench.speedup(batch_size):.2f}× {bench.native_runtime}"
                     + (f", {versus_default:.2f}× default onnxruntime" if bench.session_options else "") + " (p50)")
    return lines


def variants_section(variants: list[VariantOutcome], variant_twins: list[RegisteredTwin]) -> list[str]:
    registered = {twin.variant: twin for twin in variant_twins}
    lines = ["\n## Variants"] if variants else []
    for variant in variants:
        if variant.kind in registered:
            lines.append(f"- {variant.kind}: registered as {registered[variant.kind].uri} "
                         f"(aliases get the suffix -{variant.kind})")
        else:
            lines.append(f"- {variant.kind}: refused, not registered — {variant.refused}")
    return lines


def run_summary(source: SourceModel, onnx_model: OnnxArtifacts, parity: ParityReport, bench: BenchReport,
                twin: RegisteredTwin, variants: list[VariantOutcome] = (),
                variant_twins: list[RegisteredTwin] = (), consumer_forms: list[tuple[str, str, str]] = ()) -> str:
    failed_routes = "".join(f"\n- route {r} failed: {why}" for r, why in onnx_model.route_failures.items())
    optimisations = ", ".join(onnx_model.graph_optimizations) or "none kept"
    return "\n".join([
        f"# {source.ref.describe()} → {twin.uri}",
        f"Registered **{twin.name} version {twin.version}** (run `{twin.run_id}`), converted by route "
        f"`{onnx_model.route}` at opset {onnx_model.opset} in {onnx_model.conversion_seconds:.1f} s; graph "
        f"optimisations: {optimisations}.{failed_routes}",
        f"\n## Parity (atol={parity.atol:g}, rtol={parity.rtol:g})", *parity_table(parity),
        "\n## Latency", *latency_table(bench),
        *([f"\nLatency distributions: `latency.png` in {twin.uri} (extra_files/), run `{twin.run_id}`."]
          if bench.rows else []),
        *variants_section(variants, variant_twins),
        "\n## For registry consumers", consumer_line(source, twin), *consumer_table(consumer_forms),
    ])


def consumer_table(rows: list[tuple[str, str, str]]) -> list[str]:
    if not rows:
        return []
    return ["", "| request form (mlflow.pyfunc) | source answers | twin answers |", "|---|---|---|",
            *[f"| {form} | {source} | {twin} |" for form, source, twin in rows]]


def consumer_line(source: SourceModel, twin: RegisteredTwin) -> str:
    before, after = consumer_uris(source, twin)
    if source.mlflow_model_dir is None:
        return f"Load `{after}` with mlflow.pyfunc (it answers like the mlflow.keras flavor would)."
    return (f"Change `{before}` to `{after}`, nothing else: every request form the source answers was sent to both "
            "and answered alike (mlflow.pyfunc).")
