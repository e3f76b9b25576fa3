"""Semi-supervised benchmark: A&D vs. nnU-Net on the labeled cases only vs. nnU-Net on all labels, same step budget.

Up to three runs, each trained with stock ``nnUNetv2_train`` for exactly ``E = ceil(steps / I)`` epochs of ``I``
iterations (``N = E * I`` optimizer steps), then ``nnUNetv2_predict`` on a held-out test folder with
``checkpoint_final.pth`` and scored with ``ad_nnunet.evaluation`` (Dice, Jaccard, HD95 and ASD, distances in mm on
the reference grid):

================  =======  =====  ==========================================================================
method            trainer  fold   training data
================  =======  =====  ==========================================================================
A&D               ADTrainer   0   labeled cases with labels + unlabeled cases as images only (ad_settings.json)
labeled only      nnUNet      0   labeled cases (splits_final.json fold 0 = the labeled list)
all labels        nnUNet      1   labeled + unlabeled cases, ALL labels (fully supervised upper bound)
================  =======  =====  ==========================================================================

Validation during training is on the labeled cases (the A&D paper's protocol); it influences nothing that is
evaluated (no checkpoint selection; nnU-Net's final validation is skipped). Gap closure:

.. math::

    g = \\frac{\\mathrm{Dice}_{A\\&D} - \\mathrm{Dice}_{labeled}}{\\mathrm{Dice}_{all} - \\mathrm{Dice}_{labeled}}

(undefined when the all-labels model is not better than the labeled-only one).

``--finetune_steps F`` measures the user who already has a labeled-only model: labeled-only (and all-labels) nnU-Net
train the budget, then A&D (``--ad_trainer``, e.g. ADTrainer_finetune) continues the labeled-only model for F steps,
and so does nnU-Net alone at the same learning rate (``--finetune_lr``): the matched control A&D is compared with
(paired, gap closure); the all-labels model is continued likewise. Each continuation starts from the model's
``checkpoint_final.pth`` through ``adnnunet_warm_start`` and ``nnUNetv2_train ... --c``. ``--dev_interpolations A
...`` also scores, on the development cases (``--dev_cases``), A&D's model at other interpolation weights between
its start and its trained weights (``adnnunet_export --interpolation``), to check the saved model's weight.

``--methods`` picks the runs (default: all three). A&D and labeled only are mandatory; ``--methods ad labeled_only``
skips the all-labels upper bound when time is short, and the report then gives no gap closure (reported as not
computed). The selection is recorded in state.json; a rerun may add a method (its stages run, the report is rebuilt)
or drop one (left out of the rebuilt report).

Breakdowns in ``report.md``/``report.json``: Dice and HD95 per class (class names from dataset.json ``labels``) for
every method; when dataset.json has ``"ad_domains"``, the test cases are also scored per domain (mean Dice and HD95
per domain per method), and ``"ad_simulated": true`` puts "SIMULATED domains" in the title, a banner and the
per-domain heading. Each A&D run's ``ad_progress.png`` (losses, mu and the DRS difficulty weights per class per
epoch) is copied next to the report and linked as "difficulty weights trajectory". ``--setting {ssl, imbssl, uda,
semidg}`` only changes the titles (and, for ssl, shows the paper's LA numbers); the runs are the same in every
setting: for UDA "labeled only" is the source-only model and "all labels" the oracle with target labels.

Stages (each recorded in ``<out>/state.json`` when complete; a rerun skips completed stages and continues an
interrupted training with ``--c``; every subprocess writes to ``<out>/logs/<stage>.log``): plan, preprocess (preset),
settings, preprocess_unlabeled, trainers, [warm_start_*], train_*, predict_*, evaluate_*, [the development cases'
predict_dev_*, evaluate_dev_*, export_ad_a*], report.

Modules, one job each:

* :mod:`.budget`: the runs (methods), the step budget and the benchmark's trainer names;
* :mod:`.trainers`: the generated module of benchmark trainer classes (``<out>/trainers/bench_trainers.py``);
* :mod:`.inputs`: the command line's arguments checked against the dataset (nothing written yet);
* :mod:`.runner`: stages recorded in state.json, resumed by a rerun; subprocesses with their logs;
* :mod:`.pipeline`: the stages themselves (plan ... report) in their order;
* :mod:`.report`: report.json: per-run rows, gap closure, paired and per-class/per-domain statistics;
* :mod:`.markdown`: report.md rendered from report.json;
* :mod:`.provenance`: the commit and the machine a result comes from;
* :mod:`.gpu_payload`, :mod:`.gpu_wheels`, :mod:`.gpu_dataset`: the offline payload of the GPU tier
  (``benchmarks/gpu_tier.sh``), packed from a source checkout.

The command line is ``adnnunet_benchmark`` (``ad_nnunet.entrypoints.benchmark``; ``python
benchmarks/run_ssl_benchmark.py`` in a source checkout is the same command). Example (LA 10 %, CPU tier)::

    adnnunet_benchmark --dataset Dataset111_LA10bench \\
        --labeled $nnUNet_raw/Dataset111_LA10bench/splits/labeled.txt \\
        --unlabeled $nnUNet_raw/Dataset111_LA10bench/splits/unlabeled.txt \\
        --test_images $nnUNet_raw/Dataset111_LA10bench/imagesTs --test_labels $nnUNet_raw/Dataset111_LA10bench/labelsTs \\
        --preset la_cpu --steps 600 --device cpu --np 2 --out benchmark_runs/la10_cpu

Importing this package is cheap (no torch, no nnU-Net): ``benchmarks/gpu_tier.sh`` verifies its payload with it
before anything is installed.
"""
