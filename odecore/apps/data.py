"""Data that ships offline: scikit-learn's bundled digits (the default) and MNIST from
standard IDX files the user already has (never downloaded); for SDE-Net's regression
experiment, scikit-learn's bundled diabetes data and out-of-distribution rows from its
breast cancer or wine data; and the mini-batches the training loops draw from them."""

import gzip
import os
import struct

import numpy as np
import torch

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def sklearn_datasets(needed_by: str):
    """scikit-learn's `datasets` module (imported on first use: only the bundled data sets
    need it), or an ImportError saying what needs it."""
    try:
        import sklearn.datasets
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency of the train extra
        raise ImportError("%s needs scikit-learn: pip install scikit-learn" % needed_by) from error
    return sklearn.datasets


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (plain or .gz) into a numpy array, validating its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise ValueError("%s: not an IDX file (too short for a header)" % path)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES:
        raise ValueError("%s: not an IDX file (bad magic number)" % path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError("%s: truncated IDX header" % path)
    shape = struct.unpack(">%dI" % ndim, data[4:header])
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError("%s: IDX payload has %d bytes, the header promises %d" % (path, len(data) - header, expected))
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(data_dir: str, name: str) -> str:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        "MNIST file %s(.gz) not found in %s (odecore never downloads data; put the standard "
        "IDX files there)" % (name, data_dir)
    )


def load_mnist(data_dir: str) -> tuple:
    """MNIST from IDX files in `data_dir`: ((x_train, y_train), (x_test, y_test)), images as
    float tensors of shape (N, 1, 28, 28) scaled to [0, 1] and normalised, labels as int64."""
    splits = []
    for split in ("train", "test"):
        images_name, labels_name = MNIST_FILES[split]
        images = read_idx(_find(data_dir, images_name))
        labels = read_idx(_find(data_dir, labels_name))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                "MNIST %s files in %s have mismatched shapes %s and %s" % (split, data_dir, images.shape, labels.shape)
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        splits.append(((x - 0.1307) / 0.3081, torch.from_numpy(labels.astype(np.int64))))
    return tuple(splits)


def load_digits(test_fraction: float = 0.2, seed: int = 0, return_normalisation: bool = False) -> tuple:
    """scikit-learn's bundled 8x8 digits (1797 images, no download) with a fixed stratified
    train/test split: ((x_train, y_train), (x_test, y_test)), images (N, 1, 8, 8) scaled to
    [0, 1] and normalised by the training mean and std (also returned, as a third item, when
    `return_normalisation`, to map other [0, 1] images the same way)."""
    digits = sklearn_datasets("the digits data").load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.RandomState(seed)
    test_idx = []
    for label in range(10):  # stratified: the same fraction of every class
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    x = torch.from_numpy(images).unsqueeze(1)
    mean, std = x[torch.from_numpy(~test_mask)].mean().item(), x[torch.from_numpy(~test_mask)].std().item()
    x = (x - mean) / std
    y = torch.from_numpy(labels)
    train, test = torch.from_numpy(~test_mask), torch.from_numpy(test_mask)
    splits = (x[train], y[train]), (x[test], y[test])
    return splits + ((mean, std),) if return_normalisation else splits


def photo_patches(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """`n` grey `size`x`size` patches cut at random from scikit-learn's bundled sample photos
    (no download), scaled to [0, 1]: natural images that are not digits."""
    images = sklearn_datasets("the photo patches").load_sample_images().images
    photos = [np.asarray(img, dtype=np.float32).mean(axis=2) / 255.0 for img in images]
    rng = np.random.RandomState(seed)
    patches = []
    for i in range(n):
        photo = photos[i % len(photos)]
        r, c = rng.randint(0, photo.shape[0] - size), rng.randint(0, photo.shape[1] - size)
        patches.append(photo[r : r + size, c : c + size])
    return torch.from_numpy(np.stack(patches)).unsqueeze(1)


def float32_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def load_diabetes(test_fraction: float = 0.2, seed: int = 0, return_normalisation: bool = False) -> tuple:
    """scikit-learn's bundled diabetes regression data (442 rows, 10 features, no download)
    with a fixed seeded train/test split: ((x_train, y_train), (x_test, y_test)) as float32
    tensors of shapes (N, 10) and (N,). Features and target are standardised with the
    training rows' mean and std (population std); with `return_normalisation` a third item
    (x_mean, x_std, y_mean, y_std) maps them back (RMSE in original units is
    ``y_std * rmse``)."""
    datasets = sklearn_datasets("the diabetes data")
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1), got %r" % (test_fraction,))
    bunch = datasets.load_diabetes(scaled=False)
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)
    order = np.random.RandomState(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
    splits = (float32_tensor(x[train]), float32_tensor(y[train])), (float32_tensor(x[test]), float32_tensor(y[test]))
    normalisation = (float32_tensor(x_mean), float32_tensor(x_std), y_mean, y_std)
    return splits + (normalisation,) if return_normalisation else splits


REGRESSION_OOD = {"breast_cancer": "load_breast_cancer", "wine": "load_wine"}


def regression_ood(name: str = "breast_cancer", n_features: int = 10) -> torch.Tensor:
    """Out-of-distribution rows for the diabetes regression: the first `n_features` feature
    columns of another bundled scikit-learn data set (breast cancer: 569 rows, the ten "mean"
    measurements; wine: 178 rows), each standardised with its own mean and std, as SDE-Net's
    paper does with Boston housing against YearPredictionMSD. A float32 tensor (N, n_features)."""
    if name not in REGRESSION_OOD:
        raise ValueError("unknown OOD data set %r (choose %s)" % (name, " or ".join(sorted(REGRESSION_OOD))))
    loader = getattr(sklearn_datasets("the %s data" % name.replace("_", " ")), REGRESSION_OOD[name])
    x = np.asarray(loader().data, dtype=np.float64)[:, :n_features]
    if x.shape[1] != n_features:
        raise ValueError("%s has only %d features, %d asked" % (name, x.shape[1], n_features))
    x = (x - x.mean(0)) / x.std(0)
    return torch.from_numpy(x.astype(np.float32))


def load(name: str, data_dir: str | None = None) -> tuple:
    """The classification data set `name` (digits or mnist) as ((x_train, y_train), (x_test, y_test))."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        if not data_dir:
            raise ValueError("--data mnist needs --data-dir DIR holding the MNIST IDX files")
        return load_mnist(data_dir)
    raise ValueError("unknown data set %r (choose digits or mnist)" % (name,))


def take_first(limit: int | None, *tensors: torch.Tensor) -> tuple:
    """The first `limit` rows of each tensor (all of them when `limit` is None or 0): the
    quick runs of --limit."""
    return tuple(t[:limit] for t in tensors) if limit else tensors


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches (x, y) of `batch_size` rows: in the order of `generator`'s permutation
    when one is given (the same order in every process of a distributed run), else in order."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
