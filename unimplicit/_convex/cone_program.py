"""The cone-program condition: data, primal-dual state and optimality residual."""

import abc

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from .._adjoint import ImplicitAdjoint
from .._condition import AbstractEquilibrium
from .cones import Cones
from .data import ConeData as ConeData, PrimalDual as PrimalDual
from .kkt_solver import ConeKKTSolver


def _symmetric(P: Array) -> Array:
    return (P + P.T) / 2


def _check_data(cones: Cones, data: ConeData) -> None:
    if not isinstance(data, ConeData):
        raise TypeError(
            f"ConeProgram expects `args` to be a `ConeData`, not {type(data).__name__}."
        )
    P, q, A, b = (jnp.asarray(a) for a in (data.P, data.q, data.A, data.b))
    if q.ndim != 1:
        raise ValueError(f"ConeData: `q` must have shape (n,), got {q.shape}.")
    n, m = q.shape[0], cones.dim
    for name, arr, shape in (("P", P, (n, n)), ("A", A, (m, n)), ("b", b, (m,))):
        if arr.shape != shape:
            raise ValueError(
                f"ConeData: `{name}` must have shape {shape} (n={n} from `q`, m={m} "
                f"rows from {cones}), got {arr.shape}. Batch with `jax.vmap`."
            )
    dtypes = {a.dtype for a in (P, q, A, b)}
    if len(dtypes) != 1 or not jnp.issubdtype(q.dtype, jnp.floating):
        raise TypeError(
            f"ConeData: P, q, A, b must share one floating dtype, got "
            f"{[str(a.dtype) for a in (P, q, A, b)]}."
        )


class AbstractConeCondition(AbstractEquilibrium):
    """A condition that is, or maps its `args` to, a cone program.

    [`unimplicit.InteriorPoint`][] solves any such condition: it asks for the cone
    program and its data, and returns a [`unimplicit.PrimalDual`][] state. A
    condition built on cvxpy (parameters mapped affinely to cone data) subclasses
    this, with `residual(y, args) = cone_program().residual(y, cone_data(args))`.
    """

    @abc.abstractmethod
    def cone_program(self) -> "ConeProgram":
        """The cone program (cones and smoothing) to solve."""

    @abc.abstractmethod
    def cone_data(self, args: PyTree) -> ConeData:
        """The program's data for the condition's `args`."""


class ConeProgram(AbstractConeCondition):
    """The condition "`y` is a primal-dual solution of a cone program".

    Its `args` are a [`unimplicit.ConeData`][] and its state is a
    [`unimplicit.PrimalDual`][] `(x, y, s)`. The residual stacks the optimality
    conditions,

    - stationarity `P x + q + A^T y`,
    - primal feasibility `A x + s - b`,
    - complementarity `s∘y - mu e` (the Jordan product; `s` itself on equality rows),

    so the implicit-function theorem differentiates the solution with respect to
    `P, q, A, b` (nondegenerate, strictly complementary solutions have an invertible
    Jacobian). Solve it with [`unimplicit.InteriorPoint`][].

    **Arguments:**

    - `cones`: the [`unimplicit.Cones`][] of the rows of `A`.
    - `smoothing`: `mu >= 0`. With `mu > 0` the solver returns, and gradients are
        taken at, the central-path point `s∘y = mu e` instead of the optimum: a
        slightly relaxed solution (within about `mu` of it) whose derivatives are
        smooth even where the active set is degenerate.
    """

    cones: Cones
    smoothing: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if not isinstance(self.cones, Cones):
            raise TypeError(f"`cones` must be a `Cones`, not {type(self.cones)}.")
        if not self.smoothing >= 0:
            raise ValueError(f"`smoothing` must be >= 0, got {self.smoothing}.")

    def residual(self, y: PrimalDual, args: ConeData) -> PrimalDual:
        data = args
        dual = _symmetric(data.P) @ y.x + data.q + data.A.T @ y.y
        primal = data.A @ y.x + y.s - data.b
        comp = self.cones.complementarity(y.s, y.y, self.smoothing)
        return PrimalDual(dual, primal, comp)

    def init(self, y0: PrimalDual | None, args: ConeData) -> PrimalDual:
        _check_data(self.cones, args)
        n, m = args.q.shape[0], self.cones.dim
        dtype = jnp.asarray(args.q).dtype
        if y0 is None:
            zero_m = jnp.zeros(m, dtype)
            return PrimalDual(jnp.zeros(n, dtype), zero_m, zero_m)
        if not isinstance(y0, PrimalDual):
            raise TypeError(f"`y0` must be a `PrimalDual`, not {type(y0).__name__}.")
        for name, shape in (("x", (n,)), ("y", (m,)), ("s", (m,))):
            got = jnp.shape(getattr(y0, name))
            if got != shape:
                raise ValueError(f"`y0.{name}` must have shape {shape}, got {got}.")
        return PrimalDual(*(jnp.asarray(a, dtype) for a in (y0.x, y0.y, y0.s)))

    def closure_convert(self, y0: PyTree, args: PyTree) -> "ConeProgram":
        return self

    def cone_program(self) -> "ConeProgram":
        return self

    def cone_data(self, args: ConeData) -> ConeData:
        return args

    def default_linear_solver(
        self, y: PyTree, args: ConeData
    ) -> lx.AbstractLinearSolver:
        # Block elimination on the Jacobian (see `kkt_solver.py`), given its data:
        # reading it off the operator would cost `n` matrix-vector products.
        data = (_symmetric(args.P), args.A, y.s, y.y, self.smoothing)
        return ConeKKTSolver(self.cones, data=data)

    def default_adjoint(self) -> ImplicitAdjoint:
        return ImplicitAdjoint()
