"""A night of N queens on the embedded instance: today's per-queen overnight runs against the night as one unit.

    .venv/bin/python bench/overnight_scale.py [--queens 20] [--images 4] [--plan-queens 100]

Both designs run the same night of the same demo queens (made from the demo data), each from a
copy of the same prepared references, with the demo backends:
- today: one ``overnight_job`` run per queen (generate → score → publish) on the multiprocess
  executor, each step its own process (on the cluster: its own pod), the scoring models loaded
  in every queen's image_scores step;
- night: one ``overnight_generation_job`` run per queen, one ``night_scores_job`` run (its one
  step process is the cluster's one GPU pod), one ``overnight_publish_job`` run per queen; the
  queen × night jobs run in-process, as they do on the cluster (jobs.jobs_for).
Counted from each run's event log: runs, step processes (steps of multiprocess runs), model loads
(the backends' loaders log ``model loaded:`` once per load), wall time; and both designs'
decisions are compared. Then pods and model loads for ``--plan-queens`` queens from the cluster
Definitions' jobs (their executors and steps' dagster-k8s/config tags). Last line: the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NIGHT = "2026-11-20"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def use_root(root: Path) -> None:
    """Point the settings at ``root`` (before hydra_assets is imported; step processes inherit it)."""
    os.environ.update(
        HYDRA_ROSTER_DIR=str(root / "roster"),
        HYDRA_STORAGE_ROOT=str(root / "storage"),
        HYDRA_CATALOG_URL=f"sqlite:///{root / 'catalog.db'}",
        HYDRA_NIGHTS_START="2026-11-01",
        HYDRA_ENV="local",
    )


# ------------------------------------------------------------------ jobs, reconstructable in step processes


def _local_defs():
    from hydra_assets.definitions import defs

    return defs


def _night_defs():
    """The local resources with the cluster's jobs: queen × night jobs in-process, night_scores_job multiprocess."""
    import dagster as dg

    from hydra_assets.definitions import ASSETS, local_resources
    from jobs import jobs_for

    return dg.Definitions(assets=ASSETS, jobs=jobs_for("cluster"), resources=local_resources())


def today_overnight_job():
    return _local_defs().resolve_job_def("overnight_job")


def night_generation_job():
    return _night_defs().resolve_job_def("overnight_generation_job")


def night_scores_job():
    return _night_defs().resolve_job_def("night_scores_job")


def night_publish_job():
    return _night_defs().resolve_job_def("overnight_publish_job")


# ------------------------------------------------------------------ preparing the queens


def demo_queens(count: int) -> list:
    from hydra_assets.domain.demo_data import DEMO_QUEENS

    queens = []
    for index in range(count):
        demo = DEMO_QUEENS[index % len(DEMO_QUEENS)]
        slug = f"{demo.slug}-{index:02d}"
        queens.append(replace(demo, slug=slug, roster={**demo.roster, "slug": slug, "name": f"{demo.roster['name']} {index}"}))
    return queens


def prepare(root: Path, count: int) -> list[str]:
    """Roster files, references and identities of ``count`` demo queens (not timed)."""
    use_root(root)
    import dagster as dg

    from hydra_assets.definitions import defs
    from hydra_assets.domain.demo_data import write_demo_queen
    from hydra_assets.partitions import QUEENS

    slugs = []
    for queen in demo_queens(count):
        write_demo_queen(queen, root / "roster", root / "storage" / "reference_images")
        slugs.append(queen.slug)
    (root / "prep_home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "prep_home")) as instance:
        instance.add_dynamic_partitions(QUEENS, slugs)
        job = defs.resolve_job_def("queen_reference_job")
        for slug in slugs:
            assert job.execute_in_process(partition_key=slug, instance=instance, run_config=QUIET).success, slug
    shutil.rmtree(root / "prep_home")
    return slugs


# ------------------------------------------------------------------ one design, in its own process


def run_design(design: str, root: Path, slugs: list[str], images: int) -> dict:
    use_root(root)
    import dagster as dg

    from hydra_assets.partitions import QUEENS, queen_night_key
    from resources.scoring import MODEL_LOADED

    budget = {"ops": {"generated_images": {"config": {"per_night_budget": images}}}, **QUIET}
    (root / "home").mkdir()
    counts = {"runs": 0, "failed_runs": 0, "step_processes": 0, "model_loads": 0}
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        instance.add_dynamic_partitions(QUEENS, slugs)

        def execute(job_fn, partition: str, run_config: dict, multiprocess: bool) -> None:
            with dg.execute_job(dg.reconstructable(job_fn), instance, run_config=run_config,
                                tags={"dagster/partition": partition}) as result:
                run_id = result.run_id
                counts["failed_runs"] += not result.success
            counts["runs"] += 1
            for entry in instance.all_logs(run_id):
                event = entry.dagster_event
                if event is not None and event.event_type == dg.DagsterEventType.STEP_START and multiprocess:
                    counts["step_processes"] += 1
                if event is None and MODEL_LOADED in (entry.user_message or ""):
                    counts["model_loads"] += 1

        started = time.perf_counter()
        keys = [str(queen_night_key(slug, NIGHT)) for slug in slugs]
        if design == "today":
            for key in keys:
                execute(today_overnight_job, key, budget, multiprocess=True)
        else:
            for key in keys:
                execute(night_generation_job, key, budget, multiprocess=False)
            execute(night_scores_job, NIGHT, QUIET, multiprocess=True)
            for key in keys:
                execute(night_publish_job, key, QUIET, multiprocess=False)
        counts["wall_s"] = round(time.perf_counter() - started, 1)
    return counts


def decisions(root: Path) -> dict[str, tuple]:
    import pandas as pd

    out = {}
    for path in sorted((root / "storage" / "overnight" / NIGHT / "scores").glob("*.parquet")):
        frame = pd.read_parquet(path)
        for row in frame.to_dict("records"):
            out[row["image_id"]] = (bool(row["approved"]), row["rejection_reason"], round(float(row["composite_score"]), 6)
                                    if row["composite_score"] == row["composite_score"] else None)
    return out


# ------------------------------------------------------------------ the cluster's plan for N queens


def cluster_plan(queens: int) -> dict[str, dict[str, int]]:
    """Pods and scoring-model loads of a night of ``queens`` queens, from the cluster Definitions' jobs.

    A run is one run pod; under k8s_job_executor each step is one more pod, a GPU pod when its
    dagster-k8s/config tag asks for nvidia.com/gpu; in-process steps run in the run pod. A scoring
    model is loaded once per process that scores: every image_scores step today, night_scores once
    in the new design (image_scores then loads none: tests/test_night_scores.py). The automation
    sensor's night_scores run is the implicit asset job on the same k8s executor: same count.
    """
    import dagster as dg
    from dagster_k8s import k8s_job_executor

    from hydra_assets.definitions import build_definitions, cluster_resources
    from hydra_assets.gpu import GPU_RESOURCE, K8S_CONFIG_TAG
    from jobs import OVERNIGHT_ASSETS

    defs = build_definitions(cluster_resources(), env="cluster")
    # today's overnight_job: before this change it ran on the Definitions' executor, one pod per step
    today_defs = dg.Definitions(
        assets=defs.assets, resources=defs.resources, executor=k8s_job_executor,
        jobs=[dg.define_asset_job("overnight_job_before", selection=dg.AssetSelection.assets(*OVERNIGHT_ASSETS))],
    )

    def pods(in_defs: dg.Definitions, job_name: str, runs: int, scoring_steps: set[str],
             gpu_before: frozenset[str] = frozenset()) -> dict[str, int]:
        job = in_defs.resolve_job_def(job_name)
        per_step = job.executor_def is k8s_job_executor
        step_pods = gpu_pods = loads = 0
        for node in job.graph.node_dict.values():
            config = json.loads(node.tags.get(K8S_CONFIG_TAG) or "{}")
            gpu = GPU_RESOURCE in config.get("container_config", {}).get("resources", {}).get("limits", {}) \
                or node.name in gpu_before
            step_pods += per_step
            gpu_pods += per_step and gpu
            loads += node.name in scoring_steps
        return {"runs": runs, "run_pods": runs, "step_pods": runs * step_pods, "gpu_pods": runs * gpu_pods,
                "scoring_model_loads": runs * loads}

    parts = [
        pods(defs, "overnight_generation_job", queens, set()),
        pods(defs, "night_scores_job", 1, {"night_scores"}),
        pods(defs, "overnight_publish_job", queens, set()),
    ]
    return {
        # image_scores carried the quality-scoring GPU profile before this change (main at 89ce4ad)
        "today": pods(today_defs, "overnight_job_before", queens, {"image_scores"}, frozenset({"image_scores"})),
        "night": {k: sum(p[k] for p in parts) for k in parts[0]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queens", type=int, default=20)
    parser.add_argument("--images", type=int, default=4, help="images per queen (generated_images' per-night budget)")
    parser.add_argument("--plan-queens", type=int, default=100)
    parser.add_argument("--design", choices=["today", "night"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.design:  # one design in a fresh process, so its settings and model caches are its own
        slugs = json.loads((args.root / "slugs.json").read_text())
        print(json.dumps(run_design(args.design, args.root, slugs, args.images)))
        return 0

    with tempfile.TemporaryDirectory(prefix="overnight_scale_") as tmp:
        base = Path(tmp) / "base"
        started = time.perf_counter()
        slugs = prepare(base, args.queens)
        print(f"prepared {len(slugs)} demo queens (references, identities) in {time.perf_counter() - started:.0f}s")
        results = {}
        for design in ("today", "night"):
            root = Path(tmp) / design
            shutil.copytree(base, root)
            (root / "slugs.json").write_text(json.dumps(slugs))
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            out = subprocess.run([sys.executable, __file__, "--design", design, "--root", str(root), "--images",
                                  str(args.images)], env=env, capture_output=True, text=True, timeout=3600)
            if out.returncode:
                print(out.stdout[-3000:], out.stderr[-6000:], file=sys.stderr)
                return 1
            results[design] = json.loads(out.stdout.strip().splitlines()[-1])
        same = decisions(Path(tmp) / "today") == decisions(Path(tmp) / "night")

    print(f"\na night of {args.queens} queens x {args.images} images, embedded instance, demo backends")
    print(f"{'':14}{'runs':>6}{'failed':>8}{'step processes':>16}{'model loads':>13}{'wall s':>9}")
    for design, r in results.items():
        print(f"{design:14}{r['runs']:>6}{r['failed_runs']:>8}{r['step_processes']:>16}{r['model_loads']:>13}{r['wall_s']:>9}")
    print(f"same scores and decisions in both designs: {'yes' if same else 'NO'}")

    plan = cluster_plan(args.plan_queens)
    print(f"\ncluster plan for {args.plan_queens} queens (run pods, step pods, GPU step pods, scoring-model loads)")
    for design, p in plan.items():
        print(f"{design:14}runs {p['runs']:>4}  run pods {p['run_pods']:>4}  step pods {p['step_pods']:>4}  "
              f"GPU pods {p['gpu_pods']:>4}  model loads per scoring model {p['scoring_model_loads']:>4}")
    ratio = results["today"]["wall_s"] / max(results["night"]["wall_s"], 1e-9)
    print(f"ratio (today's wall time / night-as-a-unit wall time, {args.queens} queens): {ratio:.2f}")
    return 0 if same and not any(r["failed_runs"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
