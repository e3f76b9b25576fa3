"""A&D's per-epoch log entries and their progress plot (``ad_progress.png``, next to nnU-Net's progress.png)."""
import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

# Registered in nnU-Net's LocalLogger, so they are checkpointed and restored with its own entries on --c.
AD_LOG_KEYS = ("L_deno", "L_diff", "L_u", "mu", "pseudo_fg_fraction", "skipped_steps", "class_weights")


def plot_ad_progress(log: dict, output_folder: str) -> str:
    """Plot losses, mu, pseudo-label foreground fraction and DRS class weights per epoch; returns the PNG path."""
    epochs = min(len(log[k]) for k in AD_LOG_KEYS)
    x = list(range(epochs))
    fig, axes = plt.subplots(3, 1, figsize=(12, 14))
    for key, style in (("L_deno", "b-"), ("L_diff", "r-"), ("L_u", "g-")):
        axes[0].plot(x, log[key][:epochs], style, label=key)
    mu_axis = axes[0].twinx()
    mu_axis.plot(x, log["mu"][:epochs], "k--", label="mu")
    axes[0].set_ylabel("loss")
    mu_axis.set_ylabel("mu")
    axes[0].legend(loc="upper left")
    mu_axis.legend(loc="upper right")
    axes[1].plot(x, log["pseudo_fg_fraction"][:epochs], "m-", label="pseudo-label foreground fraction")
    axes[1].legend(loc="upper left")
    weights = log["class_weights"][:epochs]
    if weights:
        for c in range(len(weights[0])):
            axes[2].plot(x, [w[c] for w in weights], label=f"class {c}")
    axes[2].set_ylabel("DRS class weight")
    axes[2].set_xlabel("epoch")
    axes[2].legend(loc="upper left")
    fig.tight_layout()
    path = os.path.join(output_folder, "ad_progress.png")
    fig.savefig(path)
    plt.close(fig)
    return path
