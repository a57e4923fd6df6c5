"""The optimisers ``fit`` runs: Adam, Adagrad, and L-BFGS for classical full-batch fits.

:func:`make_optimizer` builds one for a parameter group from :class:`~ppgen.inference.training.FitConfig`'s
settings (``optimizer`` resolved from ``"auto"`` by :class:`~ppgen.inference.fit.Trainer`).
:class:`LBFGS` is torch's ``LBFGS`` with a strong-Wolfe line search (Nocedal & Wright 2006,
algorithm 3.5), as scikit-learn's quasi-Newton solvers, plus the bookkeeping ``fit`` needs.

References: J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006, ch. 7.
"""

from __future__ import annotations

import torch

__all__ = ["make_optimizer", "LBFGS"]


def make_optimizer(name: str, params: list[torch.Tensor], *, lr: float, weight_decay: float,
                   adam_betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """``"adam"``, ``"adagrad"`` or ``"lbfgs"`` over ``params``. L-BFGS takes its own step (lr 1, the
    quasi-Newton step, scaled by the line search) and no weight decay (``fit`` adds the penalty to
    its loss instead)."""
    if name == "lbfgs":
        return LBFGS(params, lr=1.0, line_search_fn="strong_wolfe")
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=adam_betas, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adagrad' or 'lbfgs' here ('auto' resolved), got {name!r}")


class LBFGS(torch.optim.LBFGS):
    """torch's L-BFGS (up to 20 iterations per ``step``), counting its steps in its state as Adam
    does (what ``fit`` checks the record of an interrupted step against), and idle once a step
    stopped on its tolerances before ``max_iter`` iterations: converged, as scikit-learn's solvers
    stop. The flag is in its state, so a resumed run knows it too."""

    def step(self, closure):
        state = self.state[self._params[0]]
        if not state.get("converged", False):
            iterations, evaluations = state.get("n_iter", 0), state.get("func_evals", 0)
            super().step(closure)
            group = self.param_groups[0]
            state["converged"] = (state.get("n_iter", 0) - iterations < group["max_iter"]
                                  and state.get("func_evals", 0) - evaluations < group["max_eval"])
        state["step"] = state.get("step", 0) + 1
