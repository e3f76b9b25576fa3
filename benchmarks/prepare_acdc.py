"""``python benchmarks/prepare_acdc.py ...`` runs ``adnnunet_prepare_acdc ...``
(ad_nnunet/dataset_conversion/prepare_acdc.py)."""
from ad_nnunet.entrypoints.datasets import prepare_acdc_entry

if __name__ == "__main__":
    raise SystemExit(prepare_acdc_entry())
