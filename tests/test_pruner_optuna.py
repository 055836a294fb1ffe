"""The pruner as an Optuna ``BasePruner``: in a plain Optuna loop (a user's own objective that
reports its loss) it prunes the trial whose loss goes non-finite or sits well above ln C, where
Optuna's WilcoxonPruner never prunes a NaN, and leaves a learning trial alone."""

import math
import warnings

import optuna
import pytest

from stability.pruner import PrunerSettings, optuna_pruner

LN_C = math.log(10)


def _run(pruner, curves):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    pruned_at = []
    for curve in curves:
        trial = study.ask()
        stopped = None
        for step, loss in enumerate(curve):
            trial.report(loss, step)
            if trial.should_prune():
                stopped = step
                break
        pruned_at.append(stopped)
        if stopped is None and math.isfinite(curve[-1]):
            study.tell(trial, curve[-1])
        elif stopped is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study, pruned_at


def _good(n=100):
    return [LN_C * (1.0 - 0.5 * i / n) for i in range(n)]


def test_a_nan_loss_prunes_at_once_and_a_learning_trial_runs_on():
    nan = _good()[:30] + [math.nan] * 70
    study, at = _run(optuna_pruner(PrunerSettings(), 100, 10), [_good(), _good(), nan])
    assert at == [None, None, 30]
    assert [t.state for t in study.trials][-1] == optuna.trial.TrialState.PRUNED


def test_a_loss_above_chance_prunes_and_wilcoxon_does_not_prune_the_nan():
    high = [2.0 * LN_C] * 100
    _, at = _run(optuna_pruner(PrunerSettings(above=1.5, above_after=0.0), 100, 10), [_good(), high])
    assert at[0] is None and at[1] is not None and at[1] <= 10  # the first full window (10 % of 100 steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        wilcoxon = optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    nan = _good()[:30] + [math.nan] * 70
    _, at = _run(wilcoxon, [_good(), nan])
    assert at[1] is None or at[1] > 30  # Optuna's pruner does not take the NaN as evidence


@pytest.mark.parametrize("bad", ["above", "chance"])
def test_each_loss_rule_fires_through_optuna(bad):
    curve = [1.6 * LN_C] * 100 if bad == "above" else [LN_C] * 100
    _, at = _run(optuna_pruner(PrunerSettings(), 100, 10), [curve])
    assert at[0] is not None
