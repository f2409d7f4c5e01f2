"""Datasets read from files (torchvision's MNIST/Fashion-MNIST/CIFAR-10 formats, CSV) and
model=resnet18. The tests write tiny files in those formats themselves: no download."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from byzctl.config.build import build
from byzctl.config.experiment import Experiment
from byzctl.data.cifar10 import Cifar10
from byzctl.data.csv import Csv
from byzctl.data.fashion_mnist import FashionMnist
from byzctl.data.mnist import Mnist
from byzctl.errors import ConfigError, DataError


# -- file writers -------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx-ubyte file: magic (0, 0, uint8=0x08, ndim), big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 30, n_test: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
    for name, n in batches.items():
        batch = {"batch_label": name, "labels": [int(v) for v in np.arange(n) % 10],
                 "data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), "filenames": [f"img{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- MNIST-format datasets -------------------------------------------------------------------------
@pytest.mark.parametrize("cls, folder", [(Mnist, "MNIST"), (FashionMnist, "FashionMNIST")])
def test_idx_datasets_load_normalised_images(tmp_path, cls, folder):
    write_mnist(tmp_path, folder)
    s = cls(root=str(tmp_path), test_size=10).load(seed=0)
    assert s.x_train.shape == (30, 1, 28, 28) and s.x_test.shape == (10, 1, 28, 28)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64 and s.num_classes == 10
    assert s.y_train.tolist() == [i % 10 for i in range(30)]
    # uniform random pixels: mean 127.5/255 before normalisation
    mod = __import__(cls.__module__, fromlist=["MEAN", "STD"])
    assert float(s.x_train.mean()) == pytest.approx((0.5 - mod.MEAN[0]) / mod.STD[0], abs=0.02)


def test_subset_and_test_size_are_seeded_subsets(tmp_path):
    write_mnist(tmp_path)
    ds = Mnist(root=str(tmp_path), subset=12, test_size=4)
    a, b, c = ds.load(seed=0), ds.load(seed=0), ds.load(seed=1)
    assert a.x_train.shape == (12, 1, 28, 28) and a.x_test.shape == (4, 1, 28, 28)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    with pytest.raises(ConfigError, match="subset=31 exceeds the 30 training samples"):
        Mnist(root=str(tmp_path), subset=31, test_size=4).load(0)
    with pytest.raises(ConfigError, match="test_size=10000 exceeds the 10 test samples"):
        Mnist(root=str(tmp_path)).load(0)
    with pytest.raises(ConfigError, match="subset must be >= 1"):
        Mnist(subset=0)


@pytest.mark.parametrize("cls, train, test", [(Mnist, 60_000, 10_000), (FashionMnist, 60_000, 10_000), (Cifar10, 50_000, 10_000)])
def test_sizes_beyond_the_official_files_fail_when_the_config_is_built(cls, train, test):
    with pytest.raises(ConfigError, match=f"subset={train + 1} exceeds the {train} training samples"):
        cls(subset=train + 1)
    with pytest.raises(ConfigError, match=f"test_size={test + 1} exceeds the {test} test samples"):
        cls(test_size=test + 1)
    assert cls(subset=train, test_size=test).subset == train


def test_peek_reads_the_sizes_in_idx_headers(tmp_path):
    """The launcher's check (peek) reads no images but sees smaller files than the official ones."""
    write_mnist(tmp_path)  # 30 training, 10 test samples
    assert Mnist(root=str(tmp_path), subset=30, test_size=10).peek(0) == ((1, 28, 28), 10)
    with pytest.raises(ConfigError, match="subset=31 exceeds the 30 training samples of mnist"):
        Mnist(root=str(tmp_path), subset=31, test_size=4).peek(0)
    with pytest.raises(ConfigError, match="test_size=10000 exceeds the 10 test samples of mnist"):
        Mnist(root=str(tmp_path)).peek(0)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"junk")  # load() says what is wrong
    assert Mnist(root=str(tmp_path), test_size=10).peek(0) == ((1, 28, 28), 10)


def test_missing_files_name_the_folder_and_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        Mnist(root=str(tmp_path / "data")).load(0)
    msg = str(err.value)
    assert str(tmp_path / "data" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "dataset.download=true" in msg
    write_mnist(tmp_path)
    os.remove(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"1 file\(s\) missing .*: t10k-images-idx3-ubyte\."):
        Mnist(root=str(tmp_path)).load(0)
    with pytest.raises(DataError, match="cifar-10-batches-py.*data_batch_1"):
        Cifar10(root=str(tmp_path)).load(0)


def test_root_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_mnist(tmp_path / ".cache" / "byzctl" / "data")
    assert Mnist(test_size=10).load(0).x_train.shape[0] == 30  # the default root, ~ expanded


def test_corrupt_idx_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="cannot read the files in"):
        Mnist(root=str(tmp_path), test_size=10).load(0)


# -- CIFAR-10 -------------------------------------------------------------------------------------
def test_cifar10_reads_python_batches(tmp_path):
    folder = write_cifar(tmp_path)
    s = Cifar10(root=str(tmp_path), test_size=6).load(0)
    assert s.x_train.shape == (20, 3, 32, 32) and s.x_test.shape == (6, 3, 32, 32) and s.num_classes == 10
    # channel-wise normalisation: pixel 0 of image 0, red channel
    with open(folder / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)["data"][0]
    from byzctl.data.cifar10 import MEAN, STD

    got = Cifar10(root=str(tmp_path), test_size=6).load(0)
    assert got.x_train[0, 0, 0, 0].item() == pytest.approx((first[0] / 255 - MEAN[0]) / STD[0], abs=1e-5)
    assert got.x_train[0, 2, 0, 0].item() == pytest.approx((first[2048] / 255 - MEAN[2]) / STD[2], abs=1e-5)


class _Evil:
    def __reduce__(self):  # noqa: D105
        return (os.getcwd, ())


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path):
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": _Evil(), "labels": [0]}, fh)
    with pytest.raises(DataError, match="posix.getcwd is not allowed|getcwd is not allowed"):
        Cifar10(root=str(tmp_path), test_size=1).load(0)


# -- CSV ------------------------------------------------------------------------------------------
TABLE = """sepal,petal,species
5.1,1.4,setosa
4.9,1.5,setosa
6.3,4.9,versicolor
5.8,4.1,versicolor
7.1,5.9,virginica
6.5,5.5,virginica
5.0,1.3,setosa
6.0,4.5,versicolor
"""


def test_csv_features_are_standardised_with_train_statistics(tmp_path):
    path = write_csv(tmp_path / "iris.csv", TABLE)
    s = Csv(path=str(path), test_size=2).load(0)
    assert s.x_train.shape == (6, 2) and s.x_test.shape == (2, 2) and s.num_classes == 3
    assert s.x_train.dtype == torch.float32
    assert torch.allclose(s.x_train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(s.x_train.std(0), torch.ones(2), atol=1e-5)
    assert set(torch.cat([s.y_train, s.y_test]).tolist()) == {0, 1, 2}


def test_csv_label_column_by_name_index_and_without_header(tmp_path):
    path = write_csv(tmp_path / "t.csv", "y;a;b\n10;1;2\n2;3;4\n10;5;6\n2;7;8\n")
    by_name = Csv(path=str(path), delimiter=";", label_column="y", test_size=1).load(0)
    by_index = Csv(path=str(path), delimiter=";", label_column="0", test_size=1).load(0)
    assert torch.equal(by_name.y_train, by_index.y_train)
    # numeric labels sort numerically: '2' -> 0, '10' -> 1
    labels = torch.cat([by_name.y_train, by_name.y_test]).sort().values.tolist()
    assert labels == [0, 0, 1, 1]
    nohead = write_csv(tmp_path / "n.tsv", "1\t2\tcat\n3\t4\tdog\n5\t6\tcat\n")
    s = Csv(path=str(nohead), header=False, delimiter="\\t", test_size=1).load(0)
    assert s.x_train.shape == (2, 2) and s.num_classes == 2
    with pytest.raises(DataError, match="label_column='species' not found; the file has no header"):
        Csv(path=str(nohead), header=False, delimiter="\\t", label_column="species", test_size=1).load(0)
    with pytest.raises(DataError, match="label_column=5 is out of range for 3 columns"):
        Csv(path=str(nohead), header=False, delimiter="\\t", label_column="5", test_size=1).load(0)


@pytest.mark.parametrize("text, match", [
    ("a,b,y\n1,2,x\n3,oops,y\n", r"row 3, column b: 'oops' is not a number"),
    ("a,b,y\n1,,x\n3,4,y\n", r"row 2, column b: '' is not a number"),
    ("a,b,y\n1,nan,x\n3,4,y\n", r"row 2, column b: 'nan' is not a finite number"),
    ("a,b,y\n1,2,x\n3,4,x\n", r"holds 1 class"),
    ("a,b,y\n1,2,x\n3,4\n", r"row 3 has 2 fields, expected 3"),
    ("a,b,y\n", r"no data rows"),
    ("a;b;y\n1;2;x\n", r"1 column with delimiter ','"),
])
def test_bad_csv_files_are_clear_data_errors(tmp_path, text, match):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match):
        Csv(path=str(path), test_size=1).load(0)


def test_csv_missing_or_unset_path_and_too_few_rows(tmp_path):
    with pytest.raises(DataError, match="dataset=csv needs a file"):
        Csv().load(0)
    with pytest.raises(DataError, match=r"no such file"):
        Csv(path=str(tmp_path / "nope.csv")).load(0)
    with pytest.raises(DataError, match="cannot read"):
        Csv(path=str(tmp_path)).load(0)  # a directory
    path = write_csv(tmp_path / "t.csv", TABLE)
    with pytest.raises(ConfigError, match="test_size=200 leaves no training data out of 8 rows.*test_size=1"):
        Csv(path=str(path)).load(0)
    with pytest.raises(ConfigError, match="delimiter must be one character"):
        Csv(delimiter=";;")


def test_datasets_compose_from_the_command_line(compose, tmp_path):
    path = write_csv(tmp_path / "iris.csv", TABLE)
    cfg = compose(["dataset=csv", f"dataset.path={path}", "dataset.label_column=2", "dataset.test_size=2",
                   "dataset.partition=iid", "nodes.honest=2", "nodes.byzantine=0", "aggregator=mean"])
    exp = Experiment.from_cfg(cfg)
    assert exp.dataset.label_column == "2"  # an index typed on the command line arrives as text
    s = exp.dataset.load(0)
    assert exp.model.build(s.input_shape, s.num_classes)(s.x_test).shape == (2, 3)
    write_mnist(tmp_path)
    cfg = compose(["dataset=mnist", f"dataset.root={tmp_path}", "dataset.test_size=10", "dataset.subset=20"])
    assert build(cfg.dataset, "dataset").load(0).x_train.shape == (20, 1, 28, 28)


# -- resnet18 ---------------------------------------------------------------------------------------
def test_resnet18_adapts_to_small_images(compose):
    from torch import nn

    model_cfg = build(compose(["model=resnet18"]).model, "model")
    for shape in [(1, 28, 28), (3, 32, 32)]:
        net = model_cfg.build(shape, 7)
        assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == shape[0]
        assert isinstance(net.maxpool, nn.Identity)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # only parameters travel
        assert net(torch.randn(2, *shape)).shape == (2, 7)
    bn = build(compose(["model=resnet18", "model.norm=batch"]).model, "model").build((3, 32, 32), 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    with pytest.raises(ConfigError, match="needs image inputs"):
        model_cfg.build((32,), 10)


# -- end to end -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_run_trains_on_a_csv_file(tmp_path):
    from conftest import read, run_dir

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    x = rng.normal(size=(400, 5)) + 3.0 * y[:, None]
    rows = "\n".join(",".join(f"{v:.4f}" for v in xi) + f",class{yi}" for xi, yi in zip(x, y))
    path = write_csv(tmp_path / "data.csv", "a,b,c,d,e,label\n" + rows + "\n")
    out, proc = run_dir(tmp_path, "dataset=csv", f"dataset.path={path}", "dataset.test_size=100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["test_accuracy"] > 0.5  # 3 classes: chance is 1/3
