"""Pure analysis functions: DataFrame in, DataFrame out. No torch, no Streamlit.

Typical use in a notebook::

    from stability import store, analysis
    res = store.load("results")
    analysis.edf(res.runs, relative=True)     # per sweep x optimizer x epochs x stem: bands
    analysis.compare(res.runs, by="stem")     # signed effects b − a with CIs, paired tests
    analysis.first_layer_lead(res.grad_norms)               # MoCo v3: first-layer spikes lead
    sens = analysis.lr_sensitivity(res.runs)  # Wortsman et al. 2023: a Table, per group x stem x fix, CI over seeds
    sens.table, sens.by, sens.note            # its rows, the columns naming each row's group, what it left out
    analysis.sign_flip_p(d), analysis.holm(ps)   # paired seeds, a family of findings (analysis.findings)

Modules: ``grouping`` (design axes), ``edf``, ``compare``, ``stems``, ``findings``, ``sweeps``,
``spikes``, the two studies of Wortsman et al. 2023 (``sensitivity``: LR sensitivity;
``attention``: attention logits vs divergence) returning ``tables.Table``, and ``stats``, the
one home of the statistics they share (bootstrap intervals, permutation and paired tests, Holm,
power, Wilson/Newcombe, AUC).
"""

from .attention import attn_logit_at, attn_logit_auc, attn_logit_divergence, auc_lines, auc_verdict
from .compare import compare, paired_differences, verdict_text
from .edf import (
    DIVERGED_ERROR,
    PRUNED_AS,
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
from .grouping import fix_of, fixed_axes, pooled, strata, with_design, with_fix, with_size
from .sensitivity import (
    lr_curves,
    lr_sensitivity,
    lr_sensitivity_per_seed,
    sensitivity_diff,
    sensitivity_lines,
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
from .stats import (
    area_between,
    bm_perm_p,
    boot_ci,
    correct_of,
    holm,
    ks_permutation_p,
    ks_signed,
    mcnemar_exact,
    mcnemar_runs,
    mde_sign_flip,
    median_perm_p,
    newcombe,
    paired_tests,
    prob_lower,
    sd_upper,
    sign_flip_p,
    t_interval,
    wilson,
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
from .tables import Table, group_text, row_group, stratum_text, value_text

__all__ = [
    "DIVERGED_ERROR", "PRUNED_AS", "SpikeParams", "Table", "bm_perm_p", "boot_ci", "group_text", "median_perm_p", "prob_lower", "newcombe", "row_group",
    "stratum_text", "value_text", "wilson", "at_chance", "area_between", "attn_logit_at", "attn_logit_auc", "attn_logit_divergence",
    "auc_lines", "auc_verdict", "best_configs",
    "compare", "correct_of", "count_spikes", "holm", "mcnemar_exact", "mcnemar_runs", "mde_sign_flip",
    "sd_upper", "sign_flip_p", "t_interval", "default_by", "delta_to_best", "detect_spikes", "dkw_halfwidth", "downsample", "edf",
    "edf_at", "error_vs_hparams", "hparam_importance", "errors", "first_layer_lead", "fix_of", "fixed_axes",
    "ks_permutation_p", "ks_signed", "lr_curves", "lr_sensitivity", "lr_sensitivity_per_seed",
    "lr_wd_heatmap", "mark_spikes", "optimizer_gap", "outcomes", "paired_differences",
    "paired_tests", "pooled", "sensitivity_diff", "sensitivity_lines", "sensitivity_verdict", "spike_counts", "chance_error", "stem_outcomes", "stem_verdicts", "strata", "summary",
    "verdict_line",
    "training_length", "verdict_text", "with_design", "with_fix", "with_size", "within_fraction", "worst_runs",
]
