"""A&D's per-epoch log entries and their progress plot (``ad_progress.png``, next to nnU-Net's progress.png)."""
import os

import matplotlib
import numpy as np

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

# Registered in nnU-Net's LocalLogger, so they are checkpointed and restored with its own entries on --c.
AD_LOG_KEYS = ("L_deno", "L_diff", "L_u", "L_theta", "mu", "pseudo_fg_fraction", "pseudo_ignored_fraction",
               "skipped_steps", "class_weights")


def add_missing_ad_log_keys(log: dict) -> list:
    """Give a restored log every A&D key it lacks, NaN for each epoch already done; returns the keys added.

    nnU-Net's logger asserts that a logged key exists and has one entry per epoch, so a checkpoint written before a key
    was added (L_theta and pseudo_ignored_fraction came in later) could not continue with ``--c`` without this."""
    epochs_done = len(log.get("train_losses", []))
    missing = [key for key in AD_LOG_KEYS if key not in log]
    for key in missing:
        log[key] = [float("nan")] * epochs_done
    return missing


def plot_ad_progress(log: dict, output_folder: str) -> str:
    """Plot losses, mu, the pseudo-labels' foreground and left-out fractions and DRS class weights per epoch; returns
    the PNG path."""
    epochs = min(len(log[k]) for k in AD_LOG_KEYS)
    x = list(range(epochs))
    fig, axes = plt.subplots(3, 1, figsize=(12, 14))
    for key, style in (("L_deno", "b-"), ("L_diff", "r-"), ("L_u", "g-")):
        axes[0].plot(x, log[key][:epochs], style, label=key)
    if np.nansum(np.abs(np.asarray(log["L_theta"][:epochs], dtype=float))) > 0:  # 0 unless D_theta learns labels
        axes[0].plot(x, log["L_theta"][:epochs], "c-", label="L_theta")
    mu_axis = axes[0].twinx()
    mu_axis.plot(x, log["mu"][:epochs], "k--", label="mu")
    axes[0].set_ylabel("loss")
    mu_axis.set_ylabel("mu")
    axes[0].legend(loc="upper left")
    mu_axis.legend(loc="upper right")
    axes[1].plot(x, log["pseudo_fg_fraction"][:epochs], "m-", label="pseudo-label foreground fraction")
    axes[1].plot(x, log["pseudo_ignored_fraction"][:epochs], "y-", label="unlabeled voxels left out of L_u")
    axes[1].legend(loc="upper left")
    weights = log["class_weights"][:epochs]
    num_classes = max((len(w) for w in weights if isinstance(w, list)), default=0)
    for c in range(num_classes):  # an epoch restored without weights (NaN) stays a gap
        axes[2].plot(x, [w[c] if isinstance(w, list) else float("nan") for w in weights], label=f"class {c}")
    axes[2].set_ylabel("DRS class weight")
    axes[2].set_xlabel("epoch")
    axes[2].legend(loc="upper left")
    fig.tight_layout()
    path = os.path.join(output_folder, "ad_progress.png")
    fig.savefig(path)
    plt.close(fig)
    return path
