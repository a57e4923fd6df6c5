r"""What every ppgen flow shares: the change of variables, the Pyro program, sampling at a temperature.

A flow is an invertible map :math:`f` from data x to a latent :math:`z = f(x)` with a standard
normal base density, so that

.. math::
    z \sim \mathcal{N}(0, I_D), \qquad x = f^{-1}(z), \qquad
    \log p(x) = \log \mathcal{N}(f(x); 0, I) + \log \left|\det \frac{\partial f(x)}{\partial x}\right|.

A subclass implements ``transform(h) -> (z, logdet)`` (on pre-processed data h, z of shape
(N, D)) and ``untransform(z) -> h``. For pixel data (``num_levels`` set) the first step is
:class:`~ppgen.models.flows.dequantization.LogitPixels`, with its Jacobian counted, so
``log_prob`` is a density in pixel units whose bits/dim compare with the published ones.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, num_rows, progress_bar
from ppgen.models.flows.dequantization import Dequantized, LogitPixels, check_pixels, dequantize

__all__ = ["Flow", "FlowDistribution", "prepare_data"]

LOG_2PI = math.log(2 * math.pi)


class FlowDistribution(dist.TorchDistribution):
    """The density of a :class:`Flow` as a Pyro distribution with event shape (D,):
    ``log_prob`` is the flow's exact change of variables, ``rsample`` decodes N(0, T^2 I)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: "Flow", batch_shape=torch.Size(), temperature: float = 1.0, validate_args=None):
        self.flow, self.temperature = flow, temperature
        super().__init__(torch.Size(batch_shape), torch.Size([flow.x_dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return FlowDistribution(self.flow, batch_shape, self.temperature, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        z = self.temperature * torch.randn(shape.numel(), self.flow.x_dim, device=self.flow.device,
                                           dtype=self.flow.dtype)
        return self.flow.decode(z, check=False).reshape(*shape, self.flow.x_dim)

    def log_prob(self, value):
        flat = value.reshape(-1, self.flow.x_dim)
        return self.flow.log_prob(flat).reshape(value.shape[:-1])


class Flow(GenerativeModel):
    """Base class of the normalizing flows (exact ``log_prob``, trained by maximum likelihood).

    Parameters
    ----------
    x_dim : int
    num_levels : int or None
        For pixel data: the levels per pixel (256 for 8-bit images, 2 for binary ones); the
        data are dequantized levels in [0, num_levels] (``dequantize``) and the density is in
        pixel units. None: real-valued data, no pre-processing.
    alpha : float
        The logit pre-processing's squeeze of [0, 1] into [alpha, 1 - alpha]. With alpha > 0
        the density on [0, K]^D has total mass below 1 (the flow's mass outside the logit box
        is lost), so ``log_prob`` errs low and bits/dim high: still a bound on the discrete
        likelihood. ``decode`` clamps to [0, K].
    """

    has_exact_likelihood = True
    data_support = "real"

    def __init__(self, x_dim: int, num_levels: int | None = 256, alpha: float = 1e-6):
        super().__init__(x_dim)
        self.num_levels = num_levels
        self.preprocess = LogitPixels(num_levels, alpha) if num_levels is not None else None

    # --- what subclasses write ----------------------------------------------------------------

    def transform(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-processed rows (N, D) -> latent (N, D) and log|det| per row (N,)."""
        raise NotImplementedError

    def untransform(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the protocol -------------------------------------------------------------------------

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        x = super().check_data(x, name)  # checked and converted to the model's dtype, as every model's rows
        return check_pixels(x, self.num_levels, name) if self.num_levels is not None else x

    def encode_with_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(x) (N, D) and log|det df/dx| per row (N,), pre-processing included."""
        logdet = x.new_zeros(x.shape[0])
        if self.preprocess is not None:
            x, logdet = self.preprocess(x)
        z, more = self.transform(x)
        return z, logdet + more

    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        z, logdet = self.encode_with_logdet(x)
        return -0.5 * (z.pow(2).sum(-1) + self.x_dim * LOG_2PI) + logdet

    def model(self, x=None, y=None, *, size=None, temperature: float = 1.0):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            return pyro.sample("x", FlowDistribution(self, temperature=temperature), obs=x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent z = f(x), shape (N, D)."""
        return self.encode_with_logdet(self.check_data(x))[0]

    def decode(self, z: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """x = f^{-1}(z), shape (N, D)."""
        if check and (z.dim() != 2 or z.shape[1] != self.x_dim):
            raise ValueError(f"z must have shape (N, {self.x_dim}), got {tuple(z.shape)}")
        h = self.untransform(z)
        if self.preprocess is None:
            return h
        # with alpha > 0 the logit maps [0, K] into a box; a z whose image lies outside it is
        # clamped to the nearest valid pixel value (a mass of at most that outside the box)
        return self.preprocess.inverse(h).clamp(0, self.num_levels)

    @torch.no_grad()
    def sample(self, n: int, y=None, *, temperature: float = 1.0, progress=False) -> torch.Tensor:
        """``n`` rows x = f^{-1}(T z), z ~ N(0, I): temperature T < 1 trades diversity for quality.
        Decoded 64 rows at a time (an autoregressive flow's inverse, MAF's or NSF's, passes its
        network once per dimension: 64 rows of 784 take seconds); ``progress``: True shows a bar over the
        rows, a callable gets ``(done, total)``."""
        n = positive_int(n, "n")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        z = temperature * torch.randn(n, self.x_dim, device=self.device, dtype=self.dtype)  # as FlowDistribution
        bar, rows = progress_bar(n, progress, "rows"), []
        for chunk in z.split(64):
            rows.append(self.decode(chunk, check=False))
            bar.update(len(chunk))
        bar.close()
        return torch.cat(rows)

    @torch.no_grad()
    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode the straight line between f(x0) and f(x1) (rows (D,)): ``steps`` rows (steps, D)."""
        z = self.encode(torch.stack([x0, x1]))
        t = torch.linspace(0, 1, positive_int(steps, "steps"), dtype=z.dtype, device=z.device)[:, None]
        return self.decode((1 - t) * z[0] + t * z[1])

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, num_levels={self.num_levels}"


def prepare_data(model, data, *, fresh: bool = False, seed: int = 0):
    """``data`` ((x, y) or x) as a pixel flow needs it: dequantized, with fresh noise at every
    read (``fresh``, for training) or with noise fixed by ``seed`` (for scoring). Anything else
    (another model, real-valued flows) is returned unchanged."""
    if not isinstance(model, Flow) or model.num_levels is None:
        return data
    x, y = data if isinstance(data, tuple) else (data, None)
    x = Dequantized(x, model.num_levels) if fresh else dequantize(x, model.num_levels, seed=seed)
    return type(data)(x, y) if isinstance(data, tuple) and hasattr(data, "_fields") else (x, y)
