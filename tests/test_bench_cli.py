"""`batchcam bench`: the table it prints, its checks of the maps before timing, its errors."""
import pytest
import torch

import batchcam
from batchcam import bench_cli
from batchcam.cli import main as cli_main


def table_rows(text):
    """The data rows of the printed Markdown table, as lists of cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_prints_both_passes_of_every_shape(capsys):
    code = cli_main(["bench", "--shape", "2,8,3,5", "--shape", "1,4,7", "--min-run-time", "0.01"])
    assert code == 0
    rows = table_rows(capsys.readouterr().out)
    assert [tuple(r[:3]) for r in rows] == [("gradcam", "2,8,3,5", "fwd"), ("gradcam", "2,8,3,5", "fwd+bwd"),
                                            ("gradcam", "1,4,7", "fwd"), ("gradcam", "1,4,7", "fwd+bwd")]
    for _, _, _, fused_us, reference_us, ratio in rows:
        assert float(fused_us) > 0 and float(reference_us) > 0
        assert float(ratio) == pytest.approx(float(reference_us) / float(fused_us), rel=0.02, abs=0.006)


def test_every_method(capsys):
    code = cli_main(["bench", "--shape", "2,8,3,5", "--method", "all", "--min-run-time", "0.01"])
    assert code == 0
    rows = table_rows(capsys.readouterr().out)
    assert [(r[0], r[2]) for r in rows] == [(m, p) for m in batchcam.definitions.METHODS for p in ("fwd", "fwd+bwd")]


def test_channels_last_and_half_dtypes(capsys):
    code = cli_main(["bench", "--shape", "3,5,4,3,2", "--channels-last", "--dtype", "bfloat16",
                     "--min-run-time", "0.01"])
    assert code == 0
    assert len(table_rows(capsys.readouterr().out)) == 2


@pytest.mark.parametrize("argv, message", [
    (["--shape", "4,x"], "comma-separated integers"),
    (["--shape", "4,3"], "at least one spatial dim"),
    (["--shape", "4,0,3"], "all >= 1"),
    (["--shape", "4,3,5", "--channels-last"], "4-D or 5-D"),
    pytest.param(["--device", "cuda"], "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_bad_shapes_fail_before_timing(argv, message, capsys):
    assert cli_main(["bench", *argv]) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert table_rows(captured.out) == []


def test_disagreeing_maps_are_not_timed(monkeypatch):
    fused_cam = bench_cli.fused_cam

    def off_by_a_little(activations, gradients, *, method="gradcam", backend=None):
        maps = fused_cam(activations, gradients, method=method, backend=backend)
        return maps if backend == "reference" else maps + 1e-3

    monkeypatch.setattr(bench_cli, "fused_cam", off_by_a_little)
    with pytest.raises(RuntimeError, match="differ by 0.001"):
        bench_cli.bench_shape((2, 4, 3, 3), torch.float32, torch.device("cpu"), False, 0.01)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_bench_on_gpu(backend, capsys):
    code = cli_main(["bench", "--device", "cuda", "--backend", backend, "--shape", "8,64,7,7",
                     "--shape", "2,32,14,14", "--channels-last", "--min-run-time", "0.05"])
    assert code == 0
    out = capsys.readouterr().out
    assert torch.cuda.get_device_name() in out
    assert len(table_rows(out)) == 4
