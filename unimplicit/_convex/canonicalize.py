"""Canonicalisation of a DPP cvxpy problem into an affine map to cone-program data.

This runs once, at construction, in NumPy/SciPy. What it returns is pure JAX at call
time: the parameter values are stacked into one vector $\\theta$ (cvxpy's column
order, plus a trailing constant 1), and each of $P$, $q$, $[A | b]$ is a sparse linear
function of $\\theta$ evaluated as a scatter-add. Being linear in $\\theta$, the map
needs no special derivative rule.

cvxpy stores its cone program as `minimize 1/2 x^T P x + q^T x  s.t.  A' x + b in K`.
We return it in the convention of `ConeData`: `A x + s = b, s in K`, so `A = -A'`. The
dual `y` of that form is what cvxpy reports as the constraints' dual values. Both
are checked in `tests/test_convex_layer.py` (against the data cvxpy hands its
solvers, and against cvxpylayers' solutions and duals).
"""

import importlib
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jaxtyping import Array, ArrayLike, Float

from .cone_base import cone_kinds
from .cones import Cones


class _Static:
    """Hashes by identity, so NumPy index arrays can live in a static field."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class _SparseMap(eqx.Module):
    """A fixed sparse matrix `M`, applied as `theta -> M @ theta` by a scatter-add."""

    rows: _Static = eqx.field(static=True)
    cols: _Static = eqx.field(static=True)
    vals: _Static = eqx.field(static=True)
    size: int = eqx.field(static=True)

    def __call__(self, theta: Float[Array, " p"]) -> Float[Array, " k"]:
        terms = jnp.asarray(self.vals.value, theta.dtype) * theta[self.cols.value]
        out = jnp.zeros(self.size, theta.dtype)
        return out.at[self.rows.value].add(terms, indices_are_sorted=True)


def _sparse_map(matrix: Any) -> _SparseMap:
    coo: Any = sp.coo_matrix(matrix)
    order = np.lexsort((coo.col, coo.row))
    keep = coo.data[order] != 0
    return _SparseMap(
        rows=_Static(coo.row[order][keep].astype(np.int32)),
        cols=_Static(coo.col[order][keep].astype(np.int32)),
        vals=_Static(coo.data[order][keep].astype(np.float64)),
        size=int(coo.shape[0]),
    )


class Slot(eqx.Module):
    """Where one requested output lives in a flat vector: `vec[start:start+size]`."""

    name: str = eqx.field(static=True)
    start: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def read(self, vec: Array) -> Array:
        size = int(np.prod(self.shape, dtype=int))
        # cvxpy vectorises column-major.
        return jnp.reshape(vec[self.start : self.start + size], self.shape, order="F")


class ParametricConeProgram(eqx.Module):
    """The affine map from parameter values to `ConeData`, and back to variables.

    Built by [`canonicalize`][]; every method is pure JAX and acts on one sample.
    """

    num_vars: int = eqx.field(static=True)
    cones: Cones
    params: tuple[Slot, ...]
    variables: tuple[Slot, ...]
    duals: tuple[Slot, ...]
    param_order: tuple[int, ...] = eqx.field(static=True)
    P: _SparseMap | None
    q: _SparseMap
    Ab: _SparseMap

    @property
    def num_constraints(self) -> int:
        return self.cones.dim

    def theta(self, values: Sequence[ArrayLike]) -> Float[Array, " p"]:
        """Stack parameter values (in the user's order) into cvxpy's vector."""
        dtype = jnp.result_type(float, *values)
        flat = [
            jnp.ravel(jnp.asarray(values[i], dtype), order="F")
            for i in self.param_order
        ]
        return jnp.concatenate([*flat, jnp.ones(1, dtype)])

    def data(self, values: Sequence[ArrayLike]) -> tuple[Array, Array, Array, Array]:
        """Evaluate `(P, q, A, b)` of `1/2 x'Px + q'x  s.t.  Ax + s = b, s in K`."""
        theta = self.theta(values)
        n, m = self.num_vars, self.num_constraints
        if self.P is None:
            P = jnp.zeros((n, n), theta.dtype)
        else:
            # Symmetric, so column-major vs row-major does not matter.
            P = jnp.reshape(self.P(theta), (n, n))
        q = self.q(theta)[:n]
        Ab = jnp.reshape(self.Ab(theta), (n + 1, m)).T
        return P, q, -Ab[:, :n], Ab[:, n]

    def split_primal(self, x: Float[Array, " n"]) -> tuple[Array, ...]:
        return tuple(slot.read(x) for slot in self.variables)

    def split_dual(self, y: Float[Array, " m"]) -> tuple[Array, ...]:
        return tuple(slot.read(y) for slot in self.duals)


def _plain(value: Any) -> Any:
    # cvxpy's counts are NumPy ints and its sizes lists: make them hashable ints.
    if isinstance(value, (list, tuple)):
        return tuple(int(k) for k in value)
    return int(value)


def _cones(prog: Any) -> Cones:
    """The `Cones` of cvxpy's cone program, kind by kind through the registry: a
    registered kind is named as its count in cvxpy's `ConeDims`."""
    dims = prog.cone_dims
    registered = [kind.name for kind in cone_kinds()]
    specs, unsupported = {}, []
    for name, value in vars(dims).items():
        if name == "zero":
            continue
        if name in registered:
            specs[name] = _plain(value)
        elif value:
            unsupported.append(name)
    if unsupported or getattr(prog, "dir_cones", None):
        raise ValueError(
            "Only equality rows and the registered cone kinds are supported "
            f"({', '.join(registered)}; built in: nonnegative and second-order "
            f"cones); this problem canonicalises to {dims!r}."
        )
    return Cones(zero=int(dims.zero), **specs)


def _refuse_unless_dpp(problem: Any, cp: Any) -> None:
    if not problem.is_dcp():
        try:
            problem.get_problem_data(solver=cp.SCS)
        except cp.error.DCPError as err:
            raise ValueError(f"The problem is not convex (DCP): {err}") from None
        raise ValueError("The problem is not convex (DCP).")
    if not problem.is_dpp():
        parts = [
            f"constraint {i} ({c})"
            for i, c in enumerate(problem.constraints)
            if not c.is_dcp(dpp=True)
        ]
        if not problem.objective.is_dcp(dpp=True):
            parts.insert(0, f"the objective ({problem.objective})")
        try:
            problem.get_problem_data(solver=cp.SCS, enforce_dpp=True)
            reason = ""
        except cp.error.DPPError as err:
            reason = f" cvxpy: {err}"
        raise ValueError(
            "The problem is not DPP, so it has no fixed parametric cone program. "
            f"Not DPP: {', '.join(parts) or 'the problem'}.{reason}"
        )


def canonicalize(
    problem: Any,
    parameters: Sequence[Any],
    variables: Sequence[Any],
    duals: Sequence[Any] = (),
) -> ParametricConeProgram:
    """Canonicalise a DPP cvxpy problem once, into a [`ParametricConeProgram`][].

    **Arguments:**

    - `problem`: a `cvxpy.Problem`, DCP and DPP, whose cones after canonicalisation
        are of registered kinds (zero, nonnegative, second-order built in).
    - `parameters`: every `cvxpy.Parameter` of `problem`, in the order values will be
        passed.
    - `variables`: the `cvxpy.Variable`s whose optimal values are wanted.
    - `duals`: constraints of `problem` whose optimal dual values are wanted.

    **Returns:**

    A `ParametricConeProgram`. Raises `ValueError` for a problem that is not DCP or not
    DPP (with cvxpy's reason), for unsupported cones, and for parameters or variables
    that do not belong to `problem`.
    """
    cp: Any = importlib.import_module("cvxpy")  # an optional dependency
    if not isinstance(problem, cp.Problem):
        raise TypeError(f"Expected a cvxpy.Problem, got {type(problem).__name__}.")
    parameters, variables, duals = list(parameters), list(variables), list(duals)
    _refuse_unless_dpp(problem, cp)
    if {p.id for p in parameters} != {p.id for p in problem.parameters()}:
        raise ValueError(
            "`parameters` must list exactly the parameters of the problem: got "
            f"{[p.name() for p in parameters]}, the problem has "
            f"{[p.name() for p in problem.parameters()]}."
        )
    if len({p.id for p in parameters}) != len(parameters):
        raise ValueError("`parameters` lists a parameter twice.")
    for p in parameters:
        if p._has_dim_reducing_attr:
            raise ValueError(
                f"Parameter {p.name()!r} has a dimension-reducing attribute "
                "(symmetric, PSD, diag, sparsity); not supported."
            )
    problem_vars = {v.id for v in problem.variables()}
    for v in variables:
        if v.id not in problem_vars:
            raise ValueError(f"Variable {v.name()!r} is not a variable of the problem.")
    problem_cons = {c.id for c in problem.constraints}
    for c in duals:
        if c.id not in problem_cons:
            raise ValueError(f"Constraint {c} is not a constraint of the problem.")

    solver = cp.CLARABEL if cp.CLARABEL in cp.installed_solvers() else cp.SCS
    chain: Any
    data, chain, _ = problem.get_problem_data(solver=solver, enforce_dpp=True)
    prog = data[cp.settings.PARAM_PROB]
    cones = _cones(prog)
    if data.get("lower_bounds") is not None or data.get("upper_bounds") is not None:
        raise ValueError("Variable bounds passed to the solver are not supported.")

    param_map = {k: v[0] for k, v in chain.compose_param_id_map().items()}
    var_map = chain.compose_var_id_map()
    constr_map = chain.compose_constr_id_map()

    cols = [prog.param_id_to_col[param_map.get(p.id, p.id)] for p in parameters]
    param_slots = tuple(
        Slot(name=p.name(), start=c, shape=tuple(p.shape))
        for p, c in zip(parameters, cols)
    )
    # `theta` concatenates the values in cvxpy's column order.
    param_order = tuple(i for _, i in sorted((c, i) for i, c in enumerate(cols)))
    offset = 0
    for i in param_order:
        if cols[i] != offset:  # cvxpy's columns are contiguous; check, not assume
            raise ValueError("Unexpected parameter layout in cvxpy's cone program.")
        offset += parameters[i].size
    if prog.param_id_to_col.get(-1, offset) != offset:
        raise ValueError("Unexpected parameter layout in cvxpy's cone program.")

    var_slots = []
    for v in variables:
        ids = var_map.get(v.id, [v.id])
        if (
            len(ids) != 1
            or v._has_dim_reducing_attr
            or ids[0] not in prog.var_id_to_col
        ):
            raise ValueError(f"Variable {v.name()!r} has an unsupported attribute.")
        var_slots.append(
            Slot(name=v.name(), start=prog.var_id_to_col[ids[0]], shape=tuple(v.shape))
        )

    # The rows are cvxpy's constraints, kind by kind in the order of the cones.
    offsets, start = {}, 0
    names = ["Zero"] + [kind.cvxpy for kind in cone_kinds() if kind.cvxpy]
    for name in names:
        for c in prog.constr_map.get(getattr(cp.constraints, name), []):
            offsets[c.id] = start
            start += c.size
    dual_slots = []
    for c in duals:
        cid = constr_map.get(c.id, c.id)
        if cid not in offsets:
            raise ValueError(f"No dual is available for constraint {c}.")
        # A cone constraint's dual (e.g. a SOC's) is its flat cone vector.
        flat = int(np.prod(c.shape, dtype=int)) != c.size
        shape = (c.size,) if flat else tuple(c.shape)
        dual_slots.append(Slot(name=str(c), start=offsets[cid], shape=shape))

    n = int(prog.x.size)
    return ParametricConeProgram(
        num_vars=n,
        cones=cones,
        params=param_slots,
        variables=tuple(var_slots),
        duals=tuple(dual_slots),
        param_order=param_order,
        P=None if prog.P is None else _sparse_map(prog.P),
        q=_sparse_map(prog.q),
        Ab=_sparse_map(prog.A),
    )
