import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the variable must be
# set before triton (or batchcam_kernels) is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device the GPU tests are deselected (reported as such, not as skips)."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if "gpu" in item.keywords]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if "gpu" not in item.keywords]


@pytest.fixture(autouse=True)
def _triton_interpreter_on_cpu(request):
    """For the ("cpu", "triton") cases of helpers.BACKENDS, the op's CPU kernels are the Triton
    ones, interpreted."""
    params = getattr(request.node, "callspec", None)
    params = params.params if params else {}
    if params.get("device") == "cpu" and params.get("backend") == "triton":
        from helpers import triton_kernels_on_cpu

        with triton_kernels_on_cpu():
            yield
    else:
        yield


@pytest.fixture
def poisoned_empty():
    """Fills every torch.empty (kernels' outputs included) with NaN, so unwritten elements fail."""
    import torch.utils.deterministic as deterministic

    previous = (torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0])
    deterministic.fill_uninitialized_memory = previous[1]
