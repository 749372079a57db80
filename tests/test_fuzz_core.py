"""Fuzzing the core API (DESIGN.md, principle 9): every bad call gives a valid result or a ValueError/TypeError that
names the argument at fault; never another exception type, a raw torch error, NaN or a wrong shape.

``CASES`` is the table the fuzz test runs, one row per (callable, argument, kind of bad input);
``benchmarks/fuzz_report.py`` counts its outcomes per module on any checkout.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fuzzing import (
    FUZZ,
    Cases,
    FakeModel,
    assert_good,
    bad_covariances,
    bad_grids,
    bad_labels,
    bad_models,
    bad_names,
    bad_reals,
    bad_schedules,
    bad_tensors,
    bad_times,
    bad_weights,
    check_outcome,
    edge_tensors,
    finite,
    rows,
    same,
    shaped,
)
from hypothesis import given
from hypothesis import strategies as st

import diffmath as dm
from diffmath import ddpm, ode, sde, variance
from diffmath.exact import reference
from diffmath.guide import guidance

F64 = torch.float64
VP, SU = dm.VPLinear(), dm.su_linear(100)
X = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
DATA = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0], [0.5, 0.5]], dtype=F64)
W2 = torch.tensor([0.5, 0.5], dtype=F64)
MU = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
COV = torch.tensor([0.1, 0.2], dtype=F64)
GMM = dm.GaussianMixture(W2, MU, COV)
EMP = dm.EmpiricalData(DATA)
M_VP, M_SU = GMM.model(VP), GMM.model(SU)
G_VP, G_SU = VP.grid(3), SU.grid(3)
Y = torch.tensor([0, 1, -1])


def per_component(k: int) -> Callable:
    """``expect``: a finite result of shape (B, k) for the drawn batch."""
    return lambda v: shaped(v.shape[0], k)


def cov(v: object) -> Callable:
    """``expect``: a finite covariance per point, shape (B, d, d)."""
    return shaped(v.shape[0], v.shape[1], v.shape[1])


def not_int(v: object) -> bool:
    """Integer data points are legal (they are cast to float64), so the fuzz of point sets skips them."""
    return not (isinstance(v, torch.Tensor) and v.dtype == torch.long)


def any_finite(v: object) -> Callable:
    """``expect``: any result without NaN or inf (a valid object, a finite tensor)."""
    return finite


CASES = Cases()
add, batch = CASES.add, CASES.batch


def cfg(model, x, t, cond):
    """Classifier-free guidance around ``model``, called once."""
    return guidance.ClassifierFree(model, 1.0)(x, t, cond)


# ---- exact -------------------------------------------------------------------------------------------------------
GM = {"weights": W2, "means": MU, "covs": COV}
add("exact", dm.GaussianMixture, GM, "weights", bad_weights(2))
add("exact", dm.GaussianMixture, GM, "covs", bad_covariances(2, 2))
LABELS = st.sampled_from([torch.zeros(2), torch.tensor([0, -1]), torch.zeros(3, dtype=torch.long), [0, 1], "0"])
add("exact", dm.GaussianMixture, {**GM, "labels": None}, "labels", LABELS)
add("exact", dm.GaussianMixture, GM, "means", bad_tensors(MU, fixed_shape=False).filter(not_int))
add("exact", dm.EmpiricalData, {"points": DATA}, "points", bad_tensors(DATA, fixed_shape=False).filter(not_int))
add("exact", dm.EmpiricalData, {"points": DATA}, "points", edge_tensors(DATA), any_finite)
add(
    "exact",
    dm.EmpiricalData,
    {"points": DATA, "weights": None},
    "weights",
    bad_weights(4).filter(lambda w: w is not None),
)
add("exact", GMM.sample, {"n": 4}, "n", bad_reals(1))
for src in (GMM, EMP):
    for meth in ("noised_log_prob", "score", "posterior_mean", "eps_mean", "posterior_cov", "component_posterior"):
        fn, good = getattr(src, meth), {"x": X, "a": 0.8, "b": 0.6}
        expect = {"noised_log_prob": rows, "component_posterior": per_component(src.K), "posterior_cov": cov}.get(
            meth, same
        )
        batch("exact", fn, good, "x", expect)
        add("exact", fn, good, "a", bad_reals(0.0))
        add("exact", fn, good, "b", bad_reals(0.0))
        add("exact", fn, {**good, "cond": None}, "cond", bad_labels(3, src.num_classes))
    add("exact", src.velocity, {"x": X, "a": 0.8, "b": 0.6, "da": -0.5, "db": 0.7}, "db", bad_reals(None))
add("exact", dm.ExactModel, {"source": GMM, "schedule": VP}, "source", st.sampled_from([None, DATA, "gmm"]))
add("exact", dm.ExactModel, {"source": GMM, "schedule": VP}, "schedule", bad_schedules())
add(
    "exact",
    dm.ExactModel,
    {"source": GMM, "schedule": VP, "prediction": "eps"},
    "prediction",
    bad_names(dm.PREDICTIONS),
)
batch("exact", M_VP, {"x": X, "t": 0.5}, "x")
add("exact", M_VP, {"x": X, "t": 0.5}, "t", bad_times(1.0, False))
add("exact", M_SU, {"x": X, "t": 50}, "t", bad_times(100.0, True))

# ---- models ------------------------------------------------------------------------------------------------------
add("models", dm.check_model, {"model": M_VP}, "model", bad_models(outputs=False))
PR = {"model": M_VP, "x": X, "t": 0.5, "schedule": VP, "kind": "x0"}
for fn in (dm.predict, dm.predict_pair):
    good = PR if fn is dm.predict else {k: v for k, v in PR.items() if k != "kind"}
    add("models", fn, good, "model", bad_models())
    batch("models", fn, good, "x")
    add("models", fn, good, "t", bad_times(1.0, False))
    add("models", fn, good, "schedule", bad_schedules())
add("models", dm.predict, PR, "kind", bad_names(dm.PREDICTIONS))

# ---- notation ----------------------------------------------------------------------------------------------------
EPS = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
TP = {"pred": EPS, "kind": "eps", "x": X, "a": 0.8, "b": 0.6}
add("notation", dm.core.notation.check_prediction, {"kind": "eps", "name": "kind"}, "kind", bad_names(dm.PREDICTIONS))
batch("notation", dm.to_pair, TP, "pred", also=("x",))
batch("notation", dm.to_pair, TP, "x", also=("pred",))
add("notation", dm.to_pair, TP, "kind", bad_names(dm.PREDICTIONS))
add("notation", dm.to_pair, TP, "a", bad_reals(0.0, allow_low=False))
add("notation", dm.to_pair, {**TP, "kind": "x0"}, "b", bad_reals(0.0, allow_low=False))
FP = {"pair": dm.Pair(X, EPS), "kind": "score", "a": 0.8, "b": 0.6}
add("notation", dm.from_pair, FP, "pair", st.sampled_from([None, X, (X,), (X, EPS[:1]), (X, EPS * float("nan"))]))
add("notation", dm.from_pair, FP, "kind", bad_names(dm.PREDICTIONS))
add("notation", dm.from_pair, FP, "a", bad_reals(0.0))
add("notation", dm.from_pair, FP, "b", bad_reals(0.0, allow_low=False))
for target in ("x0", "eps"):
    CV = {"pred": EPS, "source": "eps", "target": target, "x": X, "a": 0.8, "b": 0.6}
    batch("notation", dm.convert, CV, "pred", also=("x",))
    add("notation", dm.convert, CV, "source", bad_names(dm.PREDICTIONS))
    add("notation", dm.convert, CV, "target", bad_names(dm.PREDICTIONS))
    add("notation", dm.convert, CV, "a", bad_reals(0.0, allow_low=target == "eps"))
    add("notation", dm.convert, CV, "b", bad_reals(0.0))

# ---- samplers ----------------------------------------------------------------------------------------------------
add("samplers", dm.check_grid, {"grid": G_VP, "schedule": VP}, "grid", bad_grids(1.0, False))
add("samplers", dm.check_grid, {"grid": G_SU, "schedule": SU}, "grid", bad_grids(100.0, True))
add("samplers", dm.check_grid, {"grid": G_VP, "schedule": VP}, "schedule", bad_schedules())
DC = {"schedule": VP, "t": 0.5, "s": 0.25, "eta": 1.0}
add("samplers", dm.ddim_coefficients, DC, "t", bad_times(1.0, False, shapes=False))
add("samplers", dm.ddim_coefficients, DC, "s", st.one_of(bad_times(1.0, False, shapes=False), st.floats(0.5, 1.0)))
add("samplers", dm.ddim_coefficients, {**DC, "schedule": SU, "t": 50, "s": 40}, "s", st.sampled_from([50, 60, 100]))
add("samplers", dm.ddim_coefficients, DC, "eta", bad_reals(0.0))
add("samplers", dm.ddim_coefficients, {**DC, "variance": "upper"}, "variance", bad_names(("posterior", "upper")))
DS = {"model": M_VP, "x": X, "t": 0.5, "s": 0.25, "schedule": VP, "eta": 1.0}
add("samplers", dm.ddim_step, DS, "model", bad_models())
batch("samplers", dm.ddim_step, DS, "x")
add("samplers", dm.ddim_step, DS, "s", st.one_of(bad_times(1.0, False), st.floats(0.5, 1.0)))
add("samplers", dm.ddim_step, DS, "eta", bad_reals(0.0))
add("samplers", dm.ddim_step, {**DS, "noise": None}, "noise", bad_tensors(X).filter(lambda z: z is not None))
for fn in (dm.ddim, dm.sample):
    SA = {"model": M_VP, "x": X, "grid": G_VP, "schedule": VP, "eta": 1.0}
    add("samplers", fn, SA, "model", bad_models())
    batch("samplers", fn, SA, "x")
    add("samplers", fn, SA, "grid", bad_grids(1.0, False))
    add("samplers", fn, {**SA, "model": M_SU, "schedule": SU, "grid": G_SU}, "grid", bad_grids(100.0, True))
    add("samplers", fn, SA, "schedule", bad_schedules())
    add("samplers", fn, SA, "eta", bad_reals(0.0))
    add("samplers", fn, {**SA, "variance": "upper"}, "variance", bad_names(("posterior", "upper")))

# ---- ode ---------------------------------------------------------------------------------------------------------
batch("ode", ode.pf_ode_drift, {"model": M_VP, "x": X, "t": 0.5, "schedule": VP}, "x")
add("ode", ode.pf_ode_drift, {"model": M_VP, "x": X, "t": 0.5, "schedule": VP}, "t", bad_times(1.0, False))
add("ode", ode.pf_ode_drift, {"model": M_VP, "x": X, "t": 0.5, "schedule": VP}, "model", bad_models())
for fn in (ode.solve_ode, ode.ode_sample):
    OS = {"model": M_VP, "x": X, "grid": G_VP, "schedule": VP, "method": "heun"}
    batch("ode", fn, OS, "x")
    add("ode", fn, OS, "grid", bad_grids(1.0, False))
    add("ode", fn, {**OS, "method": "dpm++2m"}, "grid", bad_grids(1.0, False))
    add("ode", fn, OS, "method", bad_names(ode.SOLVERS))
    add("ode", fn, {**OS, "variable": "t"}, "variable", bad_names(("t", "sigma")))
    add("ode", fn, OS, "schedule", bad_schedules())
    add("ode", fn, OS, "model", bad_models())
add("ode", ode.nfe, {"method": "heun", "num_steps": 4}, "method", bad_names(ode.SOLVERS))
add("ode", ode.nfe, {"method": "heun", "num_steps": 4}, "num_steps", bad_reals(1.0))
REF = {"model": M_VP, "x": X, "t_start": 1.0, "t_end": 0.5, "schedule": VP, "rtol": 1e-3, "atol": 1e-3}
batch("ode", ode.solve_ode_reference, REF, "x")
add("ode", ode.solve_ode_reference, REF, "t_start", bad_times(1.0, False))
add("ode", ode.solve_ode_reference, REF, "t_end", bad_times(1.0, False))
add("ode", ode.solve_ode_reference, REF, "rtol", bad_reals(0.0, allow_low=False))
add("ode", ode.solve_ode_reference, REF, "atol", bad_reals(0.0, allow_low=False))
add("ode", ode.solve_ode_reference, {**REF, "method": "RK45"}, "method", bad_names(("RK45", "RK23", "DOP853")))
ENC = {"model": M_VP, "x0": X, "schedule": VP, "t_start": 0.5, "t_end": 1.0, "rtol": 1e-3, "atol": 1e-3}
batch("ode", ode.encode, ENC, "x0", also=("x",))
add("ode", ode.encode, ENC, "t_start", bad_times(1.0, False))
DEC = {"model": M_VP, "x_T": X, "schedule": VP, "t_start": 1.0, "t_end": 0.5, "rtol": 1e-3, "atol": 1e-3}
add("ode", ode.decode, DEC, "t_end", bad_times(1.0, False))
DIV = {"fn": lambda z: z**2, "x": X, "method": "exact"}
batch("ode", ode.divergence, DIV, "x", rows, fixed_shape=False)
add("ode", ode.divergence, DIV, "method", bad_names(("exact", "hutchinson")))
add("ode", ode.divergence, DIV, "fn", st.sampled_from([None, lambda z: z[:, :1], lambda z: z.sum(), lambda z: None]))
add(
    "ode",
    ode.divergence,
    {**DIV, "method": "hutchinson", "probes": torch.ones(2, 3, 2, dtype=F64)},
    "probes",
    st.sampled_from([None, X, torch.ones(2, 3, 3), torch.ones(2, 3, 2).numpy()]),
)
add("ode", ode.rademacher, {"shape": (2, 3)}, "shape", st.sampled_from([(-1, 2), "ab", None, (2.5,), 3.0]))
LL = {"model": M_VP, "x0": X, "schedule": VP, "t_start": 0.5, "t_end": 1.0, "rtol": 1e-3, "atol": 1e-3}
batch("ode", ode.ode_log_likelihood, LL, "x0", expect=None, also=("x",))
add("ode", ode.ode_log_likelihood, LL, "t_start", bad_times(1.0, False))
add("ode", ode.ode_log_likelihood, LL, "rtol", bad_reals(0.0, allow_low=False))
add(
    "ode",
    ode.ode_log_likelihood,
    {**LL, "divergence_method": "exact"},
    "divergence_method",
    bad_names(("exact", "hutchinson")),
)
add(
    "ode",
    ode.ode_log_likelihood,
    {**LL, "divergence_method": "hutchinson", "num_probes": 1},
    "num_probes",
    bad_reals(1.0),
)

# ---- sde ---------------------------------------------------------------------------------------------------------
add("sde", sde.sde_coefficients, {"schedule": VP, "t": 0.5}, "schedule", bad_schedules(discrete_ok=False))
add("sde", sde.sde_coefficients, {"schedule": VP, "t": 0.5}, "t", bad_times(1.0, False, shapes=False))
RS = {"model": M_VP, "x": X, "grid": G_VP, "schedule": VP, "noise_scale": 1.0}
batch("sde", sde.reverse_sde, RS, "x")
add("sde", sde.reverse_sde, RS, "grid", bad_grids(1.0, False))
add("sde", sde.reverse_sde, RS, "noise_scale", bad_reals(0.0))
add("sde", sde.reverse_sde, RS, "schedule", bad_schedules(discrete_ok=False))
add("sde", sde.reverse_sde, RS, "model", bad_models())
LC = {"model": M_VP, "x": X, "t": 0.5, "schedule": VP, "snr": 0.16, "steps": 1}
batch("sde", sde.langevin_correct, LC, "x")
add("sde", sde.langevin_correct, LC, "t", bad_times(1.0, False))
add("sde", sde.langevin_correct, LC, "snr", bad_reals(0.0, allow_low=False))
add("sde", sde.langevin_correct, LC, "steps", bad_reals(1.0))
PC = {"model": M_VP, "x": X, "grid": G_VP, "schedule": VP, "snr": 0.16, "corrector_steps": 1}
batch("sde", sde.predictor_corrector, PC, "x")
add("sde", sde.predictor_corrector, PC, "grid", bad_grids(1.0, False))
add("sde", sde.predictor_corrector, PC, "snr", bad_reals(0.0, allow_low=False))
add("sde", sde.predictor_corrector, PC, "corrector_steps", bad_reals(1.0))
DSM = {"score": lambda z: -z, "x0": X, "eps": EPS, "a": 0.8, "b": 0.6}
batch("sde", sde.dsm_loss, DSM, "x0", rows, also=("eps",))
batch("sde", sde.dsm_loss, DSM, "eps", None)
add("sde", sde.dsm_loss, DSM, "b", bad_reals(0.0, allow_low=False))
add("sde", sde.dsm_loss, DSM, "a", bad_reals(0.0))
add("sde", sde.dsm_loss, DSM, "score", st.sampled_from([None, lambda z: z[:, :1], lambda z: z.numpy()]))
FPR = {"source": GMM, "schedule": VP, "x": X, "t": 0.5, "dt": 1e-4}
batch("sde", sde.fokker_planck_residual, FPR, "x", rows)
add("sde", sde.fokker_planck_residual, FPR, "t", bad_times(1.0, False))
add("sde", sde.fokker_planck_residual, FPR, "dt", bad_reals(0.0, allow_low=False))
add("sde", sde.fokker_planck_residual, FPR, "source", st.sampled_from([None, DATA, M_VP]))

# ---- variance ----------------------------------------------------------------------------------------------------
SB = {"schedule": VP, "t": 0.5, "data_var": 1.0}
add("variance", variance.sbar2_bounds, SB, "t", bad_times(1.0, False, shapes=False))
add("variance", variance.sbar2_bounds, SB, "data_var", bad_reals(0.0))
SE = {"model": M_VP, "x0": DATA, "t": 0.5, "schedule": VP, "method": "variance"}
batch("variance", variance.sbar2_estimate, SE, "x0", any_finite, also=("x",))
add("variance", variance.sbar2_estimate, SE, "t", bad_times(1.0, False, shapes=False))
add("variance", variance.sbar2_estimate, SE, "method", bad_names(variance.ESTIMATORS))
add("variance", variance.sbar2_estimate, SE, "model", bad_models())
ES = {"source": GMM, "t": 0.5, "schedule": VP, "n": 8}
add("variance", variance.exact_sbar2, ES, "t", bad_times(1.0, False, shapes=False))
add("variance", variance.exact_sbar2, ES, "n", bad_reals(2.0))
add("variance", variance.exact_sbar2, ES, "source", st.sampled_from([None, DATA, M_VP]))
RV = {"schedule": SU, "t": 50, "s": 40, "kind": "analytic", "sbar2": 0.1}
add("variance", variance.reverse_step_variance, RV, "t", bad_times(100.0, True, shapes=False))
add(
    "variance",
    variance.reverse_step_variance,
    RV,
    "s",
    st.one_of(bad_times(100.0, True, shapes=False), st.sampled_from([50, 60])),
)
add("variance", variance.reverse_step_variance, RV, "kind", bad_names(variance.VARIANCES))
add("variance", variance.reverse_step_variance, RV, "sbar2", bad_reals(0.0, several=False))
NE = {"model": M_SU, "x0": DATA, "grid": G_SU, "schedule": SU, "variance": "analytic", "sbar2": torch.full((3,), 0.1)}
for fn, xname in ((variance.neg_elbo, "x0"), (variance.analytic_ddpm, "x")):
    good = {("x" if k == "x0" and xname == "x" else k): v for k, v in NE.items()}
    batch("variance", fn, good, xname, any_finite if xname == "x0" else same, also=("x",))
    add("variance", fn, good, "grid", bad_grids(100.0, True))
    add("variance", fn, good, "variance", bad_names(variance.VARIANCES))
    add(
        "variance",
        fn,
        good,
        "sbar2",
        st.sampled_from(
            [None, torch.full((2,), 0.1), torch.full((3,), -0.1), torch.full((3,), float("nan")), 0.1, "0.1"]
        ),
    )
    add("variance", fn, good, "model", bad_models())
NL = {"mean_model": M_VP, "schedule": VP, "data_var": 1.0}
add("variance", variance.NPRLoss, NL, "data_var", bad_reals(0.0, allow_low=False))
add("variance", variance.NPRLoss, NL, "schedule", bad_schedules())
add(
    "variance",
    variance.NPRVariance,
    {"net": FakeModel(), "schedule": VP, "data_var": 1.0},
    "data_var",
    bad_reals(0.0, allow_low=False),
)
add(
    "variance", variance.NPRVariance, {"net": FakeModel(), "schedule": VP, "data_var": 1.0}, "schedule", bad_schedules()
)

# ---- guidance ----------------------------------------------------------------------------------------------------
LP = lambda x, t, y: -(x**2).sum(1)  # noqa: E731
CG = {"model": M_VP, "log_prob": LP, "schedule": VP, "scale": 1.0}
add("guidance", guidance.ClassifierGuided, CG, "scale", bad_reals(0.0))
add("guidance", guidance.ClassifierGuided, CG, "model", bad_models(outputs=False))
add("guidance", guidance.ClassifierGuided, CG, "schedule", bad_schedules())
add("guidance", guidance.ClassifierGuided, CG, "log_prob", st.sampled_from([None, 1.0]))
GUIDED = guidance.ClassifierGuided(M_VP, LP, VP, 1.0)
batch("guidance", GUIDED, {"x": X, "t": 0.5, "cond": Y.clamp(min=0)}, "x", also=("cond", "log_prob"))
add("guidance", GUIDED, {"x": X, "t": 0.5, "cond": Y.clamp(min=0)}, "t", bad_times(1.0, False))
CGR = {"log_prob": LP, "x": X, "t": torch.full((3,), 0.5), "y": Y.clamp(min=0)}
add(
    "guidance",
    guidance.classifier_gradient,
    CGR,
    "log_prob",
    st.sampled_from([None, lambda x, t, y: x, lambda x, t, y: x.sum(1).detach().numpy(), lambda x, t, y: None]),
)
batch("guidance", guidance.classifier_gradient, CGR, "x", same, also=("y", "log_prob"), fixed_shape=False)
add("guidance", guidance.ClassifierFree, {"model": M_VP, "scale": 1.0}, "scale", bad_reals(0.0))
add("guidance", guidance.ClassifierFree, {"model": M_VP, "scale": 1.0}, "model", bad_models(outputs=False))
add(
    "guidance",
    guidance.ClassifierFree,
    {"model": M_VP, "scale": 1.0, "null": -1},
    "null",
    st.sampled_from([1.5, "none", None, [1, 1]]),  # any tensor is a null condition; its shape is checked per call
)
CF = {"model": M_VP, "x": X, "t": 0.5, "cond": Y}
add("guidance", cfg, CF, "model", bad_models().filter(lambda m: hasattr(m, "prediction") and m.prediction == "eps"))
batch("guidance", cfg, CF, "x", also=("cond",))
add("guidance", cfg, CF, "cond", bad_labels(3, 2))
add("guidance", guidance.NoisyClassifier, {"dim": 2, "num_classes": 3}, "dim", bad_reals(1.0))
add("guidance", guidance.NoisyClassifier, {"dim": 2, "num_classes": 3}, "num_classes", bad_reals(2.0))
add("guidance", guidance.ClassifierLoss, {"schedule": VP}, "schedule", bad_schedules())
SIM = {"encoder": lambda x, t: x, "references": DATA, "temperature": 1.0}
add("guidance", guidance.Similarity, SIM, "temperature", bad_reals(0.0, allow_low=False))
batch("guidance", guidance.Similarity, SIM, "references", expect=None, fixed_shape=False)

# ---- reference ---------------------------------------------------------------------------------------------------
EX = {"source": GMM, "x": X, "t_start": 1.0, "t_end": 0.5, "schedule": VP, "rtol": 1e-3, "atol": 1e-3}
batch("reference", reference.exact_pf_ode, EX, "x")
add("reference", reference.exact_pf_ode, EX, "t_start", bad_times(1.0, False))
add("reference", reference.exact_pf_ode, EX, "t_end", bad_times(1.0, False))
add("reference", reference.exact_pf_ode, EX, "rtol", bad_reals(0.0, allow_low=False))
add("reference", reference.exact_pf_ode, {**EX, "method": "RK45"}, "method", bad_names(("RK45", "RK23", "DOP853")))
add("reference", reference.exact_pf_ode, EX, "source", st.sampled_from([None, DATA, M_VP]))
add("reference", reference.exact_pf_ode, EX, "schedule", bad_schedules())

# ---- ddpm --------------------------------------------------------------------------------------------------------
DISCRETE_T = st.one_of(bad_times(100.0, True, shapes=False), st.just(0))  # vectorised over t; a step needs t >= 1
FS = {"x_prev": X, "t": 50, "schedule": SU, "eps": EPS}
batch("ddpm", ddpm.forward_step, FS, "x_prev", also=("eps",))
batch("ddpm", ddpm.forward_step, FS, "eps", None, also=("x_prev",))
add("ddpm", ddpm.forward_step, FS, "t", st.one_of(bad_times(100.0, True), st.just(0)))
add("ddpm", ddpm.forward_step, FS, "schedule", bad_schedules(continuous_ok=False))
FM = {"x0": X, "t": 0.5, "schedule": VP, "eps": EPS}
batch("ddpm", ddpm.forward_marginal, FM, "x0", also=("eps",))
add("ddpm", ddpm.forward_marginal, FM, "t", bad_times(1.0, False))
add("ddpm", ddpm.forward_marginal, FM, "schedule", bad_schedules())
MN = {"eps_prev": X, "eps_t": EPS, "t": 50, "schedule": SU}
batch("ddpm", ddpm.merge_noises, MN, "eps_prev", also=("eps_t",))
add("ddpm", ddpm.merge_noises, MN, "t", st.one_of(bad_times(100.0, True), st.just(0)))
add("ddpm", ddpm.ch1_constant, {"schedule": SU, "t": 50, "dim": 2}, "dim", bad_reals(1.0))
add("ddpm", ddpm.ch1_constant, {"schedule": SU, "t": 50, "dim": 2}, "t", DISCRETE_T)
GK = {"mean_q": X, "var_q": 0.5, "mean_p": EPS, "var_p": 1.0}
batch("ddpm", ddpm.gaussian_kl, GK, "mean_q", rows, also=("mean_p",))
add("ddpm", ddpm.gaussian_kl, GK, "var_q", bad_reals(0.0, allow_low=False))
add("ddpm", ddpm.gaussian_kl, GK, "var_p", bad_reals(0.0, allow_low=False))
PO = {"schedule": SU, "t": 50, "s": 40}
add("ddpm", ddpm.posterior, PO, "t", bad_times(100.0, True, shapes=False))
S_BAD = st.one_of(bad_times(100.0, True, shapes=False).filter(lambda s: s is not None), st.just(60))  # None: t - 1
add("ddpm", ddpm.posterior, PO, "s", S_BAD)
add("ddpm", ddpm.posterior, {"schedule": SU, "t": 50, "s": 40}, "schedule", bad_schedules())
DM = {"x": X, "eps": EPS, "t": 50, "schedule": SU}
batch("ddpm", ddpm.ddpm_mean, DM, "x", also=("eps",))
add("ddpm", ddpm.ddpm_mean, DM, "t", st.one_of(bad_times(100.0, True), st.just(0)))
add("ddpm", ddpm.reverse_std, {"schedule": SU, "t": 50, "kind": "beta"}, "kind", bad_names(("posterior", "beta")))
add("ddpm", ddpm.reverse_std, {"schedule": SU, "t": 50}, "t", DISCRETE_T)
RVV = {"source": GMM, "x": X, "t": 50, "schedule": SU, "s": 40}
batch("ddpm", ddpm.reverse_variance, RVV, "x", lambda v: lambda r: shaped(v.shape[0], 2, 2)(r))
add("ddpm", ddpm.reverse_variance, RVV, "s", S_BAD)
add("ddpm", ddpm.reverse_variance, RVV, "source", st.sampled_from([None, DATA, M_VP]))
KW = {"schedule": SU, "t": 50, "sigma": 0.1}
add("ddpm", ddpm.kl_weight, KW, "sigma", bad_reals(0.0, allow_low=False, several=False))
add("ddpm", ddpm.kl_weight, KW, "t", DISCRETE_T)


def run_case(case, on_value: Callable[[object], None]) -> None:
    """Call ``on_value`` on each value hypothesis draws from ``case.strategy`` (the same values for every caller:
    ``derandomize`` seeds from the source of ``run``)."""

    @FUZZ
    @given(value=case.strategy)
    def run(value):
        on_value(value)

    run()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_valid_result_or_a_clear_error(case):
    run_case(case, lambda value: assert_good(case, value))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_good_arguments_of_each_case_are_accepted(case):
    """The fuzz perturbs one argument of a call that works: otherwise a refusal would prove nothing."""
    check_outcome(case.fn, names=(), expect=lambda r: None, **case.good)


# ---- concrete faults, each found before the fuzz existed or by it --------------------------------------------------
def test_an_empty_batch_samples_to_an_empty_batch():
    """The exact model, every sampler and the conversions pass an empty batch through (shape (0, d)); an empty data
    set has no distribution and is refused."""
    x = torch.zeros(0, 2, dtype=F64)
    assert dm.sample(M_SU, x, G_SU, SU, eta=1.0).shape == (0, 2)
    assert ode.ode_sample(M_VP, x, G_VP, VP, "heun").shape == (0, 2)
    assert EMP.posterior_mean(x, 0.8, 0.6).shape == (0, 2) and GMM.noised_log_prob(x, 0.8, 0.6).shape == (0,)
    with pytest.raises(ValueError, match="points needs at least 1"):
        dm.EmpiricalData(torch.zeros(0, 2))


def test_a_float64_batch_into_a_float32_network_is_refused_naming_both_dtypes():
    net = FakeModel(None)  # a float32 nn.Linear with the one interface
    with pytest.raises(TypeError, match=r"x has dtype torch\.float64 .* parameters are torch\.float32.*expected x in"):
        dm.sample(net, torch.randn(4, 2, dtype=F64), G_VP, VP)
    assert dm.sample(net, torch.randn(4, 2), G_VP, VP).dtype == torch.float32


def test_empirical_posterior_mean_is_the_nearest_point_for_a_tiny_b():
    """b = 1e-200 is valid (b^2 underflows to 0): the responsibilities are computed relative to the nearest point
    and dividing by b twice, so they tend to one-hot instead of 0/0 = NaN."""
    x = torch.tensor([[0.75, 0.05], [-0.3, 0.4]], dtype=F64)  # nearest to 0.8 * DATA[0] and 0.8 * DATA[1]
    torch.testing.assert_close(EMP.posterior_mean(x, 0.8, 1e-200), DATA[:2], rtol=0, atol=0)
    assert (EMP.score(0.8 * DATA[:1], 0.8, 1e-200) == 0).all()


def test_a_ddim_step_must_go_towards_the_data():
    """s >= t was accepted (from t = 0 the step was NaN): now a ValueError naming s and t."""
    for t, s in ((50, 60), (50, 50), (0, 10)):
        with pytest.raises(ValueError, match=r"s must be < t"):
            dm.ddim_coefficients(SU, t, s, 1.0)
        with pytest.raises(ValueError, match=r"s must be < t"):
            dm.ddim_step(M_SU, X, t, s, SU, eta=1.0)


def test_convert_checks_its_inputs_even_when_source_is_target():
    nan = torch.full_like(X, float("nan"))
    with pytest.raises(ValueError, match="pred contains NaN"):
        dm.convert(nan, "eps", "eps", X, 0.8, 0.6)
    with pytest.raises(ValueError, match=r"pred must have shape \(3, 2\) \(that of x\)"):
        dm.convert(X[:, :1], "eps", "eps", X, 0.8, 0.6)
    with pytest.raises(ValueError, match="a and b are both 0"):
        dm.convert(EPS, "eps", "eps", X, 0.0, 0.0)
    with pytest.raises(ValueError, match="source must name a prediction"):
        dm.convert(EPS, "noise", "noise", X, 0.8, 0.6)
    assert dm.convert(EPS, "eps", "eps", X, 0.0, 1.0) is EPS


@pytest.mark.parametrize("out", [lambda x: x[:, :1], lambda x: x.numpy(), lambda x: x * float("nan")])
def test_classifier_free_guidance_checks_the_wrapped_models_output(out):
    guided = guidance.ClassifierFree(FakeModel(out), 2.0)
    with pytest.raises(ValueError, match="model returned"):
        guided(X, torch.full((3,), 0.5, dtype=F64), Y)


class _NaNAfter:
    """A model with the one interface that returns eps = 0 for ``n`` calls, then NaN."""

    prediction = "eps"

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x, t, cond=None):
        self.n -= 1
        return torch.zeros_like(x) if self.n >= 0 else torch.full_like(x, float("nan"))


@pytest.mark.parametrize(
    "run",
    [
        lambda m: dm.sample(m, X, G_SU, SU, eta=1.0),
        lambda m: ode.ode_sample(m, X, G_VP, VP, "euler"),
        lambda m: list(sde.reverse_sde(m, X, G_VP, VP)),
        lambda m: list(variance.analytic_ddpm(m, DATA, G_SU, SU, "posterior")),
    ],
    ids=["ddim", "ode", "reverse_sde", "analytic_ddpm"],
)
def test_a_models_nan_is_reported_with_its_step_index(run):
    with pytest.raises(ValueError, match=r"at step 2 \(t=.* -> .*\): model returned NaN or inf"):
        run(_NaNAfter(2))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        pytest.param(lambda: dm.ddim_coefficients(SU, 50, 150), "s", id="ddim_coefficients-s"),
        pytest.param(lambda: dm.ddim_step(M_VP, X, 0.5, float("nan"), VP), "s", id="ddim_step-s"),
        pytest.param(lambda: ddpm.posterior(SU, 50, -3), "s", id="posterior-s"),
        pytest.param(lambda: variance.reverse_step_variance(SU, 50, 40.5), "s", id="reverse_step_variance-s"),
        pytest.param(
            lambda: ode.solve_ode_reference(M_VP, X, 1.0, 0.5, VP, rtol=-1.0), "rtol", id="solve_ode_reference-rtol"
        ),
        pytest.param(lambda: reference.exact_pf_ode(GMM, X, 1.0, 0.5, VP, rtol=0.0), "rtol", id="exact_pf_ode-rtol"),
        pytest.param(
            lambda: ode.ode_log_likelihood(M_VP, X, VP, 0.5, rtol=float("nan")), "rtol", id="ode_log_likelihood-rtol"
        ),
        pytest.param(
            lambda: variance.reverse_step_variance(SU, 50, 40, "analytic", float("nan")),
            "sbar2",
            id="reverse_step_variance-sbar2",
        ),
        pytest.param(
            lambda: variance.reverse_step_variance(SU, 50, 40, "analytic", -0.1),
            "sbar2",
            id="reverse_step_variance-sbar2",
        ),
        pytest.param(
            lambda: variance.neg_elbo(M_SU, DATA, G_SU, SU, "analytic", torch.full((3,), -1.0)),
            "sbar2",
            id="neg_elbo-sbar2",
        ),
        pytest.param(lambda: sde.fokker_planck_residual(GMM, VP, X, 0.5, dt=0.0), "dt", id="fokker_planck_residual-dt"),
        pytest.param(lambda: sde.fokker_planck_residual(GMM, VP, X, 0.5, dt=0.7), "dt", id="fokker_planck_residual-dt"),
        pytest.param(lambda: guidance.ClassifierFree(M_VP, float("inf")), "scale", id="ClassifierFree-scale"),
        pytest.param(lambda: guidance.ClassifierGuided(M_VP, LP, VP, "2"), "scale", id="ClassifierGuided-scale"),
        pytest.param(lambda: dm.check_grid(torch.tensor([1.0, 0.5, -0.5]), VP), "grid", id="check_grid-grid"),
        pytest.param(lambda: ode.encode(M_VP, X, VP, t_start=float("nan")), "t_start", id="encode-t_start"),
    ],
)
def test_errors_name_the_argument_at_fault(call, name):
    with pytest.raises((ValueError, TypeError), match=rf"(?<![\w.]){name}(?!\w)"):
        call()
