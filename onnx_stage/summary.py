"""The run summary: a Prefect markdown artifact and the CLI's closing lines share these tables."""
from __future__ import annotations

from tasks.records import BenchReport, OnnxArtifacts, ParityReport, RegisteredTwin, SourceModel


def parity_table(parity: ParityReport) -> list[str]:
    lines = ["| inputs | output | max abs | max rel | argmax agreement | within tolerance |", "|---|---|---|---|---|---|"]
    for case in parity.cases:
        for o in case.outputs:
            agreement = "—" if o.argmax_agreement is None else f"{o.argmax_agreement:.1%}"
            lines.append(f"| {case.label} | {o.output} | {o.max_abs:.3g} | {o.max_rel:.3g} | {agreement} | "
                         f"{'yes' if o.within_tolerance else 'NO'} |")
    return lines


def latency_table(bench: BenchReport) -> list[str]:
    if not bench.rows:
        return ["benchmark disabled"]
    lines = ["| runtime | batch | p50 ms | p95 ms | p99 ms | items/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.runtime} | {r.batch_size} | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.p99_ms:.3f} | "
              f"{r.throughput_per_s:,.0f} |" for r in bench.rows]
    for batch_size in sorted({r.batch_size for r in bench.rows}):
        if (speedup := bench.speedup(batch_size)) is not None:
            lines.append(f"\nonnxruntime vs compiled Keras at batch {batch_size}: {speedup:.2f}× (p50)")
    return lines


def run_summary(source: SourceModel, onnx_model: OnnxArtifacts, parity: ParityReport, bench: BenchReport,
                twin: RegisteredTwin) -> str:
    failed_routes = "".join(f"\n- route {r} failed: {why}" for r, why in onnx_model.route_failures.items())
    return "\n".join([
        f"# {source.ref.describe()} → {twin.uri}",
        f"Registered **{twin.name} version {twin.version}** (run `{twin.run_id}`), converted by route "
        f"`{onnx_model.route}` at opset {onnx_model.opset} in {onnx_model.conversion_seconds:.1f} s.{failed_routes}",
        f"\n## Parity (atol={parity.atol:g}, rtol={parity.rtol:g})", *parity_table(parity),
        "\n## Latency", *latency_table(bench),
    ])
