"""How much of a label a learned representation makes linearly readable."""

from __future__ import annotations

import torch

__all__ = ["linear_probe_accuracy"]


def linear_probe_accuracy(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor,
                          y_test: torch.Tensor, *, l2: float = 1e-4, max_iter: int = 200) -> float:
    r"""Test accuracy of multinomial logistic regression trained on codes ``z_train``.

    Fits :math:`p(y = c \mid z) = \mathrm{softmax}(W z + b)_c` by minimising the mean cross
    entropy plus :math:`\tfrac{l_2}{2} \lVert W \rVert^2` with L-BFGS (a convex problem, so
    the result does not depend on a seed), on features standardised with the training
    mean and standard deviation. The usual "linear probe" of representation learning.

    Parameters
    ----------
    z_train, z_test : Tensor (N, d)
        Codes, e.g. ``model.encode(x)``.
    y_train, y_test : Tensor (N,) of int labels
    l2 : float
        Ridge penalty on the weights.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    float
        Fraction of ``y_test`` predicted correctly.

    Examples
    --------
    >>> z = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    >>> linear_probe_accuracy(z, torch.tensor([0, 0, 1, 1]), -z, torch.tensor([1, 1, 0, 0]))
    1.0
    """
    z_train, z_test = (_features(z, name) for z, name in ((z_train, "z_train"), (z_test, "z_test")))
    y_train, y_test = (_labels(y, z, name) for y, z, name in ((y_train, z_train, "y_train"),
                                                                 (y_test, z_test, "y_test")))
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"z_train has {z_train.shape[1]} columns but z_test has {z_test.shape[1]}")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    mean, std = z_train.mean(0), z_train.std(0).clamp_min(1e-8)
    z_train, z_test = (z_train - mean) / std, (z_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    weight = torch.zeros(z_train.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z_train @ weight + bias, y_train) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return ((z_test @ weight + bias).argmax(-1) == y_test).double().mean().item()


def _features(z, name: str) -> torch.Tensor:
    z = torch.as_tensor(z)
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float tensor (N, d), got dtype {z.dtype} shape {tuple(z.shape)}")
    return z.detach().cpu().double()


def _labels(y, z: torch.Tensor, name: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.is_floating_point() or y.shape[0] != z.shape[0] or (len(y) and y.min() < 0):
        raise ValueError(f"{name} must be {z.shape[0]} non-negative int labels, got dtype {y.dtype} "
                         f"shape {tuple(y.shape)}")
    return y.detach().cpu().long()
