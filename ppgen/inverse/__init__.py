r"""Inverse problems: restore x from a measurement y = A x + sigma * eps by conditional sampling.

An :class:`Operator` is the measurement A (a linear map on rows in the model's data space) with
Gaussian noise of standard deviation ``sigma``: :class:`Inpaint` (keep some pixels),
:class:`Greyscale` (average the colour channels), :class:`Downsample` (average pooling) and
:class:`GaussianNoise` (A = I). Each knows its pseudo-inverse A^+ and the projection

.. math::
    \mathrm{project}(x, y) = A^+ y + (I - A^+ A)\, x,

which keeps the part of x that A does not see and replaces the rest by what y says (the
range-null-space decomposition of DDNM, Wang et al. 2023). For a noiseless operator
A(project(x, y)) = y.

:func:`restore` draws samples of x from p(x | y) with whatever the model can do:

- a model with its own ``restore(y, operator, num_samples, **kwargs)`` method (the diffusion
  models; :class:`ColourRegression`; :class:`PaletteColouriser`) is called;
- PPCA and factor analysis restore exactly for every operator (a Gaussian posterior); a fully
  factorised model or a Bernoulli mixture inpaints exactly;
- an autoregressive model inpaints with its exact conditionals (when the observed pixels come
  first in its ordering) or by sequential importance resampling;
- a VAE inpaints by sampling its latent code from p(z | y_obs) (tempered sequential Monte Carlo,
  or self-normalised importance resampling), then the missing pixels from its decoder.

Every path returns a :class:`RestoreResult`: ``samples`` (S, N, D), the per-pixel posterior
``mean`` and ``variance`` (N, D), and the ``method`` used.

References: Y. Wang, J. Yu and J. Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model", ICLR 2023. P. Del Moral, A. Doucet and A. Jasra, "Sequential Monte Carlo
samplers", JRSS B 68, 2006. D. B. Rubin, "Using the SIR algorithm to simulate posterior
distributions", Bayesian Statistics 3, 1988. T. Hesterberg, "Weighted average importance sampling
and defensive mixture distributions", Technometrics 37, 1995.

Examples
--------
>>> import torch
>>> op = Downsample((1, 4, 4), factor=2)
>>> x = torch.arange(16.).reshape(1, 16) / 16
>>> y = op(x)
>>> y.shape, torch.allclose(op(op.pseudo_inverse(y)), y), torch.allclose(op(op.project(x.flip(1), y)), y)
(torch.Size([1, 4]), True, True)
"""


from ppgen.inverse.colourise import ColourRegression, fit_colour_regression
from ppgen.inverse.figures import restore_grid
from ppgen.checks import image_shape_of
from ppgen.inverse.operators import (MASKS, TASKS, Downsample, GaussianNoise, Greyscale, Inpaint, Operator,
                                     inpaint_mask, make_operator)
from ppgen.inverse.palette import PaletteColouriser
from ppgen.inverse.restoration import RestoreResult, restore, restore_summary, sample_diversity
from ppgen.inverse.vae import vae_inpaint

__all__ = ["Operator", "Inpaint", "Greyscale", "Downsample", "GaussianNoise", "make_operator", "inpaint_mask",
           "image_shape_of", "TASKS", "MASKS", "RestoreResult", "restore", "restore_summary", "sample_diversity",
           "vae_inpaint", "ColourRegression", "fit_colour_regression", "PaletteColouriser", "restore_grid"]
