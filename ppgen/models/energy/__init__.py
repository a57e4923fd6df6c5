"""Energy-based stories: p(x) = exp(-E(x)) / Z with an intractable normaliser Z."""

from ppgen.models.energy.ais import PartitionEstimate, ais_log_partition, base_visible_bias, raise_log_likelihood
from ppgen.models.energy.base import ContrastiveDivergence, EnergyModel
from ppgen.models.energy.continuous_ais import ais_log_partition_continuous
from ppgen.models.energy.ebm import EBM, LangevinContrastiveDivergence
from ppgen.models.energy.rbm import RBM

__all__ = ["EnergyModel", "ContrastiveDivergence", "RBM", "EBM", "LangevinContrastiveDivergence", "ais_log_partition",
           "raise_log_likelihood", "base_visible_bias", "PartitionEstimate", "ais_log_partition_continuous"]
