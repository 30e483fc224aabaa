"""The sampler a decoder draws with (``decoder.sampler``): a diffusers
scheduler built from the model's own scheduler config (``from_config``), so
the noise schedule and prediction type it was trained with carry over.

- ``ddim``: DDIM, eta 0 (what the world decoder ships with).
- ``dpm_solver``: DPM-Solver++ (2M), the second-order multistep solver of
  Lu et al. 2022: on the world decoder's selection half, 5 steps matched
  DDIM's 10 on image embeddings and fell just short on text prompts
  (benchmarks/decoder_sampling.json).
- ``None``: the model's own scheduler, unchanged.
"""
from __future__ import annotations

SAMPLERS = ("ddim", "dpm_solver")


def sampling_scheduler(scheduler, sampler: str | None):
    """A fresh scheduler of kind ``sampler`` on ``scheduler``'s config (``scheduler`` itself for None).
    Multistep solvers keep state between steps: call ``set_timesteps`` before each batch."""
    if sampler is None:
        return scheduler
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    if sampler == "ddim":
        return DDIMScheduler.from_config(scheduler.config)
    if sampler == "dpm_solver":
        return DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS} or None (the model's own)")
