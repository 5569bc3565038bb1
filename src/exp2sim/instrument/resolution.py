"""Resolution function of a direct-geometry chopper spectrometer, Tobyfit-style.

The instrument is described by ten independent random variables (the neutron's deviations
from its nominal path and times), each with its true distribution:

====================  ====  ==========================================================
name                  unit  distribution
====================  ====  ==========================================================
``moderator_time``    s     Ikeda-Carpenter pulse (shifted to zero mean)
``aperture_x``        m     uniform over the beam-defining aperture width (horizontal)
``aperture_y``        m     uniform over the aperture height (vertical)
``chopper_time``      s     Fermi chopper transmission vs time (triangle for matched
                            slits, flattened top for curvature mismatch)
``sample_x``          m     uniform over the sample's horizontal width
``sample_y``          m     uniform over the sample's height
``sample_z``          m     uniform over the sample's thickness along the beam
``detector_depth``    m     uniform over the effective absorption depth (along k_f)
``detector_width``    m     uniform across the detector tube (perpendicular to k_f)
``detector_height``   m     uniform along the tube over one detector element
====================  ====  ==========================================================

A neutron leaves the moderator face (tilted by ``moderator_tilt`` about the vertical) at
time ``moderator_time``; its flight direction is the line from the aperture point to the
scattering point in the sample; the Fermi chopper transmits it at ``chopper_time`` plus a
shift -alpha / omega for a horizontal flight angle alpha (the slit rotates at omega), so its
incident speed is the moderator-chopper path over the moderator-chopper time. It reaches the
sample after the chopper-sample flight, and is detected at a fixed time (the time bin
centre) at a point in the detector element, which fixes its final speed. The deviations of
k_i = m v_i / hbar, k_f, Q = k_i - k_f and E = hbar^2 (k_i^2 - k_f^2) / 2m from their nominal
values are linear, to first order, in the ten variables: :meth:`ResolutionModel.jacobian`
gives that linear map at each pixel (derived analytically from the exact kinematics in
:func:`_exact_hkle`, which the tests compare it with). Monte Carlo convolution uses
``jacobian @ sample_variables`` and the Gaussian approximation its covariance
``J C J^T``. The same physics is used by Tobyfit (T. G. Perring's thesis; Horace's
``dq_matrix_DGfermi``); this is an independent derivation in exp2sim's laboratory frame.

Laboratory frame (as in :mod:`exp2sim.instrument.spectrometer`): z along k_i, x horizontal,
y up. The crystal has c* along z and a* along x rotated by ``psi`` about z; L at each
(h, k, E) pixel is fixed by kinematics (forward branch, |k_f|^2 = Q_perp^2 + (k_i - Q_z)^2).

The energy-bin width is not one of the variables: callers integrate over bins themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exp2sim.instrument.spectrometer import (
    E_FROM_K2,
    MAPS,
    V_FROM_SQRT_E,
    Setting,
    Spectrometer,
)
from exp2sim.spinwave.lattice import Lattice

__all__ = [
    "FWHM_PER_SIGMA",
    "IkedaCarpenterModerator",
    "MAPS_RESOLUTION",
    "ResolutionModel",
    "VARIABLES",
    "chopper_pulse_variance",
    "chopper_pulse_width",
]

FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
# v = V_FROM_K * k: neutron speed (m/s) from wave number (1/Angstrom)
V_FROM_K = V_FROM_SQRT_E * np.sqrt(E_FROM_K2)

VARIABLES = (
    "moderator_time",
    "aperture_x",
    "aperture_y",
    "chopper_time",
    "sample_x",
    "sample_y",
    "sample_z",
    "detector_depth",
    "detector_width",
    "detector_height",
)
_IDX = {name: i for i, name in enumerate(VARIABLES)}
_NVAR = len(VARIABLES)


# --------------------------------------------------------------------------------------
# Moderator
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IkedaCarpenterModerator:
    """Ikeda-Carpenter moderator pulse: a Gamma(3) slowing-down term, optionally followed
    by an exponential storage term.

    The emission time is t = t_fast + t_store with t_fast ~ Gamma(shape 3, scale tau_f)
    (density t^2 exp(-t / tau_f) / (2 tau_f^3)) and, with probability ``r``, t_store ~
    Exponential(tau_s) (else 0). Mean 3 tau_f + r tau_s, variance 3 tau_f^2 +
    r (2 - r) tau_s^2.

    ``tau_f_coefficient`` (microseconds sqrt(meV)) gives tau_f = coefficient / sqrt(Ei),
    proportional to the wavelength as for slowing-down in a hydrogenous moderator;
    ``tau_s`` is in microseconds. The default is Horace's empirical MAPS moderator
    (``maps_instrument``: ikcarp, tau_f = 70 / sqrt(Ei) microseconds, no storage term).
    """

    tau_f_coefficient: float = 70.0
    tau_s: float = 0.0
    r: float = 0.0

    def __post_init__(self) -> None:
        if not self.tau_f_coefficient > 0:
            raise ValueError(f"tau_f_coefficient must be positive, got {self.tau_f_coefficient}")
        if self.tau_s < 0 or not 0.0 <= self.r <= 1.0:
            raise ValueError(f"need tau_s >= 0 and 0 <= r <= 1, got {self.tau_s}, {self.r}")

    def tau_f(self, ei: float) -> float:
        """Fast (slowing-down) decay time (s) at incident energy ei (meV)."""
        return 1e-6 * self.tau_f_coefficient / np.sqrt(ei)

    def variance(self, ei: float) -> float:
        """Variance of the emission time (s^2) at incident energy ei (meV)."""
        tau_f, tau_s = self.tau_f(ei), 1e-6 * self.tau_s
        return 3.0 * tau_f**2 + self.r * (2.0 - self.r) * tau_s**2

    def mean(self, ei: float) -> float:
        """Mean emission time (s) at incident energy ei (meV)."""
        return 3.0 * self.tau_f(ei) + self.r * 1e-6 * self.tau_s

    def sample(self, ei: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """n zero-mean emission-time deviations (s), shape (n,)."""
        t = rng.gamma(3.0, self.tau_f(ei), size=n)
        if self.r > 0 and self.tau_s > 0:
            stored = rng.random(n) < self.r
            t = t + np.where(stored, rng.exponential(1e-6 * self.tau_s, size=n), 0.0)
        return t - self.mean(ei)


# --------------------------------------------------------------------------------------
# Fermi chopper
# --------------------------------------------------------------------------------------


def chopper_pulse_width(spectrometer: Spectrometer, setting: Setting) -> tuple[float, float]:
    """Fermi chopper time scale and curvature mismatch at a setting.

    Returns ``(delta, gamma)``: delta = w / (2 R omega) (s), the FWHM of the triangular
    transmission of straight slits, and gamma = (2 R^2 / w) |1/rho - 2 omega / v_i|
    (dimensionless): the mismatch between the slit curvature rho and the curvature
    v_i / (2 omega) of the neutron's path in the rotor frame. No transmission for gamma >= 4.
    """
    chopper = spectrometer.chopper
    omega = 2.0 * np.pi * setting.frequency
    vi = V_FROM_SQRT_E * np.sqrt(setting.ei)
    delta = chopper.slit_width / (2.0 * chopper.radius * omega)
    gamma = (2.0 * chopper.radius**2 / chopper.slit_width) * abs(
        1.0 / chopper.curvature - 2.0 * omega / vi
    )
    return float(delta), float(gamma)


def _chopper_transmission(tau: np.ndarray, gamma: float) -> np.ndarray:
    """Transmission of a Fermi chopper vs reduced time tau = |t| / delta (peak-normalised).

    A neutron crossing the rotor at the slit angle phi = omega t sees, in the slit frame,
    the parabola y(x) = phi x + kappa x^2 / 2 over x in [-R, R] (kappa: curvature mismatch);
    the fraction of the slit width w it can pass through is 1 - (range of y) / w, i.e.
    1 - tau where the parabola's vertex lies outside the rotor (tau >= gamma) and
    1 - (gamma + tau)^2 / (4 gamma) where it lies inside.
    """
    tau = np.abs(np.asarray(tau, dtype=float))
    if gamma <= 0:
        return np.clip(1.0 - tau, 0.0, None)
    inside = 1.0 - (gamma + tau) ** 2 / (4.0 * gamma)
    out = np.where(tau < gamma, inside, 1.0 - tau)
    return np.clip(out, 0.0, None)


def _chopper_table(gamma: float, n: int = 4001) -> tuple[np.ndarray, np.ndarray]:
    """Reduced times tau in [-tau_max, tau_max] and the normalised CDF of the pulse there."""
    if gamma >= 4.0:
        raise ValueError(f"Fermi chopper does not transmit (curvature mismatch {gamma:.3g} >= 4)")
    tau_max = 1.0 if gamma <= 1.0 else np.sqrt(gamma) * (2.0 - np.sqrt(gamma))
    tau = np.linspace(-tau_max, tau_max, n)
    pdf = _chopper_transmission(tau, gamma)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(tau))])
    return tau, cdf / cdf[-1]


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral of y(x)."""
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def chopper_pulse_variance(spectrometer: Spectrometer, setting: Setting) -> float:
    """Variance (s^2) of the Fermi chopper opening-time distribution at a setting."""
    delta, gamma = chopper_pulse_width(spectrometer, setting)
    tau, _ = _chopper_table(gamma, n=20001)
    pdf = _chopper_transmission(tau, gamma)
    norm = _trapz(pdf, tau)
    return float(delta**2 * _trapz(tau**2 * pdf, tau) / norm)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolutionModel:
    """Instrument parameters for the resolution function of a direct-geometry spectrometer.

    Distances in metres, angles in degrees. Full widths of uniform distributions. The
    defaults are those of :data:`MAPS_RESOLUTION`.

    - ``moderator``: pulse model (:class:`IkedaCarpenterModerator`);
      ``moderator_tilt``: angle theta_m between the moderator face normal and the beam; the
      face is the plane z + x tan(theta_m) = -(moderator-sample distance), so paths through
      +x start further upstream. The Fermi slit turns so that a path of horizontal slope
      alpha = dx/dz passes at t_ch - alpha / omega. These relative signs are Tobyfit's and
      only they reproduce the h-E correlations of the Tobyfit tables of the experiment.
    - ``aperture_distance``: beam-defining aperture to sample (upstream, m);
      ``aperture_width`` (horizontal), ``aperture_height`` (vertical).
    - ``sample_size``: (horizontal width, height, thickness along the beam) of a cuboid.
    - ``detector_depth``: full width of the absorption depth along k_f;
      ``detector_width``: across the tube (its diameter); ``detector_height``: length of one
      detector element along the tube. ``tube_axis``: "vertical" (tube axis along the
      projection of y perpendicular to k_f) or "horizontal" (along x's projection).
    """

    spectrometer: Spectrometer
    moderator: IkedaCarpenterModerator = field(default_factory=IkedaCarpenterModerator)
    moderator_tilt: float = 32.0
    aperture_distance: float = 10.01
    aperture_width: float = 0.07013
    aperture_height: float = 0.07013
    sample_size: tuple[float, float, float] = (0.030, 0.030, 0.020)
    detector_depth: float = 0.015
    detector_width: float = 0.0254
    detector_height: float = 0.022
    tube_axis: str = "vertical"

    def __post_init__(self) -> None:
        if self.aperture_distance <= self.spectrometer.chopper_sample:
            raise ValueError("the aperture must lie upstream of the Fermi chopper")
        sizes = [
            self.aperture_width,
            self.aperture_height,
            *self.sample_size,
            self.detector_depth,
            self.detector_width,
            self.detector_height,
        ]
        if len(self.sample_size) != 3 or any(not (s >= 0 and np.isfinite(s)) for s in sizes):
            raise ValueError("aperture, sample and detector sizes must be finite and >= 0")
        if self.tube_axis not in ("vertical", "horizontal"):
            raise ValueError(f"tube_axis must be 'vertical' or 'horizontal', got {self.tube_axis}")

    # ---- variables -------------------------------------------------------------------

    def variables(self) -> list[str]:
        """Names of the V = 10 random variables, in the order used by every array here."""
        return list(VARIABLES)

    def _uniform_widths(self) -> np.ndarray:
        """Full widths (m) of the uniform variables, NaN for the two time variables, (V,)."""
        sx, sy, sz = self.sample_size
        return np.array(
            [
                np.nan,
                self.aperture_width,
                self.aperture_height,
                np.nan,
                sx,
                sy,
                sz,
                self.detector_depth,
                self.detector_width,
                self.detector_height,
            ]
        )

    def variable_covariance(self, setting: Setting) -> np.ndarray:
        """Covariance (V, V) of the variables (s^2, m^2; diagonal: they are independent)."""
        self.spectrometer.check(setting)
        var = self._uniform_widths() ** 2 / 12.0
        var[_IDX["moderator_time"]] = self.moderator.variance(setting.ei)
        var[_IDX["chopper_time"]] = chopper_pulse_variance(self.spectrometer, setting)
        return np.diag(var)

    def sample_variables(self, setting: Setting, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n zero-mean deviations of the variables from their true distributions.

        Returns (n, V): seconds for the two times, metres for positions. The moderator time
        follows the Ikeda-Carpenter pulse, the chopper time the Fermi chopper transmission,
        the rest are uniform over their full widths.
        """
        self.spectrometer.check(setting)
        out = np.empty((int(n), _NVAR))
        widths = self._uniform_widths()
        for i, w in enumerate(widths):
            if np.isfinite(w):
                out[:, i] = w * (rng.random(n) - 0.5)
        out[:, _IDX["moderator_time"]] = self.moderator.sample(setting.ei, n, rng)
        delta, gamma = chopper_pulse_width(self.spectrometer, setting)
        tau, cdf = _chopper_table(gamma)
        out[:, _IDX["chopper_time"]] = delta * np.interp(rng.random(n), cdf, tau)
        return out

    # ---- geometry ----------------------------------------------------------------------

    def _distances(self) -> tuple[float, float, float, float]:
        """(x0, xa, x1, x2): moderator-chopper, aperture-chopper, chopper-sample,
        sample-detector distances (m)."""
        s = self.spectrometer
        x1 = s.chopper_sample
        return s.moderator_chopper, self.aperture_distance - x1, x1, s.sample_detector

    def _detector_axes(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors across (width) and along (height) the tube for k_f directions n
        (..., 3): both perpendicular to n."""
        axis = 1 if self.tube_axis == "vertical" else 0
        ref = np.zeros_like(n)
        ref[..., axis] = 1.0
        # k_f along the tube axis (never on the forward branch): use the other axis
        ref[np.abs(n[..., axis]) > 0.999, :] = np.eye(3)[1 - axis]
        along = ref - np.sum(ref * n, axis=-1, keepdims=True) * n
        along /= np.linalg.norm(along, axis=-1, keepdims=True)
        across = np.cross(along, n)
        if self.tube_axis == "horizontal":
            across = -across
        return across, along

    # ---- linear map --------------------------------------------------------------------

    def jacobian(
        self,
        setting: Setting,
        h: np.ndarray,
        k: np.ndarray,
        energy: np.ndarray,
        lattice: Lattice,
        psi: float = 0.0,
    ) -> np.ndarray:
        """d(h, k, l, E) / d(variables) at each pixel, shape (P, 4, V).

        h, k: r.l.u.; energy: energy transfer (meV); arrays broadcast to P pixels (flattened).
        Rows: h, k, l (r.l.u.), E (meV); columns: the variables of :meth:`variables`
        (per second for times, per metre for positions). Pixels out of kinematic reach
        (E >= Ei or Q_perp > k_f) are NaN.
        """
        self.spectrometer.check(setting)
        kf_vec, axes = _nominal(setting, h, k, energy, lattice, psi)
        to_rlu = np.linalg.inv(axes.T)  # (h, k, l) = to_rlu @ Q
        # row vectors (P, 3) @ rlu_t: (contiguous: numpy's matmul is slow on transposes)
        rlu_t = np.ascontiguousarray(to_rlu.T)
        ki = float(np.sqrt(setting.ei / E_FROM_K2))
        vi = V_FROM_K * ki
        kf = np.linalg.norm(kf_vec, axis=-1)
        n = kf_vec / kf[:, None]  # unit vector along k_f, (P, 3)
        across, along = self._detector_axes(np.nan_to_num(n))
        x0, xa, x1, x2 = self._distances()
        omega = 2.0 * np.pi * setting.frequency
        tan_m = np.tan(np.radians(self.moderator_tilt))
        lap = xa + x1  # aperture-sample distance
        ti = x0 / vi
        iv = _IDX
        i_sx, i_sy, i_sz = iv["sample_x"], iv["sample_y"], iv["sample_z"]

        # Incident wave vector, (3, V). Direction: from the aperture point to the sample
        # point. Speed: dv/v = [t_m - t_c + x_m tan(theta_m) / v_i] / t_i with the chopper
        # opening at t_c = t_ch - alpha / omega for the horizontal flight angle
        # alpha = (s_x - a_x) / lap, and x_m = a_x - alpha (x0 - xa) where the flight path
        # meets the tilted moderator face.
        dv = np.zeros(_NVAR)
        dv[iv["moderator_time"]] = 1.0 / ti
        dv[iv["chopper_time"]] = -1.0 / ti
        dv[iv["aperture_x"]] = -(1.0 - omega * (x0 + x1) * tan_m / vi) / (omega * lap * ti)
        dv[i_sx] = (1.0 - omega * (x0 - xa) * tan_m / vi) / (omega * lap * ti)
        dki = np.zeros((3, _NVAR))
        dki[0, iv["aperture_x"]] = dki[1, iv["aperture_y"]] = -ki / lap
        dki[0, i_sx] = dki[1, i_sy] = ki / lap
        dki[2] = ki * dv
        # Arrival time at the sample point: t_s = t_c + (x1 + s_z) / v_i, (V,) seconds
        dts = -(x1 / vi) * dv
        dts[iv["chopper_time"]] += 1.0
        dts[iv["aperture_x"]] += 1.0 / (omega * lap)
        dts[i_sx] -= 1.0 / (omega * lap)
        dts[i_sz] += 1.0 / vi

        # Final speed at a fixed detection time: dv_f / v_f = dL2 / x2 + dt_s / t_f, with the
        # sample-detector path L2 = x2 + depth - n . S, (P, V)
        dvf = np.multiply.outer(V_FROM_K * kf / x2, dts)  # 1 / t_f = v_f / x2
        dvf[:, i_sx] -= n[:, 0] / x2
        dvf[:, i_sy] -= n[:, 1] / x2
        dvf[:, i_sz] -= n[:, 2] / x2
        dvf[:, iv["detector_depth"]] += 1.0 / x2
        # Final wave vector: dk_f = k_f (dv_f / v_f) n + (k_f / x2) (D_perp - S_perp), and
        # Q = k_i - k_f, so in r.l.u. (R = to_rlu):
        # dq = R dk_i - k_f dvf (R n) - (k_f / x2) R (D_perp - S_perp)
        rn = n @ rlu_t
        jac = np.empty((kf.shape[0], 4, _NVAR))
        jac[:, :3, :] = (to_rlu @ dki)[None, :, :] - (kf[:, None] * dvf)[:, None, :] * rn[
            :, :, None
        ]
        c2 = kf / x2
        for col, unit in ((i_sx, 0), (i_sy, 1), (i_sz, 2)):
            # S_perp for a unit sample shift along axis `unit`: e - n n_unit
            s_perp = to_rlu[:, unit][None, :] - rn * n[:, unit, None]
            jac[:, :3, col] += c2[:, None] * s_perp
        jac[:, :3, iv["detector_width"]] -= c2[:, None] * (across @ rlu_t)
        jac[:, :3, iv["detector_height"]] -= c2[:, None] * (along @ rlu_t)
        # E = E_FROM_K2 (k_i^2 - k_f^2)
        jac[:, 3, :] = 2.0 * E_FROM_K2 * (ki * dki[2][None, :] - (kf * kf)[:, None] * dvf)
        return jac

    def energy_bin_jacobian(
        self,
        setting: Setting,
        h: np.ndarray,
        k: np.ndarray,
        energy: np.ndarray,
        lattice: Lattice,
        psi: float = 0.0,
    ) -> np.ndarray:
        """d(h, k, l, E) / d(epsilon) at each pixel, shape (P, 4), for a shift epsilon (meV)
        of the energy transfer within one detector's time bin (fixed detector, later or
        earlier detection).

        Not one of the model's variables (callers integrate over their own bins); Tobyfit
        treats the bin this way, uniform over the bin width, which also moves Q along k_f:
        dQ = epsilon n / (2 E_FROM_K2 k_f).
        """
        kf_vec, axes = _nominal(setting, h, k, energy, lattice, psi)
        kf2 = np.sum(kf_vec * kf_vec, axis=-1)
        out = np.empty((kf2.shape[0], 4))
        out[:, :3] = (kf_vec / (2.0 * E_FROM_K2 * kf2[:, None])) @ np.ascontiguousarray(
            np.linalg.inv(axes.T).T
        )
        out[:, 3] = 1.0
        return out

    def covariance(
        self,
        setting: Setting,
        h: np.ndarray,
        k: np.ndarray,
        energy: np.ndarray,
        lattice: Lattice,
        psi: float = 0.0,
    ) -> np.ndarray:
        """Resolution covariance (P, 4, 4) in (h, k, l, E) (r.l.u., meV): J C J^T."""
        jac = self.jacobian(setting, h, k, energy, lattice, psi)
        scaled = jac * np.sqrt(np.diag(self.variable_covariance(setting)))
        return np.matmul(scaled, scaled.transpose(0, 2, 1))

    def energy_fwhm(self, setting: Setting, energy: np.ndarray) -> np.ndarray:
        """Incoherent (vanadium-like) energy resolution FWHM (meV) at energy transfers
        ``energy`` (meV, any shape, flattened to P), for a detector along the beam.

        Gaussian-equivalent FWHM = 2 sqrt(2 ln 2) times the standard deviation of E from
        all variables (the sample and detector terms depend little on the angle).
        """
        energy = np.atleast_1d(np.asarray(energy, dtype=float)).ravel()
        zero = np.zeros_like(energy)
        lattice = Lattice(1.0, 1.0, 1.0)
        cov = self.covariance(setting, zero, zero, energy, lattice)
        return FWHM_PER_SIGMA * np.sqrt(cov[:, 3, 3])


# --------------------------------------------------------------------------------------
# Kinematics (private; c* along the beam)
# --------------------------------------------------------------------------------------


def _crystal_axes(lattice: Lattice, psi: float) -> np.ndarray:
    """Rows a*, b*, c* in the laboratory frame (1/Angstrom): c* along z, a* along x turned
    by psi degrees about z."""
    if not (np.isclose(lattice.alpha, 90.0) and np.isclose(lattice.beta, 90.0)):
        raise ValueError("c along the beam needs alpha = beta = 90 degrees")
    recip = lattice.reciprocal
    turn = np.radians(float(psi)) - np.arctan2(recip[0, 1], recip[0, 0])
    c, s = np.cos(turn), np.sin(turn)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    axes = recip @ rot.T
    axes[2] = [0.0, 0.0, np.linalg.norm(recip[2])]
    return axes


def _nominal(
    setting: Setting,
    h: np.ndarray,
    k: np.ndarray,
    energy: np.ndarray,
    lattice: Lattice,
    psi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Nominal k_f (P, 3) (NaN where unreachable) and the crystal axes (3, 3)."""
    h, k, energy = (np.ravel(a) for a in np.broadcast_arrays(h, k, energy))
    h, k, energy = (np.asarray(a, dtype=float) for a in (h, k, energy))
    axes = _crystal_axes(lattice, psi)
    qx = h * axes[0, 0] + k * axes[1, 0]
    qy = h * axes[0, 1] + k * axes[1, 1]
    rest = (setting.ei - energy) / E_FROM_K2 - qx * qx - qy * qy
    ok = (energy < setting.ei) & (rest >= 0)
    kfz = np.sqrt(np.where(ok, rest, np.nan))
    kf = np.stack([-qx, -qy, kfz], axis=-1)
    kf[~ok] = np.nan
    return kf, axes


def _exact_hkle(
    model: ResolutionModel,
    setting: Setting,
    h: float,
    k: float,
    energy: float,
    lattice: Lattice,
    psi: float,
    deviations: np.ndarray,
) -> np.ndarray:
    """Exact (h, k, l, E) of neutrons with the given variable deviations (N, V) that are
    detected at the nominal pixel (h, k, E) and time: ray tracing, no linearisation.

    Returns (N, 4). Used to check :meth:`ResolutionModel.jacobian`.
    """
    dev = np.atleast_2d(np.asarray(deviations, dtype=float))
    iv = _IDX
    kf_nom, axes = _nominal(setting, h, k, energy, lattice, psi)
    kf_nom = kf_nom[0]
    x0, xa, x1, x2 = model._distances()
    ki0 = np.sqrt(setting.ei / E_FROM_K2)
    vi0 = V_FROM_K * ki0
    vf0 = V_FROM_K * np.linalg.norm(kf_nom)
    n = kf_nom / np.linalg.norm(kf_nom)
    across, along = model._detector_axes(n[None, :])
    across, along = across[0], along[0]
    omega = 2.0 * np.pi * setting.frequency
    tan_m = np.tan(np.radians(model.moderator_tilt))

    s = dev[:, [iv["sample_x"], iv["sample_y"], iv["sample_z"]]]
    a = np.stack(
        [dev[:, iv["aperture_x"]], dev[:, iv["aperture_y"]], np.full(len(dev), -(xa + x1))],
        axis=-1,
    )
    u = s - a
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    # moderator face: z + x tan(theta_m) = -(x0 + x1)
    dist_m = (-(x0 + x1) - a[:, 2] - a[:, 0] * tan_m) / (u[:, 2] + u[:, 0] * tan_m)
    m = a + dist_m[:, None] * u
    dist_c = (-x1 - a[:, 2]) / u[:, 2]
    c = a + dist_c[:, None] * u
    alpha = np.arctan2(u[:, 0], u[:, 2])
    t_c = x0 / vi0 + dev[:, iv["chopper_time"]] - alpha / omega
    vi = np.linalg.norm(c - m, axis=-1) / (t_c - dev[:, iv["moderator_time"]])
    t_s = t_c + np.linalg.norm(s - c, axis=-1) / vi
    d = (
        (x2 + dev[:, [iv["detector_depth"]]]) * n
        + dev[:, [iv["detector_width"]]] * across
        + dev[:, [iv["detector_height"]]] * along
    )
    t_d = x0 / vi0 + x1 / vi0 + x2 / vf0
    path = d - s
    lf = np.linalg.norm(path, axis=-1)
    vf = lf / (t_d - t_s)
    ki_vec = (vi / V_FROM_K)[:, None] * u
    kf_vec = (vf / V_FROM_K)[:, None] * path / lf[:, None]
    q = ki_vec - kf_vec
    e = E_FROM_K2 * (np.sum(ki_vec**2, axis=-1) - np.sum(kf_vec**2, axis=-1))
    hkl = np.linalg.solve(axes.T, q.T).T
    return np.concatenate([hkl, e[:, None]], axis=-1)


MAPS_RESOLUTION = ResolutionModel(
    MAPS,
    moderator=IkedaCarpenterModerator(tau_f_coefficient=70.0),
    moderator_tilt=32.0,
    aperture_distance=10.01,
    aperture_width=0.07013,
    aperture_height=0.07013,
    sample_size=(0.030, 0.030, 0.020),
    detector_depth=0.015,
    detector_width=0.0254,
    detector_height=0.022,
    tube_axis="vertical",
)
"""MAPS (ISIS) as in the PCSMO experiment (before the 2017 guide upgrade).

Moderator, aperture and Fermi chopper from Horace's ``maps_instrument`` (instrument version
1, 'empirical' moderator): ambient water, Ikeda-Carpenter tau_f = 70 / sqrt(Ei) microseconds
(no storage term), face at 32 degrees to the beam; 70.13 x 70.13 mm aperture 10.01 m before
the sample; geometry and "S" package from :data:`exp2sim.instrument.spectrometer.MAPS`.
Detector as Tobyfit's classic 3He tube: 25.4 mm wide, uniform over a 15 mm depth. The
sample (a co-aligned crystal array: 30 mm wide, 30 mm high, 20 mm along the beam) and the
detector element height (22 mm) are fitted to the Tobyfit resolution tables of this
experiment, whose h, k, E widths they reproduce to a few per cent.
"""
