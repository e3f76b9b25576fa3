"""The benchmark's stages in their order (:meth:`Benchmark.run`): plan, preprocess, settings, preprocess_unlabeled,
[warm_start_*], train_*, predict_*, evaluate_*, [dev_folders, predict_dev_*, evaluate_dev_*,
[export_ad_a*, predict_dev_ad_a*, evaluate_dev_ad_a*]], report. Before the trainings, every invocation writes the
runs' trainer classes (``<out>/trainers/bench_trainers.py``), so a rerun that adds a run also has its class.

Each stage is a command of nnU-Net or ad-nnunet in a subprocess (``runner.StageRunner.run_cmd``), so the benchmark
measures what a user runs."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ad_nnunet.benchmark.budget import Method, interpolation_key
from ad_nnunet.benchmark.inputs import BenchmarkInputs
from ad_nnunet.benchmark.markdown import render_markdown
from ad_nnunet.benchmark.report import build_report
from ad_nnunet.benchmark.runner import StageError, StageRunner
from ad_nnunet.benchmark.trainers import trainer_module_source
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import write_atomic, write_json_atomic

PLANS = "nnUNetPlans"


class Benchmark(BenchmarkInputs, StageRunner):
    """The checked inputs (:class:`BenchmarkInputs`) run as resumable stages (:class:`StageRunner`) in ``args.out``."""

    def __init__(self, args: argparse.Namespace, command: str):
        BenchmarkInputs.__init__(self, args)  # refuses bad input before --out is created
        StageRunner.__init__(self, args.out, command, self.config(), [m.key for m in self.methods] +
                             [interpolation_key(a) for a in self.dev_interpolations])  # what the report shows

    def env(self, stage: str = "") -> Dict[str, str]:
        from ad_nnunet import ext_trainer_dir

        env = super().env(stage)
        env["nnUNet_def_n_proc"] = str(self.args.np)
        # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
        env["nnUNet_n_proc_DA"] = str(max(1, self.args.n_proc_da) if stage == "plan" else self.args.n_proc_da)
        # torch.compile: ADTrainer opts out unless nnUNet_compile=1; off for nnUNetTrainer too, for equal treatment
        env.setdefault("nnUNet_compile", "f")
        env["PYTHONUNBUFFERED"] = "1"
        ext = [str(self.out / "trainers"), ext_trainer_dir()]
        env["nnUNet_extTrainer"] = os.pathsep.join(ext + ([os.environ["nnUNet_extTrainer"]]
                                                         if os.environ.get("nnUNet_extTrainer") else []))
        return env

    # ---- naming ------------------------------------------------------------------------------------------------
    def trainer(self, m: Method) -> str:
        return self.budget.run_trainer(m)

    def model_folder(self, m: Method) -> Path:
        return self.results / f"{self.trainer(m)}__{PLANS}__{self.configuration}" / f"fold_{m.fold}"

    @property
    def dev_methods(self) -> tuple:
        """Runs scored on the development cases: all but the all-labels runs, which trained on their labels."""
        return tuple(m for m in self.methods if m.fold != 1)

    def split_folders(self, split: str) -> tuple[Path, Path, List[str], str]:
        """(images, labels, cases, suffix of stage names and output folders) of "test" or "dev"."""
        if split == "test":
            return self.test_images, self.test_labels, self.test, ""
        return self.out / "dev" / "images", self.out / "dev" / "labels", self.dev, "_dev"

    @staticmethod
    def warm_start_stage(m: Method) -> str:
        return "warm_start" if m.key == "ad" else f"warm_start_{m.key}"  # "warm_start": states of older versions

    # ---- data --------------------------------------------------------------------------------------------------
    def _data_folder(self) -> Optional[Path]:
        plans_file = self.pre / f"{PLANS}.json"
        if not plans_file.is_file():
            return None
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(str(plans_file))
        if self.configuration not in plans.available_configurations:
            raise ADInputError(f"Configuration {self.configuration} is not in {plans_file} (available: "
                               f"{plans.available_configurations}). Fix: pick one of those with --configuration.")
        return self.pre / plans.get_configuration(self.configuration).data_identifier

    def plan(self, entry: dict) -> dict:
        if (self.pre / f"{PLANS}.json").is_file():
            self.log(f"plan: {self.pre / PLANS}.json exists, planning skipped")
            return {"skipped": True}
        # With a preset, its own --preprocess step preprocesses exactly what the preset's configuration reads.
        cmd = ["nnUNetv2_plan_and_preprocess", "-d", str(self.dataset_id), "-c", "3d_fullres",
               "-np", str(self.args.np)] + (["--no_pp"] if self.preset else [])
        return {"command": shlex.join(cmd), "wall_s": self.run_cmd("plan", cmd)}

    def _preprocessed_complete(self) -> bool:
        folder = self._data_folder()
        return folder is not None and folder.is_dir() and len(list(folder.glob("*.pkl"))) == len(self.train_ids)

    def preprocess(self, entry: dict) -> dict:
        if self.preset:
            cmd = ["adnnunet_apply_preset", "-d", self.dataset, "--preset", self.args.preset, "--preprocess",
                   "-np", str(self.args.np), "--overwrite"]
        else:
            cmd = ["nnUNetv2_preprocess", "-d", str(self.dataset_id), "-c", self.configuration,
                   "-np", str(self.args.np)]
            if self._preprocessed_complete():
                return {"skipped": True}
        wall = 0.0
        for _ in range(2):  # a folder left incomplete by an interrupted run is removed and preprocessed again
            wall += self.run_cmd("preprocess", cmd)
            if self._preprocessed_complete():
                return {"command": shlex.join(cmd), "wall_s": round(wall, 2)}
            if self._data_folder() is not None and self._data_folder().is_dir():
                shutil.rmtree(self._data_folder())
        raise StageError(f"stage 'preprocess': {self._data_folder()} does not hold all {len(self.train_ids)} "
                         f"imagesTr cases after preprocessing. See {self.logs / 'preprocess.log'}.")

    def settings(self, entry: dict) -> dict:
        cmd = ["adnnunet_make_settings", "-d", self.dataset, "--setting", "ssl",
               "--labeled_list", str(Path(self.args.labeled).resolve()),
               "--unlabeled_list", str(Path(self.args.unlabeled).resolve()), "--overwrite"]
        self.run_cmd("settings", cmd)
        splits_file = self.pre / "splits_final.json"
        splits = json.loads(splits_file.read_text(encoding="utf-8"))
        if len(splits) != 1 or sorted(splits[0]["train"]) != sorted(self.labeled):
            raise StageError(f"stage 'settings': {splits_file} fold 0 is not the labeled list after "
                             f"adnnunet_make_settings. See {self.logs / 'settings.log'}.")
        # fold 1: the fully supervised upper bound, trained on every label of labeled + unlabeled cases
        splits.append({"train": sorted(self.labeled + self.unlabeled), "val": list(splits[0]["val"])})
        write_json_atomic(splits_file, splits)
        shutil.copy2(splits_file, self.out / "splits_final.json")
        shutil.copy2(self.pre / "ad_settings.json", self.out / "ad_settings.json")
        return {"command": shlex.join(cmd), "splits_final": str(splits_file)}

    def preprocess_unlabeled(self, entry: dict) -> dict:
        cmd = ["adnnunet_preprocess_unlabeled", "-d", self.dataset, "-c", self.configuration,
               "-np", str(self.args.np)]
        return {"command": shlex.join(cmd), "wall_s": self.run_cmd("preprocess_unlabeled", cmd)}

    def dev_folders(self, entry: dict) -> dict:
        """``<out>/dev/{images,labels}``: links to the development cases' raw image and label files."""
        for sub, src, suffix in (("images", "imagesTr", "_0000"), ("labels", "labelsTr", "")):
            folder = self.out / "dev" / sub
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for c in self.dev:
                os.symlink(self.raw / src / f"{c}{suffix}{self.ending}", folder / f"{c}{suffix}{self.ending}")
        return {"cases": self.dev}

    # ---- training ----------------------------------------------------------------------------------------------
    def write_trainers(self) -> Path:
        """The module of the runs' trainer classes, written on every invocation: a rerun may add runs."""
        path = self.out / "trainers" / "bench_trainers.py"
        path.parent.mkdir(exist_ok=True)
        text = trainer_module_source(self.budget, self.methods)
        write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    def warm_start(self, m: Method) -> Callable[[dict], dict]:
        """The epoch-0 checkpoint of run ``m`` from the final model of the run it starts from (adnnunet_warm_start:
        A&D with every decoder computing that model, an nnU-Net run with the model itself)."""
        def run(entry: dict) -> dict:
            source_run = next(s for s in self.methods if s.key == self.starts[m.key])
            source = self.model_folder(source_run) / "checkpoint_final.pth"
            cmd = ["adnnunet_warm_start", "-d", self.dataset, "-c", self.configuration, "-f", str(m.fold),
                   "-i", str(source), "-tr", self.trainer(m), "-p", PLANS, "--overwrite"]
            return {"command": shlex.join(cmd), "wall_s": round(self.run_cmd(self.warm_start_stage(m), cmd), 2)}
        return run

    def train(self, m: Method) -> Callable[[dict], dict]:
        def run(entry: dict) -> dict:
            attempts = entry.setdefault("attempts_s", [])
            cmd = ["nnUNetv2_train", self.dataset, self.configuration, str(m.fold), "-tr",
                   self.trainer(m), "-p", PLANS, "-device", self.args.device]
            # continue an interrupted attempt, or a warm-started run from its epoch-0 checkpoint
            if attempts or m.key in self.starts:
                cmd.append("--c")
            else:
                self._refuse_earlier_checkpoints(m)
            attempts.append(None)  # marks the attempt before it starts
            self.save_state()
            seconds = self.run_cmd(f"train_{m.key}", cmd)
            attempts[-1] = round(seconds, 2)
            final = self.model_folder(m) / "checkpoint_final.pth"
            if not final.is_file():
                raise StageError(f"stage 'train_{m.key}': {final} is missing after training. "
                                 f"See {self.logs / f'train_{m.key}.log'}.")
            facts = self._checkpoint_facts(final)
            planned = self.budget.run_epochs(m.key)
            if facts["epochs_completed"] != planned:  # e.g. a base trainer that sets num_epochs after the variant's
                raise StageError(
                    f"stage 'train_{m.key}': {self.trainer(m)} trained {facts['epochs_completed']} epochs, the budget "
                    f"is {planned}, so the runs would not be compared at the same budget. Fix: set num_epochs (and "
                    f"num_iterations_per_epoch) of a --ad_trainer/--extra_trainers class with make_variant "
                    f"(ad_nnunet/training/variants.py), not in its __init__; then rerun with a new --out.")
            # Attempts killed mid-way have no time (None); only completed attempts are summed.
            return {"command": shlex.join(cmd), "wall_s": round(sum(a for a in attempts if a), 2),
                    "checkpoint": str(final), **facts}
        return run

    def _refuse_earlier_checkpoints(self, m: Method) -> None:
        """A cold run must start in an empty model folder: nnU-Net's fresh training leaves an earlier
        checkpoint_final.pth in place until it ends, and ``--c`` after an interruption loads that file first."""
        from ad_nnunet.checkpoints import checkpoints_in

        folder = self.model_folder(m)
        earlier = checkpoints_in(folder)
        if earlier:
            raise StageError(
                f"stage 'train_{m.key}': {folder} already holds {', '.join(earlier)} from an earlier training of "
                f"{self.trainer(m)} (another --out with the same budget and nnUNet_results). A resumed attempt would "
                f"continue from, or simply keep, that model. Fix: move that folder away (or delete it), or set "
                f"nnUNet_results to another folder; then rerun.")

    @staticmethod
    def _checkpoint_facts(path: Path) -> dict:
        from ad_nnunet.checkpoints import load_checkpoint

        ckpt = load_checkpoint(path)
        log = ckpt.get("logging", {})
        starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        facts = {"epochs_completed": len(ends),
                 "epoch_time_s": round(float(sum(e - s for s, e in zip(starts, ends))), 2)}
        if "ad_state" in ckpt:
            facts["skipped_steps"] = int(ckpt["ad_state"].get("skipped_steps", 0))
        return facts

    # ---- scoring -----------------------------------------------------------------------------------------------
    def predict(self, m: Method, split: str = "test") -> Callable[[dict], dict]:
        return self._predict(m.key, self.trainer(m), m.fold, split)

    def _predict(self, key: str, trainer: str, fold: int, split: str,
                 results: Optional[Path] = None) -> Callable[[dict], dict]:
        """nnUNetv2_predict of the model ``trainer`` / ``fold`` (in ``results`` instead of $nnUNet_results when
        given) on the ``split`` cases, into ``predictions[_dev]/<key>``."""
        images, _, cases, suffix = self.split_folders(split)

        def run(entry: dict) -> dict:
            final = self.out / f"predictions{suffix}" / key
            tmp = self.out / f"predictions{suffix}" / f".{key}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(exist_ok=True)
            cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(tmp), "-d", self.dataset,
                   "-c", self.configuration, "-tr", trainer, "-p", PLANS,
                   "-f", str(fold), "-chk", "checkpoint_final.pth", "-device", self.args.device,
                   "-npp", str(self.args.np), "-nps", str(self.args.np)] + ([] if self.args.tta else ["--disable_tta"])
            stage = f"predict{suffix}_{key}"
            seconds = self.run_cmd(stage, cmd, None if results is None else {"nnUNet_results": str(results)})
            missing = [c for c in cases if not (tmp / f"{c}{self.ending}").is_file()]
            if missing:
                raise StageError(f"stage '{stage}': no prediction for {missing[:5]}. "
                                 f"See {self.logs / f'{stage}.log'}.")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            return {"command": shlex.join(cmd), "wall_s": round(seconds, 2), "folder": str(final)}
        return run

    def evaluate(self, key: str, split: str = "test") -> Callable[[dict], dict]:
        _, labels, _, suffix = self.split_folders(split)

        def run(entry: dict) -> dict:
            from ad_nnunet.evaluation.evaluate import foreground_labels
            from ad_nnunet.evaluation.metrics import evaluate_folders, write_reports

            results = evaluate_folders(self.out / f"predictions{suffix}" / key, labels,
                                       foreground_labels(self.dataset_json, str(self.raw / "dataset.json")),
                                       file_ending=self.ending, domains=self.domains, num_processes=self.args.np,
                                       progress=False)
            paths = write_reports(results, self.out / f"evaluation{suffix}" / key)
            fg = results["summary"]["foreground_mean"]
            return {"n_cases": results["summary"]["n_cases"], "json": str(paths["json"]),
                    "metrics": {k: {"mean": None if math.isnan(v["mean"]) else v["mean"],
                                    "std": None if math.isnan(v["std"]) else v["std"], "n": v["n"]}
                                for k, v in fg.items()}}
        return run

    def export_interpolation(self, a: float) -> Callable[[dict], dict]:
        """A&D's model at interpolation weight ``a`` as a stock nnU-Net model in ``interpolations/<key>``
        (``adnnunet_export --interpolation``: what a user runs to choose another weight)."""
        def run(entry: dict) -> dict:
            ad = self.ad_method
            cmd = ["adnnunet_export", "-d", self.dataset, "-c", self.configuration, "-f", str(ad.fold),
                   "-tr", self.trainer(ad), "-p", PLANS, "-o", str(self.interpolation_root(a)),
                   "--interpolation", f"{a:g}", "--overwrite"]
            return {"command": shlex.join(cmd),
                    "wall_s": round(self.run_cmd(f"export_{interpolation_key(a)}", cmd), 2)}
        return run

    def score_interpolation(self, a: float) -> None:
        """Stages export_, predict_dev_ and evaluate_dev_ad_a<A>: A&D's model at interpolation weight ``a``, exported
        as a stock model, on the development cases."""
        from ad_nnunet.export import STOCK_TRAINER  # imports torch: only with --dev_interpolations

        key = interpolation_key(a)
        self.stage(f"export_{key}", self.export_interpolation(a))
        self.stage(f"predict_dev_{key}", self._predict(key, STOCK_TRAINER, self.ad_method.fold, "dev",
                                                       self.interpolation_root(a)))
        self.stage(f"evaluate_dev_{key}", self.evaluate(key, "dev"))

    @property
    def ad_method(self) -> Method:
        return next(m for m in self.methods if m.key == "ad")

    def interpolation_root(self, a: float) -> Path:
        """The nnUNet_results-like folder of A&D's model exported at interpolation weight ``a``."""
        return self.out / "interpolations" / interpolation_key(a)

    def report(self, entry: dict) -> dict:
        report = build_report(self)
        write_json_atomic(self.out / "report.json", report)
        markdown = render_markdown(report)
        write_atomic(self.out / "report.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
        return {"report": str(self.out / "report.md")}

    def run(self) -> Path:
        self.log(f"benchmark {self.dataset} ({self.configuration}), runs {', '.join(m.key for m in self.methods)}, "
                 f"{self.budget.total_steps} optimizer steps per run, out {self.out}")
        self.stage("plan", self.plan)
        self.stage("preprocess", self.preprocess)
        self.stage("settings", self.settings)
        self.stage("preprocess_unlabeled", self.preprocess_unlabeled)
        self.log(f"trainers: {self.write_trainers()}")
        for m in sorted(self.methods, key=lambda m: m.key in self.starts):  # a warm start needs its source
            if m.key in self.starts:
                self.stage(self.warm_start_stage(m), self.warm_start(m))
            self.stage(f"train_{m.key}", self.train(m))
        for m in self.methods:
            self.stage(f"predict_{m.key}", self.predict(m))
        for m in self.methods:
            self.stage(f"evaluate_{m.key}", self.evaluate(m.key))
        if self.dev:
            self.stage("dev_folders", self.dev_folders)
            for m in self.dev_methods:
                self.stage(f"predict_dev_{m.key}", self.predict(m, "dev"))
                self.stage(f"evaluate_dev_{m.key}", self.evaluate(m.key, "dev"))
            for a in self.dev_interpolations:
                self.score_interpolation(a)
        self.stage("report", self.report)
        self.log(f"report: {self.out / 'report.md'}")
        return self.out / "report.md"
