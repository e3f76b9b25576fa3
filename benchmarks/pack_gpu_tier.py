"""``python benchmarks/pack_gpu_tier.py ...``: the GPU tier's offline payload (ad_nnunet/benchmark/gpu_payload.py).

Usage (after benchmarks/prepare_la.py)::

    python benchmarks/pack_gpu_tier.py --source $nnUNet_raw/Dataset111_LA10bench      # -> benchmarks/gpu_payload/
    python benchmarks/pack_gpu_tier.py --verify benchmarks/gpu_payload               # what gpu_tier.sh runs first

On the device, before ad-nnunet is installed, gpu_tier.sh runs this with the working tree on PYTHONPATH.
"""
from ad_nnunet.entrypoints.benchmark import pack_gpu_tier_entry

if __name__ == "__main__":
    raise SystemExit(pack_gpu_tier_entry())
