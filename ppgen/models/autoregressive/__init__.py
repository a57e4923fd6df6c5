"""Autoregressive models: p(x) = prod_i p(x_{o(i)} | x_{o(<i)}), exact likelihood, sequential sampling."""

from ppgen.models.autoregressive._common import (
    AutoregressiveModel,
    InpaintResult,
    observed_first,
    order_observed_first,
    resolve_order,
)
from ppgen.models.autoregressive.fvsbn import FVSBN
from ppgen.models.autoregressive.made import MADE
from ppgen.models.autoregressive.nade import NADE
from ppgen.models.autoregressive.pixelcnn import GreyPixelCNN, PixelCNN

__all__ = ["AutoregressiveModel", "InpaintResult", "FVSBN", "NADE", "MADE", "PixelCNN", "GreyPixelCNN",
           "observed_first", "order_observed_first", "resolve_order"]
