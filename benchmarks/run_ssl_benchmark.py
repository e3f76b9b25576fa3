"""``python benchmarks/run_ssl_benchmark.py ...`` runs ``adnnunet_benchmark ...`` (ad_nnunet/benchmark/), recording
this spelling of the command in state.json and the report."""
import os

from ad_nnunet.entrypoints.benchmark import benchmark_entry

if __name__ == "__main__":
    script = os.path.relpath(__file__)
    raise SystemExit(benchmark_entry(prog="run_ssl_benchmark",
                                     launcher=["python", __file__ if script.startswith("..") else script]))
