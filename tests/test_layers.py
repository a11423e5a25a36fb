"""The package's layers, each importing only from its own layer and those below it:
the op (checks, dispatch, reference), CAM (targets, BatchCAM, capture, explain, smoothing,
metrics), training (losses, models, data, checkpoints, trainer, pictures, comparisons over seeds)
and the command line. The Triton kernels import nothing of
the package."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "python", "batchcam")
LAYERS = {
    0: {"_C", "definitions", "backend", "ops", "reference", "functional"},
    1: {"targets", "capture", "cam", "smoothing", "explanation", "metrics"},
    2: {"losses", "models", "data", "checkpoints", "outputs", "devices", "training", "figures", "study", "compare"},
    3: {"cli", "explain_cli", "evaluate_cli", "bench_cli", "__main__", "__init__"},
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def package_imports(path):
    """The modules of batchcam that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchcam."):
            found.add(node.module.split(".")[1])
    return found


MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PACKAGE, "*.py")))


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(LAYER_OF), set(MODULES) - set(LAYER_OF)


@pytest.mark.parametrize("module", MODULES)
def test_no_import_runs_up(module):
    for imported in package_imports(os.path.join(PACKAGE, module + ".py")):
        assert LAYER_OF[imported] <= LAYER_OF[module], f"{module} (layer {LAYER_OF[module]}) imports {imported}"


def test_kernels_know_nothing_of_the_package():
    for path in glob.glob(os.path.join(ROOT, "batchcam_kernels", "*.py")):
        tree = ast.parse(open(path).read())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n and n.split(".")[0] == "batchcam"], path
