"""What a source kind declares to the parent process: how it is detected and which module the child serves for it.

A kind module's top level imports nothing heavy: the parent imports every kind to detect the source; the framework
(TensorFlow, scikit-learn, ...) is imported only by the child, by the kind's operations module.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.models import Model

Flavors = dict[str, dict]


@dataclass(frozen=True)
class SourceKind:
    name: str
    detected_by: str = ""  # for the "nothing supported here" error and the README's table
    operations: str = ""  # module the child process serves: load_model, convert, predict, time_predict, ...
    from_flavors: Callable[[Path, Flavors], Path | None] = lambda location, flavors: None
    from_files: Callable[[Path], list[Path]] = lambda location: []
    own_routes: tuple[str, ...] = ()  # empty: the configured Keras routes (convert.routes)
    native_runtime: str = "keras"  # the benchmark's name for the source's own predict

    def routes(self, configured: list[str]) -> list[str]:
        return list(self.own_routes) or configured


def read_flavors(location: Path) -> Flavors:
    return Model.load(str(location)).flavors if (location / "MLmodel").is_file() else {}


def files_with_suffix(location: Path, suffixes: set[str]) -> list[Path]:
    if location.is_file():
        return [location] if location.suffix in suffixes else []
    return sorted(p for p in location.rglob("*") if p.suffix in suffixes and p.is_file())


def flavor_model_dir(flavor: str) -> Callable[[Path, Flavors], Path | None]:
    """Detection by MLflow flavor for kinds whose child loads the whole MLflow model directory."""
    return lambda location, flavors: location if flavor in flavors else None
