"""Diffusion models: a hierarchical latent-variable story whose guide is a fixed noising process.

:class:`DiffusionModel` writes the Pyro program, the ELBO and sampling once; its subclasses
:class:`GaussianDiffusion` (Ho et al. 2020) on 8-bit images and :class:`BinaryDiffusion`
(the bit-flip case of D3PM, Austin et al. 2021) on binary rows write their math. Both train by
their ELBO (:class:`DiffusionELBO`) or, for the Gaussian one, Ho et al.'s simple loss (:class:`SimpleLoss`) or
Nichol & Dhariwal's hybrid loss (:class:`HybridLoss`).
"""

from ppgen.models.diffusion.base import DiffusionELBO, DiffusionModel
from ppgen.models.diffusion.binary import BinaryDiffusion
from ppgen.models.diffusion.discretised import DiscretisedGaussian
from ppgen.models.diffusion.gaussian import GaussianDiffusion, HybridLoss, SimpleLoss
from ppgen.models.diffusion.schedules import binary_betas, cosine_betas, linear_betas, log_snr_betas
from ppgen.models.diffusion.unet import TimeMLP, UNet

__all__ = ["DiffusionModel", "GaussianDiffusion", "BinaryDiffusion", "DiffusionELBO", "SimpleLoss", "HybridLoss",
           "DiscretisedGaussian", "UNet", "TimeMLP", "linear_betas", "cosine_betas", "log_snr_betas",
           "binary_betas"]
