r"""Discrete Bayesian networks as Pyro programs, with exact inference by cached tensor contractions.

A Bayesian network over discrete variables :math:`x_1, \dots, x_V` is a DAG and one conditional
probability table (CPT) per variable:

.. math::
    p(x) = \prod_{i=1}^{V} p(x_i \mid \mathrm{pa}(x_i)).

:class:`BayesNet` writes this story as a Pyro program (each variable drawn from its CPT in
topological order, missing observations summed out by enumeration) and answers exact queries
(posterior marginals, log-likelihoods of partial rows, most probable explanations, conditional
samples) by contracting the CPTs as tensors with ``opt_einsum``. A contraction path is computed
once per (observed-variable set, query) pattern and cached; a batch of evidence rows is one more
tensor index. :meth:`BayesNet.fit_mle` learns the CPTs by counting, or by EM when entries are
missing (expected counts for every row in one batched contraction). :class:`BayesianCPTs` puts
Dirichlet priors on the CPT rows and learns their posterior by SVI (:func:`ppgen.inference.fit`).
:class:`FullJointTable` is the baseline with one probability per joint configuration.

Modules: ``structure`` (the DAG, its indices and the input checks), ``network`` (:class:`BayesNet`:
CPTs, the Pyro program, sampling), ``queries`` (compiled contractions and their cache),
``learning`` (counts, maximum likelihood, EM), ``dirichlet`` (:class:`BayesianCPTs`),
``full_joint`` (:class:`FullJointTable`), ``bif`` (reading and writing BIF files).

References: J. Pearl, *Probabilistic Reasoning in Intelligent Systems*, 1988; D. Koller and
N. Friedman, *Probabilistic Graphical Models*, MIT Press 2009 (chapters 3, 9, 13, 17);
A. Darwiche, "A differential approach to inference in Bayesian networks", JACM 2003, and
*Modeling and Reasoning with Bayesian Networks*, 2009; A. Dempster, N. Laird and D. Rubin,
"Maximum likelihood from incomplete data via the EM algorithm", JRSS B 1977.
"""

import sys
import types

from ppgen.models.bayesnet import queries
from ppgen.models.bayesnet.dirichlet import BayesianCPTs
from ppgen.models.bayesnet.full_joint import FullJointTable
from ppgen.models.bayesnet.network import BayesNet

__all__ = ["BayesNet", "BayesianCPTs", "FullJointTable"]


class _Package(types.ModuleType):
    """Keeps ``ppgen.models.bayesnet._TABLE_LIMIT``, the table limit's name before the split
    (tests patch it), working: reading or setting it reads or sets :data:`queries.TABLE_LIMIT`."""

    @property
    def _TABLE_LIMIT(self) -> int:
        return queries.TABLE_LIMIT

    @_TABLE_LIMIT.setter
    def _TABLE_LIMIT(self, value: int) -> None:
        queries.TABLE_LIMIT = value


sys.modules[__name__].__class__ = _Package
