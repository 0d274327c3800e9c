"""Weightings w(gamma) of the continuous-time diffusion loss (Kingma & Gao 2023).

The VDM diffusion term is the integral over t of 0.5 gamma'(t) ||eps - eps_hat||^2;
a weighted loss puts w(gamma(t)) in front of it. Any w that is monotone in
gamma keeps the loss an ELBO of noise-augmented data (VDM++), while moving the
network's capacity from nearly noiseless latents (whose fine detail the stars
cannot predict) to the noise levels where the stars decide the structure.

Each weighting also has its antiderivative W (W' = w) and W's inverse, so that
gamma can be drawn with density proportional to w on [gamma(0), gamma(1)]
(importance sampling): the weighted term of an example is then
0.5 (W(gamma_1) - W(gamma_0)) ||eps - eps_hat||^2 with no weight in front of
it, which has a much lower variance than uniform times multiplied by w.

- "elbo": w = 1, the reference loss.
- "sigmoid": w = sigmoid(gamma + bias) (VDM++'s sigmoid weighting; bias 2).
- "min_snr": w = min(1, bias e^gamma) = min(SNR, bias) / SNR, the min-SNR
  weighting for eps (Hang et al. 2023; bias 5).
"""

import math

from keras import ops

WEIGHTINGS = ("elbo", "sigmoid", "min_snr")
DEFAULT_BIAS = {"elbo": 0.0, "sigmoid": 2.0, "min_snr": 5.0}


def check_weighting(name, bias):
    """Raises a ValueError for an unknown weighting or a bias it cannot take."""
    if name not in WEIGHTINGS:
        raise ValueError(f"Unknown loss weighting {name!r}; choose one of {WEIGHTINGS}.")
    if name == "min_snr" and not bias > 0:
        raise ValueError(f"The min_snr weighting needs a positive SNR cap (bias); got {bias}.")


def weight(name, gamma, bias):
    """w(gamma) of weighting `name`.

    Example:
        >>> float(weight("min_snr", ops.array(0.0), 5.0))
        1.0
    """
    if name == "elbo":
        return ops.ones_like(gamma)
    if name == "sigmoid":
        return ops.sigmoid(gamma + bias)
    return ops.minimum(1.0, bias * ops.exp(gamma))


def integral(name, gamma, bias):
    """W(gamma), an antiderivative of w (increasing)."""
    if name == "elbo":
        return gamma
    if name == "sigmoid":
        return ops.softplus(gamma + bias)
    knee = -math.log(bias)  # where bias * e^gamma reaches 1
    return ops.where(gamma <= knee, bias * ops.exp(ops.minimum(gamma, knee)), 1.0 + gamma - knee)


def inverse_integral(name, value, bias):
    """gamma with W(gamma) = value (the inverse of `integral`)."""
    if name == "elbo":
        return value
    if name == "sigmoid":
        # softplus^-1(v) = log(expm1(v)) = v + log(1 - e^-v), stable for all v > 0.
        value = ops.maximum(value, 1e-30)
        return value + ops.log(-ops.expm1(-value)) - bias
    knee = -math.log(bias)
    return ops.where(
        value <= 1.0, ops.log(ops.maximum(ops.minimum(value, 1.0), 1e-30) / bias), knee + value - 1.0
    )
