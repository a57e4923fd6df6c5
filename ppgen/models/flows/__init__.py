"""Normalizing flows: exact densities by the change of variables (image flows, vector flows, dequantization,
uniform or variational)."""

from ppgen.models.flows.base import Flow, FlowDistribution, prepare_data
from ppgen.models.flows.dequantization import Dequantized, LogitPixels, dequantize
from ppgen.models.flows.image import Glow, MultiScaleFlow, RealNVP
from ppgen.models.flows.variational import VariationalDequantization
from ppgen.models.flows.vector import MAF, NSF

__all__ = ["Flow", "FlowDistribution", "MultiScaleFlow", "RealNVP", "Glow", "MAF", "NSF",
           "dequantize", "Dequantized", "LogitPixels", "VariationalDequantization", "prepare_data"]
