"""Training tools for deep equilibrium models: Jacobian regularisation, spectral
normalisation, fixed-point correction and a stability diagnostic."""

from ._regularize import (
    fixed_point_correction as fixed_point_correction,
    jacobian_frobenius as jacobian_frobenius,
    solver_trajectory as solver_trajectory,
    spectral_normalise as spectral_normalise,
    spectral_radius as spectral_radius,
)
