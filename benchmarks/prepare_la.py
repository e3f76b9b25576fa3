"""``python benchmarks/prepare_la.py ...`` runs ``adnnunet_prepare_la ...``
(ad_nnunet/dataset_conversion/prepare_la.py)."""
from ad_nnunet.entrypoints.datasets import prepare_la_entry

if __name__ == "__main__":
    raise SystemExit(prepare_la_entry())
