"""Pure analysis functions: DataFrame in, DataFrame out. No torch, no Streamlit.

Typical use in a notebook::

    from stability import store, analysis
    res = store.load("results")
    analysis.edf(res.runs, relative=True)     # per sweep x optimizer x epochs x stem: bands
    analysis.compare(res.runs, by="stem")     # signed effects b − a with CIs, paired tests
    analysis.first_layer_lead(res.grad_norms)               # MoCo v3: first-layer spikes lead
"""

from .compare import (
    area_between,
    compare,
    ks_permutation_p,
    ks_signed,
    paired_differences,
    paired_tests,
    verdict_text,
)
from .edf import (
    DIVERGED_ERROR,
    default_by,
    delta_to_best,
    dkw_halfwidth,
    edf,
    edf_at,
    errors,
    outcomes,
    summary,
    within_fraction,
    worst_runs,
)
from .grouping import pooled, strata, with_size
from .spikes import (
    SpikeParams,
    count_spikes,
    detect_spikes,
    downsample,
    first_layer_lead,
    mark_spikes,
    spike_counts,
)
from .sweeps import (
    best_configs,
    error_vs_hparams,
    hparam_importance,
    lr_wd_heatmap,
    optimizer_gap,
    training_length,
)

__all__ = [
    "DIVERGED_ERROR", "SpikeParams", "area_between", "best_configs", "compare", "count_spikes",
    "default_by", "delta_to_best", "detect_spikes", "dkw_halfwidth", "downsample", "edf", "edf_at",
    "error_vs_hparams", "hparam_importance", "errors", "first_layer_lead", "ks_permutation_p", "ks_signed",
    "lr_wd_heatmap", "mark_spikes", "optimizer_gap", "outcomes", "paired_differences",
    "paired_tests", "pooled", "spike_counts", "strata", "summary", "training_length",
    "verdict_text", "with_size", "within_fraction", "worst_runs",
]
