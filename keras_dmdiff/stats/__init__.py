"""Statistics of dark-matter maps and of posterior samples (pure numpy).

Power spectra and cross-correlation (`power_spectrum`), map statistics
(`maps`: one-point PDF, MSE in dex^2, aperture masses) and calibration
(`calibration`: coverage, SBC ranks, TARP, verdict). See each module's
docstring for conventions (units, normalisation, axis order).
"""

from keras_dmdiff.stats.calibration import BIAS_TOLERANCE
from keras_dmdiff.stats.calibration import COVERAGE_TOLERANCE
from keras_dmdiff.stats.calibration import DEFAULT_LEVELS
from keras_dmdiff.stats.calibration import aperture_mass_ranks
from keras_dmdiff.stats.calibration import calibration_verdict
from keras_dmdiff.stats.calibration import coverage_curve
from keras_dmdiff.stats.calibration import error_to_spread
from keras_dmdiff.stats.calibration import fourier_calibration
from keras_dmdiff.stats.calibration import interval_coverage
from keras_dmdiff.stats.calibration import normalized_rank
from keras_dmdiff.stats.calibration import pixel_ranks
from keras_dmdiff.stats.calibration import power_spectrum_ranks
from keras_dmdiff.stats.calibration import predicted_mean_correlation
from keras_dmdiff.stats.calibration import rank_histogram
from keras_dmdiff.stats.calibration import rank_statistic
from keras_dmdiff.stats.calibration import rank_uniformity_pvalue
from keras_dmdiff.stats.calibration import tarp_coverage
from keras_dmdiff.stats.maps import DEFAULT_LOG10_SIGMA_BINS
from keras_dmdiff.stats.maps import aperture_masses
from keras_dmdiff.stats.maps import grid_edge_ratio
from keras_dmdiff.stats.maps import mse_dex2
from keras_dmdiff.stats.maps import one_point_pdf
from keras_dmdiff.stats.maps import peak_centres
from keras_dmdiff.stats.maps import pixel_area
from keras_dmdiff.stats.power_spectrum import cross_correlation
from keras_dmdiff.stats.power_spectrum import cross_power_spectrum
from keras_dmdiff.stats.power_spectrum import fundamental_wavenumber
from keras_dmdiff.stats.power_spectrum import k_bin_edges
from keras_dmdiff.stats.power_spectrum import nyquist_wavenumber
from keras_dmdiff.stats.power_spectrum import overdensity
from keras_dmdiff.stats.power_spectrum import power_ratio
from keras_dmdiff.stats.power_spectrum import power_spectrum
