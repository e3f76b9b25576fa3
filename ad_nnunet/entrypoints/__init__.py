"""The ``adnnunet_*`` commands: argument parsing and printing only; the work is done by library functions.

One module per pipeline stage (setup.py's console_scripts point here):

* :mod:`.datasets`: raw datasets (adnnunet_make_phantom, adnnunet_domains, adnnunet_prepare_la,
  adnnunet_prepare_acdc);

Every command runs its body through :func:`ad_nnunet.errors.report_input_errors`: an ``ADInputError`` becomes
``<command>: error: <message naming the case and the fix>`` on stderr and exit status 2.
"""
