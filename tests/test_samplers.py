import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models.noise_schedules import FixedLinearSchedule
from keras_dmdiff.models.samplers import SAMPLERS, STOCHASTIC_SAMPLERS, run_sampler

MEAN, STD = 0.7, 0.4


def oracle_denoiser(z, condition, gamma_normalised):
    """E[eps | z_t] for data x ~ N(MEAN, STD^2) per pixel: the ideal network."""
    gamma = -13.3 + 26.6 * ops.reshape(gamma_normalised, (-1, 1, 1, 1))
    alpha_sq, sigma_sq = ops.sigmoid(-gamma), ops.sigmoid(gamma)
    return ops.sqrt(sigma_sq) * (z - ops.sqrt(alpha_sq) * MEAN) / (alpha_sq * STD**2 + sigma_sq)


@pytest.mark.parametrize(
    "sampler, num_steps, tolerance",
    [("ancestral", 200, 0.03), ("ddim", 50, 0.03), ("dpm_solver_2m", 15, 0.02), ("dpm_solver_2m_sde", 50, 0.03)],
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


@pytest.mark.parametrize("first_order, second_order", [("ddim", "dpm_solver_2m"), ("ancestral", "dpm_solver_2m_sde")])
def test_second_order_beats_first_order_at_few_steps(first_order, second_order):
    condition = np.zeros((4, 32, 32, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    errors = {}
    for sampler in (first_order, second_order):
        # noise_steps=6: the stochastic pair draws the very same noise, so only the solver differs.
        draws = ops.convert_to_numpy(run_sampler(oracle_denoiser, schedule, condition, 3, 6, sampler, noise_steps=6))
        errors[sampler] = abs(draws.std() - STD)
    assert errors[second_order] < errors[first_order]


def test_stochastic_ddim_spans_deterministic_ddim_to_ancestral():
    condition = np.zeros((4, 32, 32, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)

    def draw(sampler, eta=0.0, num_steps=8):
        return ops.convert_to_numpy(run_sampler(oracle_denoiser, schedule, condition, 5, num_steps, sampler, eta=eta))

    # eta = 1 is the ancestral step (same noise), eta = 0 the deterministic one.
    np.testing.assert_allclose(draw("ddim", eta=1.0), draw("ancestral"), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(draw("ddim", eta=0.0), draw("ddim"))
    # In between it still draws the known posterior.
    halfway = draw("ddim", eta=0.5, num_steps=50)
    assert abs(halfway.mean() - MEAN) < 0.03 and abs(halfway.std() - STD) < 0.06
    with pytest.raises(ValueError, match="between 0"):
        run_sampler(oracle_denoiser, schedule, condition, 5, 2, "ddim", eta=1.5)
    with pytest.raises(ValueError, match="stochasticity of the 'ddim' sampler"):
        run_sampler(oracle_denoiser, schedule, condition, 5, 2, "ancestral", eta=0.5)


def test_the_sde_solver_takes_the_ancestral_first_step():
    # Without a previous step DPM-Solver++(2M) SDE is the ancestral step itself.
    condition = np.zeros((2, 16, 16, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    one_step = [
        ops.convert_to_numpy(run_sampler(oracle_denoiser, schedule, condition, 5, 1, sampler))
        for sampler in ("ancestral", "dpm_solver_2m_sde")
    ]
    np.testing.assert_allclose(one_step[0], one_step[1], rtol=1e-5, atol=1e-5)


def test_coupled_noise_pairs_few_steps_with_the_fine_sampler():
    condition = np.zeros((8, 32, 32, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)

    def draw(num_steps, seed=3, sampler="ancestral", noise_steps=None):
        return ops.convert_to_numpy(
            run_sampler(oracle_denoiser, schedule, condition, seed, num_steps, sampler, noise_steps=noise_steps)
        )

    fine = draw(100)
    # A grid as fine as the sampler's own changes nothing.
    np.testing.assert_array_equal(draw(100, noise_steps=100), fine)
    coupled, independent = draw(10, noise_steps=100), draw(10, seed=4)
    # Still the 10-step sampler's distribution (10 steps are too few for the true std: both miss it alike) ...
    assert abs(coupled.mean() - independent.mean()) < 0.02 and abs(coupled.std() - independent.std()) < 0.01
    # ... but paired with the fine draw of the same seed, pixel by pixel.
    assert np.corrcoef(coupled.ravel(), fine.ravel())[0, 1] > 0.8
    assert abs(np.corrcoef(independent.ravel(), fine.ravel())[0, 1]) < 0.1
    for sampler in STOCHASTIC_SAMPLERS:
        paired = draw(20, sampler=sampler, noise_steps=100)
        assert np.sqrt(np.mean((paired - fine) ** 2)) < 0.5 * np.sqrt(np.mean((independent - fine) ** 2))


def test_noise_steps_must_be_a_multiple_of_the_steps():
    condition = np.zeros((1, 16, 16, 1), "float32")
    with pytest.raises(ValueError, match="multiple of num_steps"):
        run_sampler(oracle_denoiser, FixedLinearSchedule(-13.3, 13.3), condition, 0, 30, noise_steps=100)


def test_tensor_number_of_steps_gives_the_same_draws():
    condition = np.zeros((1, 16, 16, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    for sampler in SAMPLERS:
        static = run_sampler(oracle_denoiser, schedule, condition, 1, 5, sampler)
        dynamic = run_sampler(oracle_denoiser, schedule, condition, 1, ops.convert_to_tensor(5, "int32"), sampler)
        np.testing.assert_allclose(ops.convert_to_numpy(static), ops.convert_to_numpy(dynamic), atol=1e-5)


def test_random_shifts_are_exact_for_an_equivariant_denoiser_and_spread_a_grid():
    condition = np.zeros((4, 32, 32, 1), "float32")
    schedule = FixedLinearSchedule(-13.3, 13.3)
    # The oracle acts pixel by pixel, so rolling its input and output changes nothing.
    plain = run_sampler(oracle_denoiser, schedule, condition, 3, 20, "ancestral")
    shifted = run_sampler(oracle_denoiser, schedule, condition, 3, 20, "ancestral", shift_period=16)
    np.testing.assert_allclose(ops.convert_to_numpy(shifted), ops.convert_to_numpy(plain), atol=1e-5)

    # A denoiser tied to its own pixel grid (like an under-trained U-Net) writes an edge every 16 pixels.
    column = np.arange(32)[None, None, :, None]
    grid = ops.convert_to_tensor(np.where(column % 16 == 0, 1.0, 0.0).astype("float32"))

    def gridded(z, condition, gamma_normalised):
        return oracle_denoiser(z, condition, gamma_normalised) + 0.5 * grid

    def grid_offset(draws):
        # Mean of the grid columns minus the mean of the others, over maps and rows.
        columns = draws[..., 0].mean(axis=(0, 1))
        on_grid = np.arange(32) % 16 == 0
        return abs(columns[on_grid].mean() - columns[~on_grid].mean())

    fixed = ops.convert_to_numpy(run_sampler(gridded, schedule, condition, 3, 20, "ancestral"))
    spread = ops.convert_to_numpy(run_sampler(gridded, schedule, condition, 3, 20, "ancestral", shift_period=16))
    assert grid_offset(fixed) > 4 * grid_offset(spread)
