"""Pure analysis functions: DataFrame in, DataFrame out. No torch, no Streamlit.

Typical use in a notebook::

    from stability import store, analysis
    res = store.load("results")
    analysis.edf(res.runs, by=["stem"], relative=True)      # EDF points + bootstrap band
    analysis.compare(res.runs, by="stem")                   # KS, area, fraction within x points
    analysis.first_layer_lead(res.grad_norms)               # MoCo v3: first-layer spikes lead
"""

from .edf import DIVERGED_ERROR, area_between, compare, edf, edf_at, errors, summary, worst_runs
from .spikes import (
    SpikeParams,
    count_spikes,
    detect_spikes,
    downsample,
    first_layer_lead,
    mark_spikes,
    spike_counts,
)
from .sweeps import best_configs, error_vs_hparams, lr_wd_heatmap, optimizer_gap, training_length

__all__ = [
    "DIVERGED_ERROR", "SpikeParams", "area_between", "best_configs", "compare", "count_spikes",
    "detect_spikes", "downsample", "edf", "edf_at", "error_vs_hparams", "errors",
    "first_layer_lead", "lr_wd_heatmap", "mark_spikes", "optimizer_gap", "spike_counts", "summary",
    "training_length", "worst_runs",
]
