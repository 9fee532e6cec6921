"""Guards that stop a run producing garbage, as pure functions of the losses it reports.

All thresholds are in units of ln(vocab_size), the loss of a uniform model over the vocabulary,
so one setting means the same for any tokenizer. Each returns None when all is well, or a
one-line reason; the loop turns it into an error. They only read numbers: a healthy run's
results never depend on them.

- divergence (every step): the training loss is above `ceiling * ln V` (from step 2: step 1
  only measures the initialization), or, after `warmup_steps`, it rose more than
  `rise * ln V` above the lowest training loss seen so far. Healthy runs stay far inside both:
  the default CPU run's loss never exceeds 1.06 ln V and never rises more than 0.07 ln V above
  its running minimum; the official 8xH100 baseline spikes to 2.4 ln V at step 2 (inside the
  warm-up) and recovers by step 4.
- final validation: the final validation loss is not below `ceiling * ln V`: with the default
  1.0, the model is no better than predicting every token with probability 1/V.
"""

from __future__ import annotations

import math

from pgolf.errors import PgolfError


class TrainingFailed(PgolfError):
    """Training ran but its model is garbage (diverged, or no better than a uniform guess).

    Defined here, not in pgolf.errors: that module counts in the artifact's code bytes.
    """


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy in nats of the uniform distribution over `vocab_size` tokens: ln V."""
    return math.log(vocab_size)


def divergence(loss: float, best: float, step: int, vocab_size: int, warmup_steps: int, rise: float, ceiling: float) -> str | None:
    """Why the training loss `loss` of `step` (1-based) means the run diverged, or None.

    `best` is the lowest training loss of the steps before this one (inf when there were none).
    `rise` or `ceiling` set to 0 turns that rule off. NaN/inf losses are the loop's own check.
    """
    if not math.isfinite(loss) or step < 2:
        return None
    ln_v = uniform_loss(vocab_size)
    if ceiling > 0 and loss > ceiling * ln_v:
        return f"training loss {loss:.4g} at step {step} is above train.diverge_ceiling x ln(vocab) = {ceiling:g} x {ln_v:.4f}"
    if rise > 0 and step > warmup_steps and math.isfinite(best) and loss > best + rise * ln_v:
        return (
            f"training loss {loss:.4g} at step {step} rose more than train.diverge_rise x ln(vocab) = {rise:g} x {ln_v:.4f} "
            f"above its minimum {best:.4f}"
        )
    return None


def final_validation(val_loss: float, vocab_size: int, ceiling: float) -> str | None:
    """Why a final validation loss `val_loss` is a failed run (not below `ceiling * ln V`), or None."""
    ln_v = uniform_loss(vocab_size)
    if ceiling > 0 and not val_loss < ceiling * ln_v:
        bound = f"ln(vocab) = {ln_v:.4f}" if ceiling == 1 else f"{ceiling:g} x ln(vocab) = {ceiling * ln_v:.4f}"
        return f"final val_loss {val_loss:.4f} is not below {bound}: the model is no better than a uniform guess over {vocab_size} tokens"
    return None
