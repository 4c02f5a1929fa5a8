"""Train the seeds' Spatial Transformer Network on CIFAR-10 with the fused stn_ext op.

    python train/cifar.py --data ../shared/data/cifar10-jpeg.tar.xz            # 50 epochs
    python train/cifar.py --data ... --recipe seed                            # the seeds' recipe
    torchrun --standalone --nproc_per_node=2 train/cifar.py --data ...        # DDP

The whole dataset lives in memory as uint8 tensors (on the GPU when training there); an epoch is
one shuffled index tensor, each batch is gathered, flipped and normalised as one tensor, and the
step loop syncs with the host only every --log-interval batches. On a GPU the whole step (gather,
forward, backward, optimizer) is replayed from one captured CUDA graph (--cuda-graph). A run
leaves metrics.json, checkpoint.pt, curves.png and stn.png in --out.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion
from tqdm import tqdm

import stn_ext
from stn_ext.nn import SpatialTransformer
from _cli import HelpFormatter, check_device, non_negative_int, positive_float, positive_int
from cifar_data import (MEAN, STD, DatasetError, Split, atomic_write,
                        flip_first_half, load_cifar10, normalize)


class Net(nn.Module):
    """The seeds' CIFAR-10 STN: a spatial transformer in front of a small LeNet-style classifier."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        localization = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=7), nn.MaxPool2d(2), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(True))
        fc_loc = nn.Sequential(nn.Linear(10 * 4 * 4, 32), nn.ReLU(True), nn.Linear(32, 6))
        self.stn = SpatialTransformer(localization, fc_loc, backend=backend)
        self.conv1 = nn.Conv2d(3, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(0.5)
        self.fc1 = nn.Linear(20 * 5 * 5, 50)
        self.fc1_drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stn(x)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = self.fc1_drop(x)
        return F.log_softmax(self.fc2(x), dim=1)


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, schedule, regularisation and augmentation."""
    optimizer: str = "sgd"          # "sgd" or "adamw"
    lr: float = 0.01
    stn_lr_scale: float = 1.0       # the spatial transformer's learning rate = lr * this
    weight_decay: float = 0.0
    schedule: str = "constant"      # "constant" or "cosine" (per step, to 0 at the last step)
    warmup_epochs: float = 0.0      # linear warm-up from 0, per step
    flip: bool = False              # horizontal flips of half of each (shuffled) batch
    dropout_until: float = 1.0      # dropout is on for this fraction of the epochs, then off


RECIPES = {
    # What the seeds did: plain SGD at 0.01, batch 64, no augmentation.
    "seed": Recipe(),
    # The seeds' model is fragile at high learning rates (its localisation net collapses to
    # degenerate transforms), so: Adam-style steps, a 10x smaller rate for the transformer,
    # a warm-up and a cosine decay to zero, plus flips. Its two 50% dropouts leave so small a
    # model underfitting (training loss above test loss), so they are on for the first half
    # only ("early dropout", Liu et al., ICML 2023): +7.5 points in a 20-epoch trial.
    "default": Recipe(optimizer="adamw", lr=2e-3, stn_lr_scale=0.1, weight_decay=1e-4,
                      schedule="cosine", warmup_epochs=1.0, flip=True, dropout_until=0.5),
}


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------- distributed
@dataclass
class World:
    """This process's place among the processes of a torchrun job (one process without it)."""
    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "World":
        """Join the torchrun job this process was started in, if any."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ["RANK"]), size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        objects = [None] * self.size
        dist.all_gather_object(objects, obj)
        return objects


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default=None,
                   help="cifar-10-batches-py folder, image folder (train/<class>/*, "
                        "test/<class>/*) or a .tar/.tar.gz/.tar.xz of either [./data]")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs to train [50]")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="global batch size, split evenly across torchrun processes [64]")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate [the recipe's]")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="seed: the seeds' plain SGD; default: the tuned recipe [default]")
    p.add_argument("--seed", type=non_negative_int, default=None, help="random seed [0]")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda if available under auto [auto]")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda", "triton", "torch"),
                   default="auto", help="stn_ext backend of the spatial transformer [auto]")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder [runs/<timestamp>, or the resumed run's folder]")
    p.add_argument("--resume", type=Path, default=None, metavar="PATH",
                   help="continue the run whose folder or checkpoint.pt this is")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per process [the CPU cores / processes on this machine]")
    p.add_argument("--eval-batch-size", type=positive_int, default=1000,
                   help="batch size of the evaluation [1000]")
    p.add_argument("--log-interval", type=positive_int, default=100,
                   help="batches between loss checks (each one syncs with the device) [100]")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where to keep the decoded dataset [next to --data if writable, "
                        "else ./data/cache in the repository]")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and stn.png")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each training step from one captured CUDA graph [on for a "
                        "single process on a GPU, else off]")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before any work starts: ranges by the flags' types, then the
    device and the backend against this machine (argparse's error format, exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    check_backend(parser, args.backend, args.device)
    if args.cuda_graph and not (args.device == "cuda" or (args.device == "auto"
                                                          and torch.cuda.is_available())):
        parser.error("--cuda-graph needs a CUDA device (--device cuda)")
    return args


def check_backend(parser: argparse.ArgumentParser, backend: str, device: str) -> None:
    """parser.error unless the spatial transformer's --backend can run on --device here."""
    if backend in ("auto", "torch"):
        return
    available = stn_ext.available_backends()
    if backend not in available:
        parser.error(f"--backend {backend} is not available here (available: "
                     f"{', '.join(['auto'] + available)})")
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if backend == "cpu" and on_cuda:
        parser.error("--backend cpu needs --device cpu")
    if backend == "cuda" and not on_cuda:
        parser.error("--backend cuda needs a CUDA device (--device cuda)")
    if backend == "triton" and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--backend triton needs a CUDA device (--device cuda), or TRITON_INTERPRET=1 "
                     "to run interpreted on the CPU")


# Settings that define a run: restored from the checkpoint on --resume.
RUN_DEFAULTS = {"data": "./data", "epochs": 50, "batch_size": 64, "lr": None,
                "recipe": "default", "seed": 0, "limit_train": None}


def resolve_run_settings(args: argparse.Namespace, checkpoint: Optional[dict]) -> None:
    saved = checkpoint["config"]["run"] if checkpoint else RUN_DEFAULTS
    for key, default in saved.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, default)
        elif checkpoint and key != "data" and given != default:
            raise SystemExit(f"error: --{key.replace('_', '-')} {given} differs from the resumed "
                             f"run's {default}; leave it out to continue that run")


# ----------------------------------------------------------------------------- training
def make_optimizer(model: Net, recipe: Recipe, lr: float,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """capturable: the optimizer of a step captured in a CUDA graph (fused kernels that read
    their step counts from the device; the learning rates become device tensors with
    lr_tensors once the scheduler has read them)."""
    stn_params = list(model.stn.parameters())
    stn_ids = {id(p) for p in stn_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in stn_ids], "lr": lr},
              {"params": stn_params, "lr": lr * recipe.stn_lr_scale}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=recipe.weight_decay,
                               fused=True if capturable else None)
    if recipe.optimizer == "adamw":
        # The fused kernel: half the time of the per-parameter loop for this model on CPU.
        return torch.optim.AdamW(groups, lr=lr, weight_decay=recipe.weight_decay, fused=True,
                                 capturable=capturable)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold each group's learning rate in a device tensor: a captured step reads it there, and
    the scheduler (built before, so its base rates stay floats) fills it in place, without a
    sync."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def optimizer_checkpoint(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with learning rates as floats (lr_tensors' undone), as an eager
    run keeps them: a checkpoint resumes the same way with or without CUDA graphs."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])
    return state


def scheduler_checkpoint(scheduler) -> dict:
    """scheduler.state_dict() with its last learning rates as floats (see optimizer_checkpoint)."""
    state = scheduler.state_dict()
    state["_last_lr"] = [float(lr) for lr in state["_last_lr"]]
    return state


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int):
    total = steps_per_epoch * epochs
    warmup = round(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_state(shuffle_gen: torch.Generator) -> dict:
    """What decides the rest of the run's randomness: the shuffle and the dropout masks."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, shuffle_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle_gen.set_state(state["shuffle"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_share(train_images: int, batch_size: int, world: World) -> Tuple[int, int, int]:
    """(images, batch, steps) of one rank's epoch: every rank takes an equal share of the
    shuffled set (dropping up to world.size - 1 images) so all run the same number of steps."""
    shard = train_images // world.size
    local_batch = batch_size // world.size
    return shard, local_batch, math.ceil(shard / local_batch)


class CudaGraphs:
    """How TrainSteps warms a step up and captures it on a CUDA device (torch.cuda.graph)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side_stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warm_up(self):
        """The steps before a capture run off the default stream, as capture requires."""
        self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side_stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.side_stream)

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """Records step() (without running it) and returns the graph's replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay


class TrainSteps:
    """The optimisation step of one batch (gather, flip, forward, loss, backward, optimizer),
    its loss added to loss_sum on the device.

    With `graphs` (CudaGraphs), full batches replay one captured graph: a batch's indices are
    copied into the static buffer the graph reads. The first WARM_UP full batches (after the
    start, or after the modules' train/eval flags changed, which changes what the graph must
    do) run eagerly inside graphs.warm_up(); the next is captured and replayed. An epoch's last,
    shorter batch runs eagerly. Either way the same operations run in the same order, on the
    same batches. Why: this model's step moves a few hundred KB, so on a GPU its cost is the
    launches and the Python around them, which a replay skips. Should a capture fail, a warning
    says why and the run goes on without graphs."""

    WARM_UP = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, recipe: Recipe,
                 train: Split, batch_size: int, graphs=None):
        self.model, self.optimizer, self.recipe, self.train = model, optimizer, recipe, train
        self.graphs = graphs
        self.loss_sum = torch.zeros((), device=train.images.device)
        self.batch_indices = torch.zeros(batch_size, dtype=torch.long,
                                         device=train.images.device)
        self.replay: Optional[Callable[[], None]] = None
        self.modes: Optional[tuple] = None  # the modules' train flags of the captured graph
        self.warm_steps = 0

    def run_eagerly(self, indices: torch.Tensor) -> None:
        images = self.train.images.index_select(0, indices)
        if self.recipe.flip:
            images = flip_first_half(images)
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(self.model(normalize(images)),
                          self.train.labels.index_select(0, indices))
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def __call__(self, indices: torch.Tensor) -> None:
        if self.graphs is None or len(indices) != len(self.batch_indices):
            return self.run_eagerly(indices)
        modes = tuple(module.training for module in self.model.modules())
        if modes != self.modes:
            self.replay, self.modes, self.warm_steps = None, modes, 0
        self.batch_indices.copy_(indices)
        if self.replay is None and self.warm_steps < self.WARM_UP:
            self.warm_steps += 1
            with self.graphs.warm_up():
                return self.run_eagerly(self.batch_indices)
        if self.replay is None:
            try:
                self.replay = self.graphs.capture(lambda: self.run_eagerly(self.batch_indices))
            except RuntimeError as error:
                warnings.warn(f"capturing the training step in a CUDA graph failed ({error}); "
                              f"training on without graphs (--no-cuda-graph skips the attempt)")
                self.graphs = None
                return self.run_eagerly(indices)
        self.replay()


def use_cuda_graph(requested: Optional[bool], device: torch.device, world: World) -> bool:
    """--cuda-graph: on by default for one process on a GPU; a DDP step (its gradient buckets'
    hooks) is not captured."""
    if requested is None:
        return device.type == "cuda" and not world.enabled
    if requested and world.enabled:
        raise SystemExit("error: --cuda-graph runs in a single process; leave it out (or pass "
                         "--no-cuda-graph) under torchrun")
    if requested and device.type != "cuda":
        raise SystemExit("error: --cuda-graph needs a CUDA device (--device cuda)")
    return requested


def train_epoch(ddp_model, steps: TrainSteps, scheduler, recipe: Recipe, train: Split,
                epoch: int, epochs: int, batch_size: int, shuffle_gen: torch.Generator,
                world: World, log_interval: int) -> float:
    """One epoch over this rank's shard; returns the mean training loss over all ranks."""
    ddp_model.train()
    if epoch > recipe.dropout_until * epochs:
        for module in ddp_model.modules():
            if isinstance(module, (nn.Dropout, nn.Dropout2d)):
                module.eval()
    # Every rank draws the same permutation and takes its own share of it.
    shard, local_batch, steps_per_epoch = rank_share(len(train), batch_size, world)
    order = torch.randperm(len(train), generator=shuffle_gen)
    order = order[world.rank * shard:(world.rank + 1) * shard].to(train.images.device)
    steps.loss_sum.zero_()
    bar = tqdm(total=shard * world.size, desc=f"epoch {epoch}", unit="img", leave=False,
               disable=not world.is_main, mininterval=0.5, dynamic_ncols=True)
    for step in range(steps_per_epoch):
        # Gathering each batch as it is needed keeps the copies in cache: ~10x cheaper than
        # permuting the whole set up front.
        indices = order[step * local_batch:(step + 1) * local_batch]
        steps(indices)
        scheduler.step()
        bar.update(len(indices) * world.size)
        if (step + 1) % log_interval == 0 or step + 1 == steps_per_epoch:
            mean_loss = (world.sum(steps.loss_sum.clone()).item()
                         / ((step + 1) * world.size))
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingDiverged(f"the training loss became {mean_loss} in epoch {epoch} "
                                       f"(by batch {step + 1}); try a lower --lr")
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
    bar.close()
    return mean_loss


@torch.inference_mode()
def evaluate(model: Net, test: Split, batch_size: int, world: World):
    """(mean NLL, number correct) over the whole test set, each rank taking a share."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=test.images.device)
    for start in range(world.rank * batch_size, len(test), batch_size * world.size):
        log_probs = model(normalize(test.images[start:start + batch_size]))
        labels = test.labels[start:start + batch_size]
        totals[0] += F.nll_loss(log_probs, labels, reduction="sum").double()
        totals[1] += (log_probs.argmax(1) == labels).sum()
    loss_sum, correct = world.sum(totals).tolist()
    return loss_sum / len(test), int(correct)


# ----------------------------------------------------------------------------- outputs
def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def plot_curves(epochs: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(x, [e["train_loss"] for e in epochs], label="train")
    ax_loss.plot(x, [e["test_loss"] for e in epochs], label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(x, [e["test_acc"] for e in epochs], color="C2")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.inference_mode()
def plot_stn(model: Net, images: torch.Tensor, path: Path) -> None:
    """Test images before and after the learned spatial transformer, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    model.eval()
    x = normalize(images)
    mean = x.new_tensor(MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(STD).view(1, 3, 1, 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, batch, title in ((axes[0], x, "Dataset images"),
                             (axes[1], model.stn(x), "Transformed images")):
        grid = make_grid((batch * std + mean).clamp(0, 1).cpu(), nrow=8)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run
def pick_device(device_arg: str) -> torch.device:
    if device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # one GPU per process
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: process {local_rank} has no GPU of its own "
                             f"({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# What a checkpoint must hold to be resumed (torch.save'd by run() after every epoch).
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "history", "config")
# How to check each run setting a checkpoint restores; None is allowed where the default is None.
RUN_SETTING_TYPES = {"epochs": positive_int, "batch_size": positive_int, "lr": positive_float,
                     "seed": non_negative_int, "limit_train": positive_int}


def _unpickling_detail(error: Exception) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    for line in str(error).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return f" ({line[:160].rstrip('.')})"
    return ""


def _run_settings_problem(run_settings) -> Optional[str]:
    if not isinstance(run_settings, dict):
        return "its config lacks the run settings"
    missing = [key for key in RUN_DEFAULTS if key not in run_settings]
    if missing:
        return f"its run settings lack {', '.join(missing)}"
    for key, value in run_settings.items():
        if key not in RUN_DEFAULTS:
            return f"its run settings have an unknown {key!r}"
        if key == "data":
            ok = isinstance(value, str)
        elif key == "recipe":
            ok = isinstance(value, str) and value in RECIPES
        elif value is None:
            ok = RUN_DEFAULTS[key] is None
        else:
            parse = RUN_SETTING_TYPES[key]
            try:
                ok = not isinstance(value, bool) and parse(str(value)) == value
            except argparse.ArgumentTypeError:
                ok = False
        if not ok:
            return f"its run setting {key} = {value!r} is invalid"
    return None


def checkpoint_problem(checkpoint) -> Optional[str]:
    """What makes ``checkpoint`` (as torch.load returned it) unusable for resuming this job, in
    a few words, or None. Loads its states into a scratch model, optimizer and scheduler, so that
    a checkpoint accepted here resumes without surprises."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a dict"
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        return f"it lacks {', '.join(missing)}"
    epoch = checkpoint["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"its epoch {epoch!r} is not a positive integer"
    config = checkpoint["config"]
    if not isinstance(config, dict):
        return "its config is not a dict"
    problem = _run_settings_problem(config.get("run"))
    if problem:
        return problem
    history = checkpoint["history"]
    if not (isinstance(history, list) and len(history) == epoch
            and all(isinstance(entry, dict) for entry in history)):
        return f"its history is not a list of {epoch} epochs"

    model = Net("torch")
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    weights = checkpoint["model"]
    if not (isinstance(weights, dict) and all(isinstance(t, torch.Tensor)
                                              for t in weights.values())):
        return "its model is not a dict of tensors"
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        return ("its model is not this job's Net (" +
                "; ".join(f"{what} {', '.join(map(str, names[:3]))}"
                          + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                          for what, names in (("missing", missing), ("unexpected", unexpected))
                          if names) + ")")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            return (f"its model's {name} has shape {tuple(weights[name].shape)}, this job's Net "
                    f"{shape}")

    rng = checkpoint["rng"]
    if not (isinstance(rng, list) and rng):
        return "its random states are not a list, one per process"
    for state in rng:
        if not (isinstance(state, dict) and "torch" in state and "shuffle" in state):
            return "its random states lack torch or shuffle"
        for key in ("torch", "shuffle"):
            try:
                torch.Generator().set_state(state[key])
            except (TypeError, RuntimeError, ValueError):
                return f"its {key} random state is not one of torch's CPU generator"

    recipe = RECIPES[config["run"]["recipe"]]
    optimizer = make_optimizer(model, recipe, recipe.lr)
    for what, target in (("model", model), ("optimizer", optimizer),
                         ("scheduler", make_scheduler(optimizer, recipe, 1, 1))):
        try:
            target.load_state_dict(checkpoint[what])
        except Exception as e:  # noqa: BLE001  (each state's loader has its own errors)
            first_line = (str(e).strip().splitlines() or [""])[0][:160]
            return f"its {what} state does not fit this job's ({type(e).__name__}: {first_line})"
    return None


def load_checkpoint(resume: Path) -> dict:
    """The checkpoint at ``resume`` (a run folder or its checkpoint.pt), checked, or SystemExit
    with one line saying why not. It is loaded as data only (weights_only=True: tensors and
    plain containers), so a crafted file cannot run code."""
    path = resume / "checkpoint.pt" if resume.is_dir() else resume
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint at {path}")
    try:
        # TorchVersion: the config["torch"] of checkpoints written before it was stored as a
        # str; a str subclass, safe to build.
        with warnings.catch_warnings(), torch.serialization.safe_globals([TorchVersion]):
            warnings.simplefilter("ignore")  # e.g. about the pickle protocol of a foreign file
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SystemExit(f"error: refused the checkpoint {path}: it is not tensors and plain "
                         f"data as train/cifar.py writes them{_unpickling_detail(e)}; resume only "
                         f"a run folder or checkpoint.pt that train/cifar.py wrote") from None
    except Exception as e:  # a truncated or foreign file  # noqa: BLE001
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        raise SystemExit(f"error: cannot read the checkpoint {path} "
                         f"({type(e).__name__}: {first_line})") from None
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise SystemExit(f"error: {path} is not a checkpoint this job can resume: {problem}")
    if "torch" in checkpoint["config"]:
        checkpoint["config"]["torch"] = str(checkpoint["config"]["torch"])
    checkpoint["path"] = path
    return checkpoint


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; returns the metrics written to metrics.json."""
    started = time.perf_counter()
    device = pick_device(args.device)
    world = World.from_env(device)
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    resolve_run_settings(args, checkpoint)
    if checkpoint and len(checkpoint["rng"]) != world.size:
        raise SystemExit(f"error: the checkpoint was written by {len(checkpoint['rng'])} "
                         f"processes; resume it with as many")
    if args.batch_size % world.size:
        raise SystemExit(f"error: --batch-size {args.batch_size} must divide evenly across "
                         f"{world.size} processes")
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_processes))
    recipe = RECIPES[args.recipe]
    lr = args.lr if args.lr is not None else recipe.lr
    out = args.out or (checkpoint["path"].parent if checkpoint else
                       Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    log = print if world.is_main else (lambda *a, **k: None)

    # Rank 0 decodes and caches first, so the others just read the cache.
    for turn in ((True, False) if world.enabled else (True,)):
        if world.is_main == turn:
            train, test = load_cifar10(args.data, args.cache_dir, log=log)
        world.barrier()
    if args.limit_train:
        train = Split(train.images[:args.limit_train], train.labels[:args.limit_train])
    if len(train) < world.size:
        raise SystemExit(f"error: {len(train)} training images cannot be shared by "
                         f"{world.size} processes; raise --limit-train")
    train, test = train.to(device), test.to(device)

    torch.manual_seed(args.seed + world.rank)  # dropout differs per rank; DDP syncs the weights
    model = Net(args.backend).to(device, memory_format=torch.channels_last)
    ddp_model = (nn.parallel.DistributedDataParallel(model, [device] if device.type == "cuda"
                                                     else None) if world.enabled else model)
    _, local_batch, steps_per_epoch = rank_share(len(train), args.batch_size, world)
    cuda_graph = use_cuda_graph(args.cuda_graph, device, world)
    optimizer = make_optimizer(model, recipe, lr, capturable=cuda_graph)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch, args.epochs)
    shuffle_gen = torch.Generator().manual_seed(args.seed)

    config = {"run": {k: getattr(args, k) for k in RUN_DEFAULTS} | {"data": str(args.data)},
              "recipe": dataclasses.asdict(recipe) | {"lr": lr},
              "device": str(device), "device_name": (torch.cuda.get_device_name(device)
                                                     if device.type == "cuda" else "cpu"),
              "backend": args.backend, "cuda_graph": cuda_graph, "world_size": world.size,
              "threads": torch.get_num_threads(), "train_images": len(train),
              "test_images": len(test), "torch": str(torch.__version__)}
    history: List[dict] = []
    first_epoch = 1
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"][world.rank], shuffle_gen)
        history = checkpoint["history"]
        first_epoch = checkpoint["epoch"] + 1
        log(f"resuming {checkpoint['path']} after epoch {checkpoint['epoch']}")
    if cuda_graph:
        lr_tensors(optimizer, device)
    steps = TrainSteps(ddp_model, optimizer, recipe, train, local_batch,
                       CudaGraphs(device) if cuda_graph else None)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log(f"training on {len(train)} images ({world.size} x {device}, "
        f"{torch.get_num_threads()} threads), testing on {len(test)}; writing to {out} "
        f"(if stopped, continue with --resume {out})")

    metrics = {"config": config, "epochs": history}
    for epoch in range(first_epoch, args.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = train_epoch(ddp_model, steps, scheduler, recipe, train, epoch,
                                 args.epochs, args.batch_size, shuffle_gen, world,
                                 args.log_interval)
        train_time = time.perf_counter() - epoch_start
        test_loss, correct = evaluate(model, test, args.eval_batch_size, world)
        test_acc = 100.0 * correct / len(test)
        log(f"Train Epoch: {epoch} [{len(train)}/{len(train)} (100%)]\tLoss: {train_loss:.6f}")
        log(f"Test set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(test)} "
            f"({test_acc:.0f}%)")
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
                        "test_acc": test_acc,
                        "epoch_time_s": time.perf_counter() - epoch_start,
                        "images_per_s": len(train) / train_time})
        states = world.gather(rng_state(shuffle_gen))
        if world.is_main:
            atomic_write(out / "checkpoint.pt", lambda f: torch.save({
                "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer_checkpoint(optimizer),
                "scheduler": scheduler_checkpoint(scheduler), "rng": states, "history": history,
                "config": config}, f))
            write_json(out / "metrics.json", metrics)

    if history and world.is_main:
        best = max(history, key=lambda e: e["test_acc"])
        metrics["summary"] = {"final_test_acc": history[-1]["test_acc"],
                              "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
                              "wall_time_s": time.perf_counter() - started}
        write_json(out / "metrics.json", metrics)
        if not args.no_plots:
            plot_curves(history, out / "curves.png")
            plot_stn(model, test.images[:32], out / "stn.png")
        log(f"final test accuracy {history[-1]['test_acc']:.2f}% (best {best['test_acc']:.2f}% "
            f"at epoch {best['epoch']}); {metrics['summary']['wall_time_s']:.0f} s; "
            f"results in {out}")
    # Ranks leave together: a rank that tears its process group down while rank 0 is still
    # writing files can abort in gloo's shutdown. (Only on success: after an error the peers
    # may never arrive.)
    world.barrier()
    return metrics


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (DatasetError, TrainingDiverged) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
