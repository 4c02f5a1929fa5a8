"""The CIFAR-10 training job (train/cifar.py, train/cifar_data.py) on tiny datasets built here."""
import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "train"))
import cifar  # noqa: E402
import cifar_data  # noqa: E402

SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
CONTAINERS = ("folder", ".tar", ".tar.gz", ".tar.xz")


@pytest.fixture(autouse=True)
def restore_threads():
    # Runs set their thread count; put the suite's back afterwards.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def random_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            np.arange(n) % 10)


def write_pickle_layout(root: Path, n_train: int = 50, n_test: int = 20):
    """cifar-10-batches-py as the official archive has it; returns the (train, test) arrays."""
    train, test = random_split(n_train, 1), random_split(n_test, 2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(batches, 1):
        write_batch(folder / f"data_batch_{i}", train[0][idx], train[1][idx])
    write_batch(folder / "test_batch", *test)
    return train, test


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    path.write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))


def write_image_folder(root: Path, per_class_train: int = 3, per_class_test: int = 2):
    """train/<class>/*.png and test/<class>/*.png (lossless, so pixels compare exactly); returns
    the arrays in the readers' order (classes taking turns)."""
    from PIL import Image

    arrays = {}
    for split, per_class, seed in (("train", per_class_train, 3), ("test", per_class_test, 4)):
        images, labels = random_split(10 * per_class, seed)
        order = []
        for i, (image, label) in enumerate(zip(images, labels)):
            cls = cifar_data.CLASSES[label]
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / cls / f"{i // 10:04d}.png")
            order.append((i // 10, label, i))
        idx = [i for *_, i in sorted(order)]
        arrays[split] = (images[idx], labels[idx])
    return arrays["train"], arrays["test"]


def package(folder: Path, container: str, tmp_path: Path) -> Path:
    """``folder`` itself, or an archive holding it under a top-level directory."""
    if container == "folder":
        return folder
    mode = {".tar": "w", ".tar.gz": "w:gz", ".tar.xz": "w:xz"}[container]
    archive = tmp_path / f"dataset{container}"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname="dataset")
    return archive


def tiny_pickle_dataset(tmp_path: Path, n_train: int = 256, n_test: int = 100) -> Path:
    write_pickle_layout(tmp_path / "tiny", n_train, n_test)
    return tmp_path / "tiny"


# ----------------------------------------------------------------------------- model
def test_net_shapes():
    model = cifar.Net("torch")
    x = torch.randn(5, 3, 32, 32)
    log_probs = model(x)
    assert log_probs.shape == (5, 10)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(5))
    assert model.stn.theta(x).shape == (5, 2, 3)
    assert sum(p.numel() for p in model.parameters()) == 39_884


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_identity_init_gives_identity_warp(backend):
    model = cifar.Net(backend)
    x = torch.randn(4, 3, 32, 32)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(4, 2, 3)
    torch.testing.assert_close(model.stn.theta(x), identity)
    # align_corners=False and the identity map sample every pixel at its own centre.
    torch.testing.assert_close(model.stn(x), x, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- data readers
@pytest.mark.parametrize("container", CONTAINERS)
def test_reads_pickle_layout(tmp_path, container):
    (train_x, train_y), (test_x, test_y) = write_pickle_layout(tmp_path / "src")
    path = package(tmp_path / "src", container, tmp_path)
    train, test = cifar_data.load_cifar10(path, cache_dir=tmp_path / "cache", download=False)
    assert train.images.dtype == torch.uint8 and train.images.shape == (50, 32, 32, 3)
    np.testing.assert_array_equal(train.images.numpy(), train_x)
    np.testing.assert_array_equal(train.labels.numpy(), train_y)
    np.testing.assert_array_equal(test.images.numpy(), test_x)
    np.testing.assert_array_equal(test.labels.numpy(), test_y)


@pytest.mark.parametrize("container", CONTAINERS)
def test_reads_image_folder_and_caches(tmp_path, container):
    (train_x, train_y), (test_x, test_y) = write_image_folder(tmp_path / "src")
    path = package(tmp_path / "src", container, tmp_path)
    messages = []
    for _ in range(2):
        train, test = cifar_data.load_cifar10(path, cache_dir=tmp_path / "cache",
                                              download=False, log=messages.append)
        np.testing.assert_array_equal(train.images.numpy(), train_x)
        np.testing.assert_array_equal(train.labels.numpy(), train_y)
        np.testing.assert_array_equal(test.images.numpy(), test_x)
        np.testing.assert_array_equal(test.labels.numpy(), test_y)
    assert messages[0].startswith("decoding") and messages[1].startswith("loaded")
    assert list(train.labels[:10]) == list(range(10))  # classes take turns


def test_cache_skips_read_only_folder(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "shared" / "src")
    archive = package(tmp_path / "shared" / "src", ".tar", tmp_path / "shared")
    shutil.rmtree(tmp_path / "shared" / "src")
    monkeypatch.setattr(cifar_data, "REPO_CACHE_DIR", tmp_path / "repo_cache")
    (tmp_path / "shared").chmod(0o555)
    try:
        cifar_data.load_cifar10(archive, download=False, log=lambda _: None)
        assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["dataset.tar"]
        assert len(list((tmp_path / "repo_cache").glob("dataset.tar.*.npz"))) == 1
    finally:
        (tmp_path / "shared").chmod(0o755)


@pytest.mark.parametrize("problem", ["missing", "not an archive", "corrupt archive",
                                     "corrupt image", "corrupt batch", "empty folder"])
def test_bad_dataset_is_a_clear_error(tmp_path, problem):
    path = tmp_path / "data.tar.xz"
    if problem == "not an archive":
        path = tmp_path / "data.bin"
        path.write_bytes(b"x")
    elif problem == "corrupt archive":
        path.write_bytes(os.urandom(1000))
    elif problem == "corrupt image":
        write_image_folder(tmp_path / "src", 1, 1)
        next((tmp_path / "src" / "train").rglob("*.png")).write_bytes(b"not a png")
        path = tmp_path / "src"
    elif problem == "corrupt batch":
        write_pickle_layout(tmp_path / "src")
        (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
        path = tmp_path / "src"
    elif problem == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
    with pytest.raises(cifar_data.DatasetError, match="--data"):
        cifar_data.load_cifar10(path, cache_dir=tmp_path / "cache", download=False)


def test_cli_bad_dataset_exits_without_traceback(tmp_path):
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b broken")
    result = subprocess.run([sys.executable, str(REPO / "train" / "cifar.py"),
                             "--data", str(tmp_path / "broken.tar.gz")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: cannot read the archive" in result.stderr and "--data" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_flip_first_half():
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    flipped = cifar_data.flip_first_half(images.clone())
    assert torch.equal(flipped[:2], images[:2].flip(2))
    assert torch.equal(flipped[2:], images[2:])
    assert torch.equal(flipped[0, :, 0], images[0, :, 31])


def test_normalize():
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    x = cifar_data.normalize(images)
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(cifar_data.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar_data.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.permute(0, 3, 1, 2) / 255 - mean) / std)


# ----------------------------------------------------------------------------- training runs
def train_args(data: Path, out: Path, *extra) -> list:
    return ["--data", str(data), "--out", str(out), "--threads", "1", "--no-plots",
            "--batch-size", "32", "--eval-batch-size", "50", *map(str, extra)]


def interrupted_run(data: Path, out: Path, epochs: int = 2) -> Path:
    """A run stopped in epoch 2's evaluation, leaving epoch 1's checkpoint; returns its path."""
    evaluate = cifar.evaluate
    calls = []

    def killed_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar, "evaluate", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            cifar.run(cifar.parse_args(train_args(data, out, "--epochs", epochs)))
    return out / "checkpoint.pt"


def test_resume_continues_exactly(tmp_path):
    data = tiny_pickle_dataset(tmp_path)
    straight = cifar.run(cifar.parse_args(train_args(data, tmp_path / "a", "--epochs", 3)))
    interrupted_run(data, tmp_path / "b", epochs=3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = cifar.run(cifar.parse_args(["--resume", str(tmp_path / "b"), "--threads", "1",
                                          "--no-plots", "--eval-batch-size", "50"]))

    def without_timings(epochs):
        return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "images_per_s")}
                for e in epochs]

    assert without_timings(resumed["epochs"]) == without_timings(straight["epochs"])
    # Plain data: loads with weights_only=True (no allow-list).
    weights_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    on_disk = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2, 3]
    assert on_disk["config"]["run"]["epochs"] == 3


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def epoch_one(tmp_path_factory):
    """(dataset, the checkpoint after epoch 1 of 2, as torch.load gives it)."""
    tmp_path = tmp_path_factory.mktemp("epoch_one")
    data = tiny_pickle_dataset(tmp_path, 64, 50)
    path = interrupted_run(data, tmp_path / "run")
    return data, torch.load(path, weights_only=True)


class RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint.pt can hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def resume_cli(checkpoint: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train" / "cifar.py"), "--resume",
                           str(checkpoint), "--threads", "1", "--no-plots"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("container", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_crafted_checkpoint_runs_nothing(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"epoch": 1, "config": RunsCode(marker)}
    path = tmp_path / "checkpoint.pt"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(container[-1])))
    with pytest.raises(SystemExit, match=r"^error: refused the checkpoint "):
        cifar.load_checkpoint(path)
    assert not marker.exists()
    if container != "torch.save":
        return
    result = resume_cli(tmp_path, tmp_path)  # the run folder, as a user would pass it
    assert not marker.exists()
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"error: refused the checkpoint {path}")
    assert not (tmp_path / "metrics.json").exists()


def mutated(checkpoint: dict, change: str) -> object:
    import copy

    checkpoint = copy.deepcopy(checkpoint)
    if change == "not a dict":
        return [checkpoint]
    if change.startswith("without "):
        del checkpoint[change.removeprefix("without ")]
    elif change == "another model":
        checkpoint["model"] = torch.nn.Linear(3, 4).state_dict()
    elif change == "a renamed parameter":
        checkpoint["model"]["fc3.weight"] = checkpoint["model"].pop("fc2.weight")
    elif change == "a reshaped parameter":
        checkpoint["model"]["fc2.weight"] = torch.zeros(5, 50)
    elif change == "a weights file":
        return checkpoint["model"]
    elif change == "an invalid run setting":
        checkpoint["config"]["run"]["batch_size"] = 0
    elif change == "an unknown recipe":
        checkpoint["config"]["run"]["recipe"] = "mystery"
    elif change == "no run settings":
        del checkpoint["config"]["run"]
    elif change == "another optimizer":
        checkpoint["optimizer"]["param_groups"] = checkpoint["optimizer"]["param_groups"][:1]
    elif change == "a bad random state":
        checkpoint["rng"][0]["shuffle"] = torch.zeros(3, dtype=torch.uint8)
    elif change == "a bad epoch":
        checkpoint["epoch"] = "1"
    elif change == "a short history":
        checkpoint["history"] = []
    else:
        raise AssertionError(change)
    return checkpoint


@pytest.mark.parametrize("change, message", [
    ("not a dict", "holds a list"),
    ("a weights file", "lacks epoch, model, optimizer"),
    ("without config", "lacks config"),
    ("without model", "lacks model"),
    ("without rng", "lacks rng"),
    ("another model", "not this job's Net (missing conv1.bias, conv1.weight, conv2.bias and "
                      "13 more; unexpected bias, weight)"),
    ("a renamed parameter", "missing fc2.weight; unexpected fc3.weight"),
    ("a reshaped parameter", "fc2.weight has shape (5, 50), this job's Net (10, 50)"),
    ("an invalid run setting", "run setting batch_size = 0 is invalid"),
    ("an unknown recipe", "run setting recipe = 'mystery' is invalid"),
    ("no run settings", "lacks the run settings"),
    ("another optimizer", "optimizer state does not fit"),
    ("a bad random state", "shuffle random state"),
    ("a bad epoch", "epoch '1' is not a positive integer"),
    ("a short history", "history is not a list of 1 epochs"),
])
def test_checkpoint_of_another_job_is_refused(tmp_path, epoch_one, change, message):
    _, checkpoint = epoch_one
    path = tmp_path / "checkpoint.pt"
    torch.save(mutated(checkpoint, change), path)
    with pytest.raises(SystemExit) as exit_info:
        cifar.load_checkpoint(path)
    text = str(exit_info.value)
    assert text.startswith(f"error: {path} is not a checkpoint this job can resume: ")
    assert message in text and "\n" not in text


def test_unreadable_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(SystemExit, match=r"^error: (refused|cannot read) the checkpoint"):
        cifar.load_checkpoint(path)
    with pytest.raises(SystemExit, match="^error: no checkpoint at"):
        cifar.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_older_code_still_resumes(tmp_path, epoch_one):
    """Checkpoints written before config["torch"] became a str hold a TorchVersion: allowed
    (a str subclass), and the run continues from them."""
    data, checkpoint = epoch_one
    old = dict(checkpoint, config=dict(checkpoint["config"], torch=torch.__version__))
    assert type(old["config"]["torch"]) is torch.torch_version.TorchVersion
    (tmp_path / "run").mkdir()
    torch.save(old, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(Exception, match="TorchVersion"):
        torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # no allow-list
    loaded = cifar.load_checkpoint(tmp_path / "run")
    assert type(loaded["config"]["torch"]) is str
    resumed = cifar.run(cifar.parse_args(["--resume", str(tmp_path / "run"), "--data", str(data),
                                          "--threads", "1", "--no-plots",
                                          "--eval-batch-size", "50"]))
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert type(resumed["config"]["torch"]) is str


def test_default_recipe_drops_out_in_the_first_half_only(tmp_path, monkeypatch):
    dropout_in_training_steps = []
    forward = cifar.Net.forward

    def recording_forward(self, x):
        if self.training:
            dropout_in_training_steps.append((self.conv2_drop.training, self.fc1_drop.training))
        return forward(self, x)

    monkeypatch.setattr(cifar.Net, "forward", recording_forward)
    data = tiny_pickle_dataset(tmp_path, 64, 20)  # two steps an epoch at batch 32
    cifar.run(cifar.parse_args(train_args(data, tmp_path / "run", "--epochs", 4)))
    assert cifar.RECIPES["default"].dropout_until == 0.5
    assert dropout_in_training_steps == 4 * [(True, True)] + 4 * [(False, False)]


class CpuGraphs:
    """A stand-in for cifar.CudaGraphs on the CPU: no stream, and a "capture" whose replay runs
    the step again. With it, TrainSteps' graph protocol (static index buffer, warm-up, capture,
    replay, eager last batch, recapture after a train/eval switch) runs here."""
    captures = 0

    def __init__(self, device):
        pass

    def warm_up(self):
        return contextlib.nullcontext()

    def capture(self, step):
        CpuGraphs.captures += 1
        return step


def test_graphed_steps_train_exactly_as_eager_ones(tmp_path, monkeypatch):
    """The --cuda-graph path (capturable optimizer, learning rates in tensors, TrainSteps with
    graphs) trains bitwise as the same run without graphs: same losses, same weights. 200
    images at batch 32: 6 full batches (3 warm-up, a capture, 2 replays) and a short one an
    epoch; the default recipe's dropout stops after epoch 2 of 4, so the step is captured
    twice. The checkpoint keeps plain float learning rates."""
    data = tiny_pickle_dataset(tmp_path, 200, 50)
    monkeypatch.setattr(cifar, "use_cuda_graph", lambda requested, device, world: True)
    monkeypatch.setattr(cifar, "CudaGraphs", lambda device: None)
    eager = cifar.run(cifar.parse_args(train_args(data, tmp_path / "eager", "--epochs", 4)))
    monkeypatch.setattr(cifar, "CudaGraphs", CpuGraphs)
    CpuGraphs.captures = 0
    graphed = cifar.run(cifar.parse_args(train_args(data, tmp_path / "graphed", "--epochs", 4)))
    assert CpuGraphs.captures == 2
    for key in ("train_loss", "test_loss", "test_acc"):
        assert [e[key] for e in graphed["epochs"]] == [e[key] for e in eager["epochs"]], key
    want = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    got = torch.load(tmp_path / "graphed" / "checkpoint.pt", weights_only=True)
    for name in want["model"]:
        assert torch.equal(got["model"][name], want["model"][name]), name
    for group in got["optimizer"]["param_groups"]:
        assert type(group["lr"]) is float
    assert all(type(lr) is float for lr in got["scheduler"]["_last_lr"])
    assert [g["lr"] for g in got["optimizer"]["param_groups"]] == pytest.approx(
        [g["lr"] for g in want["optimizer"]["param_groups"]], rel=1e-6)


class FailingGraphs(CpuGraphs):
    def capture(self, step):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_trains_on_without_graphs(tmp_path, monkeypatch):
    """A capture that fails (as torch.cuda.graph raises) leaves a warning naming the error, and
    the run trains on eagerly, exactly as without graphs."""
    data = tiny_pickle_dataset(tmp_path, 200, 50)
    monkeypatch.setattr(cifar, "use_cuda_graph", lambda requested, device, world: True)
    monkeypatch.setattr(cifar, "CudaGraphs", lambda device: None)
    eager = cifar.run(cifar.parse_args(train_args(data, tmp_path / "eager", "--epochs", 1)))
    monkeypatch.setattr(cifar, "CudaGraphs", FailingGraphs)
    with pytest.warns(UserWarning, match="CUDA graph failed .operation not permitted"):
        failed = cifar.run(cifar.parse_args(train_args(data, tmp_path / "failed", "--epochs",
                                                       1)))
    assert failed["epochs"][0]["train_loss"] == eager["epochs"][0]["train_loss"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lr_tensors_follow_the_schedule():
    """Learning rates in tensors (lr_tensors, after the scheduler is built) take the schedule's
    values in place: the tensors a captured step reads are the ones the scheduler fills."""
    model = cifar.Net("torch")
    recipe = cifar.RECIPES["default"]
    floats = cifar.make_optimizer(model, recipe, 1e-3)
    tensors = cifar.make_optimizer(model, recipe, 1e-3, capturable=True)
    schedules = [cifar.make_scheduler(o, recipe, 5, 2) for o in (floats, tensors)]
    cifar.lr_tensors(tensors, torch.device("cpu"))
    held = [group["lr"] for group in tensors.param_groups]
    for _ in range(7):
        for schedule in schedules:
            schedule.step()
        for group, tensor, want in zip(tensors.param_groups, held, floats.param_groups):
            assert group["lr"] is tensor
            assert float(tensor) == pytest.approx(want["lr"], rel=1e-6)


def test_cuda_graph_needs_one_process_on_a_gpu():
    cpu = torch.device("cpu")
    assert cifar.use_cuda_graph(None, cpu, cifar.World()) is False
    assert cifar.use_cuda_graph(False, torch.device("cuda"), cifar.World()) is False
    assert cifar.use_cuda_graph(None, torch.device("cuda"), cifar.World(0, 2)) is False
    with pytest.raises(SystemExit, match="single process"):
        cifar.use_cuda_graph(True, torch.device("cuda"), cifar.World(0, 2))
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        cifar.use_cuda_graph(True, cpu, cifar.World())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_graph_flag_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cifar.parse_args(["--cuda-graph"])
    assert exit_info.value.code == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err


def test_resume_refuses_other_settings(tmp_path):
    data = tiny_pickle_dataset(tmp_path, 64, 50)
    cifar.run(cifar.parse_args(train_args(data, tmp_path / "a", "--epochs", 1)))
    with pytest.raises(SystemExit, match="--lr 0.5 differs"):
        cifar.run(cifar.parse_args(["--resume", str(tmp_path / "a"), "--lr", "0.5"]))


def test_non_finite_loss_stops_with_a_message(tmp_path):
    data = tiny_pickle_dataset(tmp_path, 256, 50)
    with pytest.raises(SystemExit) as exit_info:
        cifar.main(train_args(data, tmp_path / "run", "--epochs", 2, "--recipe", "seed",
                              "--lr", "1e30", "--log-interval", "2"))
    assert "training loss became" in str(exit_info.value)


def test_outputs(tmp_path):
    data = tiny_pickle_dataset(tmp_path, 128, 50)
    args = train_args(data, tmp_path / "run", "--epochs", 2, "--recipe", "seed")
    args.remove("--no-plots")
    cifar.run(cifar.parse_args(args))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["recipe"]["optimizer"] == "sgd"
    assert [sorted(e) for e in metrics["epochs"]] == 2 * [sorted(
        ["epoch", "train_loss", "test_loss", "test_acc", "epoch_time_s", "images_per_s"])]
    for name in ("checkpoint.pt", "curves.png", "stn.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.skipif(not SHARED_JPEG.is_file(), reason=f"shared data absent: {SHARED_JPEG}")
def test_smoke_one_epoch_on_shared_jpeg(tmp_path, capsys):
    cifar.main(["--data", str(SHARED_JPEG), "--out", str(tmp_path / "run"), "--epochs", "1",
                "--limit-train", "640", "--no-plots"])
    stdout = capsys.readouterr().out
    assert "Train Epoch: 1 [640/640 (100%)]\tLoss: " in stdout
    assert "Test set: Average loss: " in stdout and "/10000 (" in stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["train_images"] == 640 and metrics["config"]["test_images"] == 10000
    assert 10 < metrics["epochs"][0]["test_acc"] < 60


def test_torchrun_two_processes(tmp_path):
    data = tiny_pickle_dataset(tmp_path, 256, 100)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
         str(REPO / "train" / "cifar.py"),
         *train_args(data, tmp_path / "run", "--epochs", 2, "--limit-train", 192)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("Test set: Average loss") == 2  # rank 0 only
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["world_size"] == 2 and metrics["config"]["threads"] == 1
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert all(np.isfinite(e["train_loss"]) for e in metrics["epochs"])
    assert "/100 (" in result.stdout  # each rank tested half; the counts were summed
