"""The house rules (README "Layout"): a module imports only from its own layer or below, and the wheel installs one
top-level package, onnx_stage, with tasks/ and flows/ inside it.

Layers, bottom up: core (onnx_stage/ without tasks/ and flows/) → tasks/ (onnx_stage.tasks) → flows/
(onnx_stage.flows). deployments/, benchmarks/, tests/ and model_zoo/ sit outside the product and may import any layer;
the product imports none of them.
"""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_PRODUCT = {"deployments", "benchmarks", "tests", "model_zoo"}
LAYERS = {  # layer → the names it may not import
    "core": {"onnx_stage.tasks", "onnx_stage.flows", *OUTSIDE_THE_PRODUCT},
    "tasks": {"onnx_stage.flows", *OUTSIDE_THE_PRODUCT},
    "flows": OUTSIDE_THE_PRODUCT,
}


def imported_names(path: Path) -> set[str]:
    """Every module name a file imports, at top level or inside functions; relative imports resolved against the
    package the checkout imports the file as (onnx_stage.tasks.load for tasks/load.py)."""
    relative = path.relative_to(ROOT).with_suffix("")
    package = (["onnx_stage"] if relative.parts[0] in ("tasks", "flows") else []) + list(relative.parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            if not node.module:  # `from . import x`: x is a module of that package
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def layer_files() -> dict[str, list[Path]]:
    core = [p for p in (ROOT / "onnx_stage").rglob("*.py")
            if p.relative_to(ROOT / "onnx_stage").parts[0] not in {"tasks", "flows"}]
    return {"core": core, "tasks": sorted((ROOT / "tasks").glob("*.py")),
            "flows": sorted((ROOT / "flows").glob("*.py"))}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_each_layer_imports_only_from_itself_or_below() -> None:
    files = layer_files()
    assert len(files["core"]) > 30 and len(files["tasks"]) >= 5 and len(files["flows"]) >= 2
    upward = [f"{path.relative_to(ROOT)} imports {name}"
              for layer, paths in files.items() for path in paths for name in sorted(imported_names(path))
              if any(under(name, forbidden) for forbidden in LAYERS[layer])]
    assert upward == []


def test_no_module_imports_tasks_or_flows_by_their_top_level_names() -> None:
    """`tasks` and `flows` exist at the top of the checkout only as folders: imported by those names they would be
    second copies of onnx_stage.tasks / onnx_stage.flows (and absent from an installed wheel)."""
    everything = [p for folder in ("onnx_stage", "tasks", "flows", "deployments", "benchmarks", "tests", "model_zoo")
                  for p in (ROOT / folder).rglob("*.py")]
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in everything
                 for name in sorted(imported_names(path)) if under(name, "tasks") or under(name, "flows")]
    assert offenders == []


def test_records_live_in_the_core_and_the_test_models_outside_the_product() -> None:
    assert (ROOT / "onnx_stage" / "records.py").is_file()
    assert not (ROOT / "tasks" / "records.py").exists()
    assert not list((ROOT / "onnx_stage").glob("zoo*.py"))
    assert (ROOT / "model_zoo" / "zoo.py").is_file()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel built straight from the checkout, and the one built from the sdist (what pip does with an sdist)."""
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH: `make setup` installs it"
    built = {}
    for how, flags in (("from the checkout", ["--wheel"]), ("from the sdist", [])):
        out = tmp_path_factory.mktemp("dist")
        subprocess.run([uv, "build", *flags, "--out-dir", str(out), str(ROOT)], check=True, capture_output=True,
                       timeout=300)
        (built[how],) = out.glob("onnx_stage-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(wheels: dict[str, Path]) -> Path:
    return wheels["from the sdist"]


def test_both_ways_of_building_give_the_same_wheel(wheels: dict[str, Path]) -> None:
    checkout, sdist = (sorted(zipfile.ZipFile(w).namelist()) for w in wheels.values())
    assert checkout == sdist


def test_the_wheel_installs_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"onnx_stage", wheel.name.split("-py")[0] + ".dist-info"}
    for module in ("onnx_stage/records.py", "onnx_stage/tasks/load.py", "onnx_stage/tasks/register.py",
                   "onnx_stage/flows/convert_flow.py", "onnx_stage/flows/cli.py", "onnx_stage/keras_worker.py",
                   "onnx_stage/configs/default.yaml"):
        assert module in names
    assert not [name for name in names if "zoo" in name]


def test_the_installed_flow_imports_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel alone (the checkout taken off sys.path) imports the flow and the CLI, and nothing named
    `tasks` or `flows` gets imported."""
    zipfile.ZipFile(wheel).extractall(tmp_path)
    probe = (f"import sys; sys.path = [{str(tmp_path)!r}] + [p for p in sys.path if p not in ('', {str(ROOT)!r})]\n"
             "import onnx_stage.flows.convert_flow, onnx_stage.flows.cli\n"
             "print(onnx_stage.flows.convert_flow.__file__)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tasks', 'flows', 'model_zoo')))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    module_file, stray = result.stdout.strip().splitlines()[-2:]
    assert module_file.startswith(str(tmp_path))
    assert stray == "[]"
