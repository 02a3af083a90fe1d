"""unimplicit: implicit layers in JAX.

A layer is defined by what its output satisfies (a condition), found by a backend,
and differentiated by an adjoint. See `unimplicit.solve`.
"""

from . import regularize as regularize
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    PhantomAdjoint as PhantomAdjoint,
    UnrolledAdjoint as UnrolledAdjoint,
)
from ._backend import (
    AbstractBackend as AbstractBackend,
    BackendOutput as BackendOutput,
    register_backend as register_backend,
)
from ._condition import (
    AbstractCondition as AbstractCondition,
    AbstractEquilibrium as AbstractEquilibrium,
    AbstractFixedPoint as AbstractFixedPoint,
)
from ._convex.cone_base import (
    AbstractCone as AbstractCone,
    AbstractScaling as AbstractScaling,
    register_cone as register_cone,
)
from ._convex.cone_program import (
    ConeData as ConeData,
    ConeProgram as ConeProgram,
    PrimalDual as PrimalDual,
)
from ._convex.cones import Cones as Cones
from ._convex.interior_point import InteriorPoint as InteriorPoint
from ._convex.program import ConvexProgram as ConvexProgram
from ._convex.quadratic_program import (
    QPSolution as QPSolution,
    QuadraticProgram as QuadraticProgram,
)
from ._equilibria import FixedPoint as FixedPoint, Root as Root
from ._flow.diffrax_backend import Diffrax as Diffrax
from ._flow.flow import AbstractFlow as AbstractFlow, DiffraxAdjoint as DiffraxAdjoint
from ._flow.ode import ODE as ODE
from ._flow.sde import SDE as SDE
from ._ift import implicit_solve as implicit_solve
from ._layers.cnf import CNF as CNF
from ._layers.convex_layer import ConvexLayer as ConvexLayer
from ._layers.deq import DEQ as DEQ
from ._layers.neural_ode import NeuralODE as NeuralODE
from ._layers.neural_sde import NeuralSDE as NeuralSDE
from ._linear_solver import NeumannSolver as NeumannSolver
from ._optimistix import OptimistixBackend as OptimistixBackend
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import solve as solve
from ._solver.anderson import Anderson as Anderson
from ._solver.broyden import Broyden as Broyden


__version__ = "0.1.0"
