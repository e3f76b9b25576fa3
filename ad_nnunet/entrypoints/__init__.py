"""The ``adnnunet_*`` commands: argument parsing and printing only; library functions do the work.

One module per stage of the pipeline (setup.py's console_scripts point at them):

* :mod:`.datasets`: building raw datasets: adnnunet_make_phantom, adnnunet_domains, adnnunet_prepare_la,
  adnnunet_prepare_acdc;
* :mod:`.preparation`: before ``nnUNetv2_train``: adnnunet_ext_path, adnnunet_apply_preset, adnnunet_make_settings,
  adnnunet_preprocess_unlabeled;
* :mod:`.results`: trained models and their predictions: adnnunet_warm_start, adnnunet_export,
  adnnunet_pseudolabels, adnnunet_rank_unlabeled, adnnunet_evaluate;
* :mod:`.benchmark`: adnnunet_benchmark and the GPU-tier packer (``ad_nnunet.benchmark``);
* :mod:`.demo`: adnnunet_demo, the whole path on a phantom.
* :mod:`.benchmark`: adnnunet_benchmark (A&D vs. nnU-Net at the same step budget) and the GPU-tier packer.

Every command runs its body through :func:`ad_nnunet.errors.report_input_errors`: an ``ADInputError`` becomes
``<command>: error: <message naming the case and the fix>`` on stderr and exit status 2.
"""
