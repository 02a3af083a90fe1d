"""unimplicit: implicit layers in JAX.

A layer is defined by what its output satisfies (a condition), found by a backend,
and differentiated by an adjoint. See `unimplicit.solve`.
"""

import importlib.metadata

from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    PhantomAdjoint as PhantomAdjoint,
    UnrolledAdjoint as UnrolledAdjoint,
)
from ._backend import AbstractBackend as AbstractBackend
from ._condition import (
    AbstractCondition as AbstractCondition,
    AbstractEquilibrium as AbstractEquilibrium,
    FixedPoint as FixedPoint,
    Root as Root,
)
from ._ift import implicit_solve as implicit_solve
from ._iterate import OptimistixBackend as OptimistixBackend
from ._layers.deq import DEQ as DEQ
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import solve as solve


__version__ = importlib.metadata.version("unimplicit")

# Flows (issue 4)
from ._flow.diffrax_backend import Diffrax as Diffrax
from ._flow.ode import ODE as ODE
from ._flow.sde import SDE as SDE
from ._layers.cnf import CNF as CNF
from ._layers.neural_ode import NeuralODE as NeuralODE
from ._layers.neural_sde import NeuralSDE as NeuralSDE
