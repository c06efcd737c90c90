"""The dashboard's trial notes: what the study's verdict says of each complete trial.

optuna-dashboard shows a trial's note (Markdown) on top of its page. Every baseline says what
it is and how far below the best it lies, with the p-value; the recommended configuration's
trials say they are recommended and why; every other trial in the verdict says whether it
is tied with the best. The verdict changes as a study grows, so the notes are rewritten after
workers finish (`note_verdict`), each only when its text changed.
"""

from __future__ import annotations

import optuna
import optuna_dashboard
from optuna_dashboard._note import get_note_from_system_attrs

from search.results.verdict import (
    Configuration,
    NoVerdict,
    Verdict,
    assess,
    describe_p,
)


def baseline_note(model: str) -> str:
    return (f"**Baseline** ({model}, head only): no LoRA; the pretrained backbone is frozen "
            "and only the classification head is trained.")


def verdict_note(verdict: Verdict, configuration: Configuration) -> str:
    """The note of every trial of `configuration` under `verdict`."""
    best, test = verdict.best, verdict.ties[configuration.key]
    seeds = (f" (mean over its {len(configuration.trials)} seeds: trials "
             f"{', '.join(map(str, configuration.numbers))})" if len(configuration.trials) > 1
             else "")
    lines = [baseline_note(configuration.model)] if configuration.baseline else []
    if configuration is best:
        lines.append(f"**Best** validation accuracy {best.val_accs.mean():.4f}{seeds}.")
    elif configuration.baseline:
        gap = 100 * (best.val_accs.mean() - configuration.val_accs.mean())
        where = "below" if gap >= 0 else "above"
        lines.append(f"{abs(gap):.1f} pp {where} the best LoRA configuration ({best.describe()}) "
                     f"on validation, {describe_p(test.p_value)} (paired test"
                     f"{'; not told apart from it' if test.tied else ''}){seeds}.")
    else:
        lines.append(f"{'Tied with' if test.tied else 'Worse than'} the best ({best.describe()}): "
                     f"{describe_p(test.p_value)}, Holm-adjusted {test.p_holm:.2g}{seeds}.")
    if configuration is verdict.recommended:
        tied = sum(verdict.tied(c) for c in verdict.configurations if not c.baseline)
        lines.append(f"**Recommended**: the fewest trainable parameters "
                     f"({configuration.trainable_params:,}) among the {tied} LoRA "
                     "configurations tied with the best (`search export --pick recommended`).")
    return "\n\n".join(lines)


def note_verdict(study: optuna.Study) -> int:
    """Write the verdict's note on every trial it covers whose note differs; how many."""
    try:
        verdict = assess(study)
    except NoVerdict:
        return 0
    attrs = study._storage.get_study_system_attrs(study._study_id)
    written = 0
    for configuration in verdict.configurations:
        body = verdict_note(verdict, configuration)
        for trial in configuration.trials:
            if get_note_from_system_attrs(attrs, trial._trial_id)["body"] != body:
                optuna_dashboard.save_note(optuna.Trial(study, trial._trial_id), body)
                written += 1
    return written
