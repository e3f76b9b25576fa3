"""A&D's log entries and ad_progress.png."""
import math

from ad_nnunet.training.progress import AD_LOG_KEYS, add_missing_ad_log_keys, plot_ad_progress


def test_a_log_from_before_a_key_existed_gets_nan_per_epoch_done_and_still_plots(tmp_path):
    log = {"train_losses": [0.9, 0.8], "L_deno": [0.5, 0.4], "L_diff": [0.7, 0.6], "L_u": [0.0, 0.1], "mu": [0.0, 0.5],
           "pseudo_fg_fraction": [0.1, 0.2], "skipped_steps": [0.0, 0.0], "class_weights": [[0.3, 1.0], [0.4, 1.0]]}
    assert add_missing_ad_log_keys(log) == ["L_theta", "pseudo_ignored_fraction"]
    assert all(math.isnan(v) for v in log["L_theta"] + log["pseudo_ignored_fraction"])
    assert {len(log[k]) for k in AD_LOG_KEYS} == {2}
    assert add_missing_ad_log_keys(log) == [] and log["L_deno"] == [0.5, 0.4]  # nothing present is touched
    log["L_theta"].append(0.3)  # the resumed epochs log real values next to the NaN ones
    log["class_weights"] = [float("nan"), [0.4, 1.0]]
    path = plot_ad_progress(log, str(tmp_path))
    assert path == str(tmp_path / "ad_progress.png") and (tmp_path / "ad_progress.png").stat().st_size > 0


def test_log_of_a_fresh_run_has_no_key_to_add():
    log = {"train_losses": [], **{k: [] for k in AD_LOG_KEYS}}
    assert add_missing_ad_log_keys(log) == []
