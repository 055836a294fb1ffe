"""Pure analysis functions: DataFrame in, DataFrame out. No torch, no Streamlit.

Typical use in a notebook::

    from stability import store, analysis
    res = store.load("results")
    analysis.edf(res.runs, relative=True)     # per sweep x optimizer x epochs x stem: bands
    analysis.compare(res.runs, by="stem")     # signed effects b − a with CIs, paired tests
    analysis.first_layer_lead(res.grad_norms)               # MoCo v3: first-layer spikes lead
    analysis.lr_sensitivity(res.runs)         # Wortsman et al. 2023: per group x stem x fix, CI over seeds
    analysis.sign_flip_p(d), analysis.holm(ps)   # paired seeds, a family of findings (analysis.findings)
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
    at_chance,
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
from .grouping import fix_of, fixed_axes, pooled, strata, with_fix, with_size
from .inference import (
    correct_of,
    holm,
    mcnemar_exact,
    mcnemar_runs,
    mde_sign_flip,
    sd_upper,
    sign_flip_p,
    t_interval,
)
from .sensitivity import (
    attn_logit_at,
    attn_logit_auc,
    attn_logit_divergence,
    auc_lines,
    auc_verdict,
    lr_curves,
    lr_sensitivity,
    lr_sensitivity_per_seed,
    sensitivity_diff,
    sensitivity_verdict,
)
from .spikes import (
    SpikeParams,
    count_spikes,
    detect_spikes,
    downsample,
    first_layer_lead,
    mark_spikes,
    spike_counts,
)
from .stems import chance_error, stem_outcomes, stem_verdicts, verdict_line
from .sweeps import (
    best_configs,
    error_vs_hparams,
    hparam_importance,
    lr_wd_heatmap,
    optimizer_gap,
    training_length,
)

__all__ = [
    "DIVERGED_ERROR", "SpikeParams", "at_chance", "area_between", "attn_logit_at", "attn_logit_auc", "attn_logit_divergence",
    "auc_lines", "auc_verdict", "best_configs",
    "compare", "correct_of", "count_spikes", "holm", "mcnemar_exact", "mcnemar_runs", "mde_sign_flip",
    "sd_upper", "sign_flip_p", "t_interval", "default_by", "delta_to_best", "detect_spikes", "dkw_halfwidth", "downsample", "edf",
    "edf_at", "error_vs_hparams", "hparam_importance", "errors", "first_layer_lead", "fix_of", "fixed_axes",
    "ks_permutation_p", "ks_signed", "lr_curves", "lr_sensitivity", "lr_sensitivity_per_seed",
    "lr_wd_heatmap", "mark_spikes", "optimizer_gap", "outcomes", "paired_differences",
    "paired_tests", "pooled", "sensitivity_diff", "sensitivity_verdict", "spike_counts", "chance_error", "stem_outcomes", "stem_verdicts", "strata", "summary",
    "verdict_line",
    "training_length", "verdict_text", "with_fix", "with_size", "within_fraction", "worst_runs",
]
