"""Stages that survive an interrupted run: each is recorded in ``<out>/state.json`` when complete, and a rerun with
the same arguments skips the completed ones; every subprocess appends to ``<out>/logs/<stage>.log``.

state.json (``format`` 1): ``config`` (what determines the results; a rerun must match it), ``invocations`` (every
command that ran in this folder), ``methods`` (the runs of the latest invocation, and the models it scores besides
them: ``ad_a<A>`` of --dev_interpolations) and ``stages`` (``{name: {status:
pending|started|done, seconds, ...what the stage returned}}``).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ad_nnunet.benchmark.budget import METHOD_KEYS
from ad_nnunet.benchmark.provenance import git_commit
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import write_json_atomic

STATE_FORMAT = 1


class StageError(RuntimeError):
    """A stage failed; the message names the stage and its log file."""


def format_duration(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StageRunner:
    """``stage(name, fn)`` runs ``fn`` once per output folder; ``run_cmd`` runs a command with its log."""

    def __init__(self, out: Path, command: str, config: dict, methods: List[str]):
        self.t0 = time.time()
        self.command = command
        self.out = Path(out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "state.json"
        self.state = self._load_state(config, methods)

    def _load_state(self, config: dict, methods: List[str]) -> dict:
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("format") != STATE_FORMAT:
                raise ADInputError(f"{self.state_path} has format {state.get('format')!r}, expected {STATE_FORMAT}. "
                                   f"Fix: use a new --out.")
            differs = sorted(k for k, v in config.items() if state["config"].get(k) != v)
            if differs:
                raise ADInputError(f"{self.out} holds a benchmark with other settings ({', '.join(differs)} differ). "
                                   f"Fix: use a new --out, or rerun with the original arguments to resume.")
            state["invocations"].append(self.command)
            previous = state.get("methods", list(METHOD_KEYS))  # states without "methods" ran all three
            if previous != methods:
                # Stages are keyed by method, so an added method's stages simply run and a dropped one's results
                # stay unused; only the report depends on the selection, so it is rebuilt.
                self.log(f"methods {previous} -> {methods}: the report will be rebuilt")
                state["stages"].pop("report", None)
        else:
            state = {"format": STATE_FORMAT, "config": config, "invocations": [self.command], "stages": {}}
        state["methods"] = methods
        write_json_atomic(self.state_path, state)
        return state

    def save_state(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def log(self, msg: str) -> None:
        print(f"[{format_duration(time.time() - self.t0)}] {msg}", flush=True)

    def env(self, stage: str = "") -> Dict[str, str]:
        """The environment of ``stage``'s subprocesses."""
        return dict(os.environ)

    def run_cmd(self, stage: str, cmd: List[str], env: Optional[Dict[str, str]] = None) -> float:
        """Run ``cmd`` with its output appended to logs/<stage>.log (``env``: variables to set on top of the stage's
        environment); return its wall time. Raises StageError."""
        from ad_nnunet import console_command

        exe = shutil.which(console_command(cmd[0]))
        if exe is None:
            raise StageError(f"stage '{stage}': command {cmd[0]} not found on PATH. Fix: install nnunetv2 and "
                             f"ad-nnunet (pip install -e .) in this environment.")
        log_path = self.logs / f"{stage}.log"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
            log.flush()
            t = time.time()
            rc = subprocess.run([exe] + cmd[1:], stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env(stage), **(env or {})}).returncode
            seconds = time.time() - t
        if rc != 0:
            tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
            raise StageError(f"stage '{stage}' failed: {shlex.join(cmd)} exited with {rc}. Full log: {log_path}\n"
                             f"--- last lines ---\n{tail}")
        return seconds

    def stage(self, name: str, fn: Callable[[dict], Optional[dict]]) -> dict:
        """Run ``fn(entry)`` unless ``name`` is complete in state.json; ``entry`` persists across attempts and lists
        the commits of the code each attempt ran (``commits``)."""
        entry = self.state["stages"].setdefault(name, {"status": "pending"})
        if entry["status"] == "done":
            self.log(f"{name}: already complete, skipped")
            return entry
        resumed = entry["status"] == "started"
        entry["status"] = "started"
        commit = git_commit()
        if commit not in entry.setdefault("commits", []):
            entry["commits"].append(commit)
        self.save_state()
        self.log(f"{name}: {'resuming' if resumed else 'started'}")
        t = time.time()
        try:
            result = fn(entry) or {}
        except ADInputError as e:
            raise StageError(f"stage '{name}' failed: {e}") from None
        entry.update(result)
        entry["status"] = "done"
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.time() - t, 2)
        self.save_state()
        self.log(f"{name}: done in {time.time() - t:.1f} s")
        return entry
