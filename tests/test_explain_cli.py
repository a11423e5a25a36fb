"""`batchcam explain` on a user's own data and model: a folder of RGB PNGs, a model given as an import
path with a state-dict file, a layer by name, targets, file names by class, grid and maps files;
and `batchcam.overlay` itself."""
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import batchcam
from batchcam.cli import main as cli_main

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples import shapes  # noqa: E402

USER_MODULE = """
import torch
from torch import nn


def shapes_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = shapes_net()

    def forward(self, x):
        return {"logits": self.body(x), "extra": x.mean()}
"""


def draw_shapes(folder, count=5):
    """RGB PNGs of coloured shapes (examples/shapes.py), their names with spaces."""
    os.makedirs(folder)
    for i, image in enumerate(shapes.draw(count)[0]):
        Image.fromarray(image).save(os.path.join(folder, f"shape {i}.png"))


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    from userpkg.nets import shapes_net

    weights = tmp_path / "weights.pt"
    torch.save(shapes_net().state_dict(), weights)
    return str(weights)


def test_explain_a_folder_of_rgb_pngs_with_an_import_path_model(tmp_path, user_model, capsys):
    draw_shapes(tmp_path / "images")
    (tmp_path / "classes.txt").write_text("square\nround disc\nbar\n")
    out, maps_path = tmp_path / "explain", tmp_path / "maps.npy"
    argv = ["explain", "userpkg.nets:shapes_net", str(tmp_path / "images"), "--weights", user_model, "--layer", "2",
            "--mean", "0.5", "--std", "0.25,0.25,0.25", "--classes", str(tmp_path / "classes.txt"),
            "--maps", str(maps_path), "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    maps = np.load(maps_path)
    assert maps.shape == (5, 64, 64) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    names = sorted(os.listdir(out))
    assert "grid.png" in names and all(" " not in n for n in names)
    overlays = [n for n in names if n != "grid.png"]
    assert len(overlays) == 5 and all(n.startswith("shape_") for n in overlays)
    assert all(n.split("-")[-1][:-4] in ("square", "round_disc", "bar") for n in overlays)
    assert Image.open(out / overlays[0]).size == (64, 64) and Image.open(out / overlays[0]).mode == "RGB"

    # The same maps by hand: the model, the weights, the normalisation, explain at layer "2".
    from userpkg.nets import shapes_net

    model = shapes_net().eval()
    model.load_state_dict(torch.load(user_model, weights_only=True))
    files = sorted(os.listdir(tmp_path / "images"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "images" / f), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for f in files])
    expected = batchcam.explain(model, model[2], (x - 0.5) / 0.25)
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-6)

    # --target INDEX: the class explained, and the prediction where it differs, in each name
    preds = model((x - 0.5) / 0.25).argmax(1).tolist()
    out2 = tmp_path / "explain-bar"
    assert cli_main([*argv[:-5], "--target", "2", "--out", str(out2), "--no-progress"]) == 0
    classes = ["square", "round_disc", "bar"]
    expected_names = {f"{f[:-4].replace(' ', '_')}-bar" + ("" if p == 2 else f"-pred-{classes[p]}") + ".png"
                      for f, p in zip(files, preds)}
    assert set(os.listdir(out2)) - {"grid.png"} == expected_names


def test_explain_cli_user_errors_are_one_line(tmp_path, user_model, capsys):
    draw_shapes(tmp_path / "images", count=2)
    images = str(tmp_path / "images")
    cases = [
        (["userpkg.nets:missing", images], "cannot import it"),
        (["userpkg.nets:shapes_net", images, "--layer", "9"], "--layer 9: no such module"),
        (["userpkg.nets:shapes_net", images], "the model has no target_layer; pass --layer"),
        (["userpkg.nets:shapes_net", images, "--layer", "2", "--mean", "0.1,0.2"], "give 1 or 3 values"),
        (["userpkg.nets:DictNet", images, "--layer", "body.2"], "pass output="),
        (["userpkg.nets:shapes_net", str(tmp_path / "none"), "--layer", "2"], "no such file or folder"),
        (["userpkg.nets:shapes_net", "--layer", "2"], "give image files or folders"),
    ]
    for i, (argv, message) in enumerate(cases):
        assert cli_main(["explain", *argv, "--out", str(tmp_path / f"e{i}"), "--no-progress"]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert cli_main(["explain", "userpkg.nets:DictNet", images, "--layer", "body.2", "--output", "logits",
                     "--smooth", "tta", "--out", str(tmp_path / "dict"), "--no-progress"]) == 0
    assert cli_main(["explain", "x.pt", "--target", "first"]) == 2
    assert "--target: 'first' is not an integer" in capsys.readouterr().err


def test_overlay_blends_on_the_images_device():
    grey = torch.rand(2, 1, 9, 7)
    maps = torch.rand(2, 3, 3)
    rgb = batchcam.overlay(grey, maps, alpha=0.0)
    assert rgb.dtype == torch.uint8 and rgb.shape == (2, 3, 9, 7)
    assert torch.equal(rgb[:, 0], (grey[:, 0] * 255).round().to(torch.uint8))
    full = batchcam.overlay(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4), colormap="jet", alpha=1.0)
    assert full[:, :, 0, 0].tolist() == [[128, 0, 0]] * 2  # matplotlib's jet at 1.0
    low = batchcam.overlay(torch.zeros(1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4), alpha=1.0)
    assert low[0, :, 0, 0].tolist() == [0, 0, 128]  # and at 0.0
    nan = batchcam.overlay(grey[:1], torch.full((1, 9, 7), float("nan")), alpha=1.0)
    assert torch.equal(nan, low[:, :, :1, :1].expand(1, 3, 9, 7))
    with pytest.raises(ValueError, match="colormap must be one of"):
        batchcam.overlay(grey, maps, colormap="rainbow")
    with pytest.raises(ValueError, match=r"maps must be \(2, h, w\)"):
        batchcam.overlay(grey, maps[0])


def test_evaluate_writes_a_row_per_layer_and_method(tmp_path, user_model, capsys):
    draw_shapes(tmp_path / "images", count=4)
    out = tmp_path / "evaluate"
    assert cli_main(["evaluate", "userpkg.nets:shapes_net", str(tmp_path / "images"), "--weights", user_model,
                     "--layer", "1,3", "--method", "gradcam,layercam", "--steps", "4", "--out", str(out),
                     "--no-progress"]) == 0, capsys.readouterr().err
    rows = json.load(open(out / "evaluate.json"))["rows"]
    assert [(r["layer"], r["method"]) for r in rows] == [("1", "gradcam"), ("1", "layercam"), ("3", "gradcam"),
                                                          ("3", "layercam")]
    assert "| 3 | layercam |" in open(out / "evaluate.md").read()

    from userpkg.nets import shapes_net

    model = shapes_net().eval()
    model.load_state_dict(torch.load(user_model, weights_only=True))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "images" / f), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for f in sorted(os.listdir(tmp_path / "images"))])
    maps, logits = batchcam.explain(model, model[3], x, method="layercam", return_logits=True)
    _, auc = batchcam.metrics.deletion_curve(model, x, maps, logits.argmax(1), steps=4)
    assert rows[3]["deletion_auc"] == pytest.approx(auc.mean().item(), abs=1e-6)
    assert 0 <= rows[3]["increase"] <= 100
