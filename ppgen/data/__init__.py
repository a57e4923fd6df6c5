"""Data sets: the embedded binarized digits, binarized MNIST, torchvision's MNIST, and Shakespeare's plays.

Every loader returns a :class:`Dataset` ``(x, y)``: ``x`` a float tensor (N, 784) of 0/1
values (``digits_grey``: the integer intensities 0..255 as floats) and ``y`` the labels (int64,
(N,)) or None where the set has none. ``"shakespeare"`` returns a :class:`ppgen.data.text.TextDataset`:
``x`` the text's character ids in rows (N, 256) of int64, beside the text itself (``.text``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ppgen.data.digits import Dataset, load_digits

__all__ = ["load_dataset", "Dataset", "DynamicBinarization", "NpyRows", "DATASETS", "TEXT_DATASETS", "SPLITS"]

DATASETS = ("digits", "digits_grey", "digits_colour", "binarized_mnist", "mnist")
TEXT_DATASETS = ("shakespeare",)  # character ids (N, L) int64 (ppgen.data.text)
SPLITS = ("train", "valid", "test")
MNIST_VALID_SIZE = 10_000  # the last 10,000 MNIST training images, as in binarized MNIST


class DynamicBinarization:
    """Grey-level images whose pixels are drawn afresh from Bernoulli(intensity) when indexed.

    Indexing with a tensor of row indices returns a float tensor of 0/1 values; ``fit`` draws
    each minibatch this way, so every epoch sees a new binarization (dynamic binarization).
    """

    def __init__(self, intensities: torch.Tensor):
        if intensities.dim() != 2 or intensities.min() < 0 or intensities.max() > 1:
            raise ValueError("intensities must be a (N, D) tensor of values in [0, 1]")
        self.intensities = intensities
        self.shape = intensities.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        return torch.bernoulli(self.intensities[idx])

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and self.shape[1] != dim:
            raise ValueError(f"{name} has {self.shape[1]} columns, but the model expects {dim}")


class NpyRows:
    """The rows of a 2-D ``.npy`` file, read from disk when indexed: data larger than memory.

    Indexing with a tensor of row indices (or a slice) reads just those rows (one ``pread`` each, so
    neither the file nor a memory map of it becomes resident) and returns them as float32. Any numeric
    dtype works; a binary data set is best stored as uint8 (1 byte per pixel).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.npy")
    >>> np.save(path, np.eye(3, dtype=np.uint8))
    >>> rows = NpyRows(path)
    >>> rows.shape, rows[torch.tensor([2, 0])].tolist(), rows[1:].tolist()
    (torch.Size([3, 3]), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no .npy file at {self.path}")
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
            except ValueError as err:
                raise ValueError(f"{self.path} is not a .npy file: {err}") from None
            self._offset = f.tell()
        if dtype.kind == "c":
            raise ValueError(f"{self.path} holds complex numbers ({dtype}); ppgen models take real data")
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise ValueError(f"{self.path} must hold a C-ordered 2-D numeric array, got shape {shape}"
                             f"{' in Fortran order' if fortran else ''} of {dtype}")
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{self.path} is empty: it holds an array of shape {shape}")
        expected = self._offset + shape[0] * shape[1] * dtype.itemsize
        if self.path.stat().st_size < expected:
            raise ValueError(f"{self.path} is truncated: its header promises {shape[0]} rows of {shape[1]} {dtype} "
                             f"values ({expected} bytes), the file has {self.path.stat().st_size}")
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._row_bytes = shape[1] * dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):  # rows[:n], as a tensor's
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx).reshape(-1)
        if self._fd is None:  # opened lazily, so that DataLoader workers each open their own
            self._fd = os.open(self.path, os.O_RDONLY)
        buffer = b"".join(os.pread(self._fd, self._row_bytes, self._offset + int(i) * self._row_bytes)
                          for i in idx.tolist())
        rows = np.frombuffer(buffer, dtype=self.dtype).reshape(len(idx), self.shape[1])
        return torch.from_numpy(rows.astype(np.float32))

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and self.shape[1] != dim:
            raise ValueError(f"{name} has {self.shape[1]} columns, but the model expects {dim}")


def load_dataset(name: str, split: str = "train", *, root: str | os.PathLike | None = None,
                 binarize: str = "static", download: bool = False) -> Dataset:
    """Load a binary image data set as float tensors.

    Parameters
    ----------
    name : {"digits", "digits_grey", "binarized_mnist", "mnist", "shakespeare"} or a path ending in ".npy"
        ``"digits"``: shipped with ppgen (10,000 train / 1,000 valid / 2,000 test labelled
        28x28 digits from MNIST, each pixel sampled once from Bernoulli(intensity/255) with a
        fixed seed by ``scripts/make_digits.py``). ``"digits_grey"``: the same rows in greyscale,
        the MNIST intensities as float integers 0..255 (dequantize them for a density model:
        ``ppgen.models.flows.dequantize``). ``"binarized_mnist"``: the statically
        binarized MNIST of Larochelle & Murray (2011), 50,000 / 10,000 / 10,000 rows without
        labels, from ``root`` or ``$PPGEN_DATA``. ``"mnist"``: torchvision's MNIST from
        ``root`` (50,000 / 10,000 / 10,000 with the last 10,000 training images as
        ``valid``), binarized as ``binarize`` says. A path to a 2-D ``.npy`` file: its rows as
        an :class:`NpyRows` read from disk minibatch by minibatch (no labels, ``split`` unused),
        for data larger than memory. ``"shakespeare"``: shipped with ppgen, 38 plays as plain
        text, split by play (32 / 3 / 3 plays; see :mod:`ppgen.data.text`), as a
        :class:`~ppgen.data.text.TextDataset`.
    split : {"train", "valid", "test"}
    root : path, optional
        Folder holding ``binarized_mnist.npz`` or ``MNIST/raw/``. Defaults to ``$PPGEN_DATA``.
    binarize : {"static", "dynamic"}
        For ``"mnist"``: threshold intensities at 0.5 once (static), or return a
        :class:`DynamicBinarization` that resamples Bernoulli(intensity) whenever it is read.
    download : bool
        For ``"mnist"``: let torchvision download the files when missing (needs internet).

    Examples
    --------
    >>> x, y = load_dataset("digits", "valid")
    >>> x.shape, x.dtype, y[:5].tolist()
    (torch.Size([1000, 784]), torch.float32, [1, 4, 0, 3, 1])
    """
    if isinstance(name, (str, os.PathLike)) and str(name).endswith(".npy"):
        return Dataset(NpyRows(name), None)
    if name not in DATASETS + TEXT_DATASETS:
        raise ValueError(f"unknown data set {name!r}; choices: {', '.join(DATASETS + TEXT_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choices: {', '.join(SPLITS)}")
    if binarize not in ("static", "dynamic"):
        raise ValueError(f"binarize must be 'static' or 'dynamic', got {binarize!r}")
    if binarize == "dynamic" and name != "mnist":
        raise ValueError(f"{name!r} is binarized already; binarize='dynamic' needs name='mnist'")
    if name in ("digits", "digits_grey"):
        return load_digits(split, grey=name == "digits_grey")
    if name == "digits_colour":  # the grey digits painted in palette colours, for colourisation
        from ppgen.data.colour import coloured_digits  # imported here: matplotlib colour maps load on use

        return coloured_digits(split)
    if name == "shakespeare":
        from ppgen.data.text import load_shakespeare  # imported here: it imports this module

        return load_shakespeare(split)
    folder = _data_root(root)
    if name == "binarized_mnist":
        return _load_binarized_mnist(folder, split)
    return _load_mnist(folder, split, binarize, download)


def _data_root(root) -> Path:
    root = root if root is not None else os.environ.get("PPGEN_DATA")
    if root is None:
        raise ValueError("this data set is read from disk: pass root=FOLDER or set PPGEN_DATA=FOLDER "
                         "(the folder holding binarized_mnist.npz and MNIST/raw/)")
    return Path(root).expanduser()


def _load_binarized_mnist(folder: Path, split: str) -> Dataset:
    path = folder / "binarized_mnist.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"binarized MNIST: {path} not found (looked in root={folder}). It is one .npz with "
            "uint8 arrays train_x (50000, 784), valid_x and test_x (10000, 784), made from "
            "Larochelle & Murray's binarized_mnist_{train,valid,test}.amat; see the data README.")
    with np.load(path) as arrays:
        key = f"{split}_x"
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r} (it has {sorted(arrays.files)})")
        pixels = arrays[key]
    return Dataset(torch.from_numpy(pixels.astype(np.float32)), None)


def _load_mnist(folder: Path, split: str, binarize: str, download: bool) -> Dataset:
    from torchvision.datasets import MNIST

    raw = folder / "MNIST" / "raw"
    needed = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    if not download and not (raw / needed).is_file():
        raise FileNotFoundError(
            f"MNIST: {raw / needed} not found (looked in root={folder}). Put the four decompressed "
            "idx files in ROOT/MNIST/raw/, or pass download=True where the internet is reachable.")
    data = MNIST(root=str(folder), train=split != "test", download=download)
    images, labels = data.data.reshape(-1, 784), data.targets
    if split != "test":
        keep = slice(None, -MNIST_VALID_SIZE) if split == "train" else slice(-MNIST_VALID_SIZE, None)
        images, labels = images[keep], labels[keep]
    intensities = images.float() / 255.0
    if binarize == "dynamic":
        return Dataset(DynamicBinarization(intensities), labels)
    return Dataset((intensities > 0.5).float(), labels)
