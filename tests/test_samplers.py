import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models.noise_schedules import FixedLinearSchedule
from keras_dmdiff.models.samplers import SAMPLERS, run_sampler

MEAN, STD = 0.7, 0.4


def oracle_denoiser(z, condition, gamma_normalised):
    """E[eps | z_t] for data x ~ N(MEAN, STD^2) per pixel: the ideal network."""
    gamma = -13.3 + 26.6 * ops.reshape(gamma_normalised, (-1, 1, 1, 1))
    alpha_sq, sigma_sq = ops.sigmoid(-gamma), ops.sigmoid(gamma)
    return ops.sqrt(sigma_sq) * (z - ops.sqrt(alpha_sq) * MEAN) / (alpha_sq * STD**2 + sigma_sq)


@pytest.mark.parametrize(
    "sampler, num_steps, tolerance",
    [("ancestral", 200, 0.03), ("ddim", 50, 0.03), ("dpm_solver_2m", 15, 0.02)],
)
def test_samplers_draw_the_known_gaussian_posterior(sampler, num_steps, tolerance):
    condition = np.zeros((4, 32, 32, 1), "float32")
    draws = ops.convert_to_numpy(
        run_sampler(oracle_denoiser, FixedLinearSchedule(-13.3, 13.3), condition, 3, num_steps, sampler)
    )
    assert abs(draws.mean() - MEAN) < tolerance
    assert abs(draws.std() - STD) < tolerance * 2
    # Pixels are independent draws, not copies.
    assert abs(np.corrcoef(draws[0, :, :-1].ravel(), draws[0, :, 1:].ravel())[0, 1]) < 0.1


def test_second_order_beats_first_order_at_few_steps():
    condition = np.zeros((4, 32, 32, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    errors = {}
    for sampler in ("ddim", "dpm_solver_2m"):
        draws = ops.convert_to_numpy(run_sampler(oracle_denoiser, schedule, condition, 3, 6, sampler))
        errors[sampler] = abs(draws.std() - STD)
    assert errors["dpm_solver_2m"] < errors["ddim"]


def test_tensor_number_of_steps_gives_the_same_draws():
    condition = np.zeros((1, 16, 16, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    for sampler in SAMPLERS:
        static = run_sampler(oracle_denoiser, schedule, condition, 1, 5, sampler)
        dynamic = run_sampler(oracle_denoiser, schedule, condition, 1, ops.convert_to_tensor(5, "int32"), sampler)
        np.testing.assert_allclose(ops.convert_to_numpy(static), ops.convert_to_numpy(dynamic), atol=1e-5)
