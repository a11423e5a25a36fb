"""Training with Batch-CAM: protocols, checkpoints, resume, evaluation, several processes.

Protocols (the loss of one step, maps for the labels' classes):
- "baseline":  cross-entropy;
- "prototype": + prototype_weight * PrototypeLoss;
- "batchcam":  + prototype_weight * PrototypeLoss + batchcam_weight * BatchCAMLoss.
`cam_grad="second-order"` lets the map losses train through the gradients that weight the
channels (autograd.grad with create_graph=True); "detached" treats those weights as constants.

The output folder is checked before any work: one that holds files is refused unless
`resume=True` (continue the run in it) or `overwrite=True` (start a new run there). Each epoch
ends with an atomic checkpoint (`batchcam.checkpoints`); `resume=True` continues from it with the
same result as an uninterrupted run (the data order of an epoch depends only on the seed and the
epoch). A NaN or infinite loss, or non-finite weights at the end of an epoch, stop the run with
`TrainingDiverged`, leaving the last checkpoint whose weights and loss were finite in place.
Under `torchrun` the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU): each
process takes its share of every global batch, prototypes and metrics are reduced across
processes, and only rank 0 writes.
"""
import dataclasses
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .backend import validate_backend
from .cam import BatchCAM
from .definitions import METHODS
from .checkpoints import CheckpointError, checkpoint_epochs, load_checkpoint, load_into, save_checkpoint
from .data import Split, load_split, stratified_indices
from .devices import resolve_device
from .losses import DISTANCES, BatchCAMLoss, PrototypeLoss, class_prototypes, distance, reconstruct, ssim
from .models import MODELS, build_model
from .outputs import prepare_output_dir

PROTOCOLS = ("baseline", "prototype", "batchcam")
CAM_GRADS = ("second-order", "detached")
# The allowed values of TrainConfig's fields that name a choice (the backend is checked by batchcam.backend).
CONFIG_CHOICES = {"model": tuple(MODELS), "protocol": PROTOCOLS, "cam_grad": CAM_GRADS, "distance": DISTANCES,
                  "optimizer": ("adam", "sgd"), "cam_method": METHODS}


@dataclass
class TrainConfig:
    model: str = "simple-cnn"
    dataset: str = "default"
    data_dir: str | None = None
    protocol: str = "batchcam"
    epochs: int = 5
    batch_size: int = 256  # global: split evenly across processes
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    prototype_weight: float = 1.0
    batchcam_weight: float = 1.0
    distance: str = "l2"
    cam_grad: str = "second-order"
    cam_method: str = "gradcam"
    backend: str = "fused"
    amp: bool = False  # bfloat16 autocast
    compile: bool = False
    train_limit: int | None = None  # a stratified slice of the training set (None: all of it)
    test_limit: int | None = None
    device: str | None = None  # None: cuda if available, else cpu
    out: str = "runs/batchcam"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self):
        for name, allowed in CONFIG_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        validate_backend(self.backend)
        for name in ("epochs", "batch_size", "train_limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        return self


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, values):
        """Sums a list of floats over the processes."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()


def init_processes(config: TrainConfig) -> Processes:
    """Joins the torchrun process group when WORLD_SIZE > 1; picks the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local if world > 1 else device.index or 0)
        torch.cuda.set_device(device)
    return Processes(rank, world, device)


# --- data ---------------------------------------------------------------------------------------


def load_data(config: TrainConfig):
    """(train, test) splits, each optionally cut to a stratified slice of exactly its limit;
    both carry the classes of the two together (the number of classes comes from the labels)."""
    splits = []
    for split, limit in (("train", config.train_limit), ("test", config.test_limit)):
        data = load_split(config.dataset, split, config.data_dir)
        where = config.data_dir or f"data set {config.dataset!r}"
        if len(data) == 0:
            raise ValueError(f"{where}: the {split} split holds no images")
        if limit is not None and limit < len(data):
            classes = len(data.labels.unique())
            if limit < classes:
                raise ValueError(f"{split}_limit {limit} is below the {classes} classes of {where}: a stratified "
                                 "slice needs at least one image per class")
            keep = torch.from_numpy(stratified_indices(data.labels.numpy(), limit, config.seed))
            data = Split(data.images[keep], data.labels[keep], data.classes)
        splits.append(data)
    classes = max((s.classes for s in splits), key=len)
    return [Split(s.images, s.labels, classes) for s in splits]


def epoch_batches(n, batch_size, seed, epoch, procs: Processes):
    """This process's share of each global batch of one epoch (the order depends only on
    seed and epoch, so a resumed run sees the same batches)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size][procs.rank::procs.world]


# --- model and step -----------------------------------------------------------------------------


class _Split(nn.Module):
    """head(body(x)) with separately compiled parts: the body's output stays a real autograd
    tensor, so BatchCAM can differentiate the scores with respect to it."""

    def __init__(self, body, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x):
        return self.head(self.body(x))


def compiled_runner(model, cam_grad):
    """What `compile=True` covers: torch.compile of a whole model hides the target layer's output
    from autograd.grad, and compiled graphs support no double backward. So the body (input to
    target layer) is compiled always, and the head only with cam_grad="detached"; with
    "second-order" the head runs eagerly (its backward is differentiated again). The compiled
    head's backward runs twice a step (BatchCAM's autograd.grad of the scores, then the loss's
    backward), which donated buffers forbid: `train` turns them off while it runs."""
    head = torch.compile(model.head) if cam_grad == "detached" else model.head
    return _Split(torch.compile(model.body), head)


class TrainStep:
    """The training step of config.protocol: `step(x, y)` returns (loss, logits) and the caller
    runs backward. `cam_class` computes the maps (benchmarks swap in a stand-in). A context
    manager: leaving it removes the hook the maps need from the model."""

    def __init__(self, config, model, runner, prototypes, procs, cam_class=BatchCAM):
        target = runner.body if config.compile else model.target_layer
        self.config, self.runner, self.device = config, runner, procs.device
        self.cam = None
        if config.protocol != "baseline":
            self.cam = cam_class(runner, target, backend=config.backend, method=config.cam_method)
        self.proto_loss = PrototypeLoss(prototypes, config.distance).to(procs.device)
        self.batch_loss = BatchCAMLoss(config.distance)

    def __call__(self, x, y):
        config = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
            if self.cam is None:
                logits = self.runner(x)
                return F.cross_entropy(logits, y), logits
            logits, maps = self.cam(x, y, create_graph=config.cam_grad == "second-order")
            maps = maps.float()
            loss = F.cross_entropy(logits, y) + config.prototype_weight * self.proto_loss(maps, x, y)
            if config.protocol == "batchcam":
                loss = loss + config.batchcam_weight * self.batch_loss(maps, x, y)
        return loss, logits

    def close(self):
        if self.cam is not None:
            self.cam.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def build_optimizer(config, model):
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


# --- checkpoints --------------------------------------------------------------------------------


def non_finite_parameter(model):
    """The name of the first parameter or buffer holding NaN or inf, else None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def restore(config, model, optimizer, ckpt_path, device):
    """Loads the run's checkpoint into model and optimizer; returns (epochs done, history)."""
    state = load_checkpoint(ckpt_path, device)
    for option in ("model", "optimizer", "dataset", "data_dir", "cam_method"):
        # An option the checkpoint does not name had its default then (cam_method came later).
        if state["config"].get(option, getattr(TrainConfig, option)) != getattr(config, option):
            raise CheckpointError(f"{ckpt_path}: was trained with {option} {state['config'].get(option)!r}, "
                                  f"not {getattr(config, option)!r}; resume with the same {option}")
    done = checkpoint_epochs(state)
    if done > config.epochs:
        raise ValueError(f"{ckpt_path}: holds {done} epochs, more than the {config.epochs} asked for; "
                         f"resume with epochs >= {done}")
    load_into(model, state["model"], ckpt_path, f"this {config.model}")
    load_into(optimizer, state["optimizer"], ckpt_path, f"this {config.optimizer} optimizer")
    return done, state["history"]


def load_trained(path, device="cpu"):
    """The model of a checkpoint written by `train`, on `device` in eval mode, and the checkpoint."""
    state = load_checkpoint(path)
    model = build_model(state["config"]["model"], len(state["classes"])).to(device)
    load_into(model, state["model"], path, state["config"]["model"])
    return model.eval(), state


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, data: Split, prototypes, config, procs: Processes, batch_size=512):
    """Test accuracy and L1 / L2 / SSIM between reconstructions (maps of the true class) and the
    prototypes, reduced over the processes (each takes every world-th sample)."""
    was_training = model.training
    model.eval()
    images, labels = data.images[procs.rank::procs.world], data.labels[procs.rank::procs.world]
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # correct, l1, l2, ssim, count
    with BatchCAM(model, model.target_layer, backend=config.backend, method=config.cam_method) as cam:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size].to(procs.device)
            y = labels[start:start + batch_size].to(procs.device)
            logits, maps = cam(x, y)
            recon, proto = reconstruct(maps.float(), x), prototypes[y]
            sums[0] += (logits.argmax(1) == y).sum().item()
            sums[1] += distance(recon, proto, "l1").sum().item()
            sums[2] += distance(recon, proto, "l2").sum().item()
            sums[3] += ssim(recon, proto).sum().item()
            sums[4] += len(y)
    model.train(was_training)
    correct, l1, l2, s, n = procs.all_sum(sums)
    n = max(n, 1)
    return {"test_accuracy": correct / n, "l1": l1 / n, "l2": l2 / n, "ssim": s / n}


def latency_ms(model, x, config, procs, repeats=10):
    """Median milliseconds per batch: a plain forward (no grad), and a forward with maps."""
    def timed(fn):
        times = []
        for _ in range(repeats + 2):
            if procs.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if procs.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times[2:])[repeats // 2] * 1e3

    was_training = model.training
    model.eval()
    with torch.no_grad():
        plain = timed(lambda: model(x))
    with BatchCAM(model, model.target_layer, backend=config.backend, method=config.cam_method) as cam:
        with_maps = timed(lambda: cam(x))
    model.train(was_training)
    return {"forward": plain, "forward_with_maps": with_maps}


# --- the run ------------------------------------------------------------------------------------


def _train_epochs(config, model, optimizer, step, train_data, procs, first_epoch, history, ckpt_path):
    """Epochs first_epoch .. config.epochs - 1, a checkpoint after each; returns the history."""
    def diverged(what, epoch):
        kept = f"{ckpt_path} (epoch {epoch})" if epoch else "none (no epoch finished)"
        return TrainingDiverged(f"{what}: training stopped; the last good checkpoint is {kept}")

    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        batches = list(epoch_batches(len(train_data), config.batch_size, config.seed, epoch, procs))
        bar = tqdm(batches, desc=f"{config.protocol} epoch {epoch + 1}/{config.epochs}",
                   disable=not (procs.main and config.progress), leave=False)
        totals = [0.0, 0.0, 0.0]  # loss * n, correct, n
        for i, idx in enumerate(bar):
            x, y = train_data.images[idx].to(procs.device), train_data.labels[idx].to(procs.device)
            loss, logits = step(x, y)
            if not torch.isfinite(loss).all():
                raise diverged(f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals[0] += loss.item() * len(y)
            totals[1] += (logits.argmax(1) == y).sum().item()
            totals[2] += len(y)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.3f}")
        # The last step's update is in no loss yet: the weights are checked before they are saved.
        bad = non_finite_parameter(model)
        if bad is not None:
            raise diverged(f"{bad} became non-finite in epoch {epoch + 1}", epoch)
        loss_sum, correct, n = procs.all_sum(totals)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                        "seconds": time.perf_counter() - start})
        if procs.main:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                             "history": history, "config": dataclasses.asdict(config),
                             "classes": list(train_data.classes)}, ckpt_path)
            if config.progress:
                h = history[-1]
                tqdm.write(f"{config.protocol} epoch {epoch + 1}/{config.epochs}: loss {h['train_loss']:.4f} "
                           f"accuracy {h['train_accuracy']:.4f} ({h['seconds']:.1f} s)")
    return history


RUN_FILES = ("checkpoint.pt", "metrics.json", "examples.png")


def prepare_run_dir(config: TrainConfig) -> str:
    """Checks config.out before any work (see the module docstring); with overwrite, removes the
    files of the run it held. Returns the checkpoint's path."""
    ckpt_path = os.path.join(config.out, "checkpoint.pt")
    if config.resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"resume: no checkpoint at {ckpt_path}")
    prepare_output_dir(config.out, resume=config.resume, overwrite=config.overwrite, resumable="checkpoint.pt")
    if config.overwrite:
        for name in RUN_FILES:
            if os.path.exists(os.path.join(config.out, name)):
                os.remove(os.path.join(config.out, name))
    return ckpt_path


@dataclass
class TrainResult:
    """What a run gives: its metrics (test accuracy, L1 / L2 / SSIM, times, history, config),
    the trained model, the class prototypes and the test split (for pictures), and whether this
    process is the one that writes files (the first under torchrun)."""

    metrics: dict
    model: nn.Module
    prototypes: torch.Tensor
    test_data: Split
    writes_files: bool


def train(config: TrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Trains (or resumes) one run, a checkpoint in config.out after each epoch."""
    config.validate()
    # Under torchrun only the first process writes, so only it checks (the others stop with it).
    ckpt_path = os.path.join(config.out, "checkpoint.pt")
    if int(os.environ.get("RANK", "0")) == 0:
        ckpt_path = prepare_run_dir(config)
    procs = init_processes(config)
    torch.manual_seed(config.seed)
    train_data, test_data = load_data(config)
    num_classes = len(train_data.classes)
    model = (model or build_model(config.model, num_classes)).to(procs.device)
    first_epoch, history = 0, []
    optimizer = build_optimizer(config, model)
    if config.resume:
        first_epoch, history = restore(config, model, optimizer, ckpt_path, procs.device)

    shard = slice(procs.rank, None, procs.world)
    prototypes = class_prototypes(train_data.images[shard].to(procs.device),
                                  train_data.labels[shard].to(procs.device), num_classes)
    runner = compiled_runner(model, config.cam_grad) if config.compile else model
    if procs.world > 1:
        device_ids = [procs.device.index] if procs.device.type == "cuda" else None
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=device_ids)

    model.train()
    with TrainStep(config, model, runner, prototypes, procs) as step, \
            torch._functorch.config.patch(donated_buffer=False):
        history = _train_epochs(config, model, optimizer, step, train_data, procs, first_epoch, history, ckpt_path)
    metrics = evaluate(model, test_data, prototypes, config, procs)
    x = test_data.images[:config.batch_size].to(procs.device)
    metrics.update({
        "protocol": config.protocol, "model": config.model, "dataset": config.dataset,
        "epochs": len(history), "processes": procs.world, "device": str(procs.device),
        "train_seconds_per_epoch": sum(h["seconds"] for h in history) / max(len(history), 1),
        "latency_ms": latency_ms(model, x, config, procs), "history": history,
        "config": dataclasses.asdict(config),
    })
    return TrainResult(metrics, model, prototypes, test_data, procs.main)
