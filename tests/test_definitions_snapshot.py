"""A snapshot of what the UI shows of the one Definitions: keys, partitions, checks, jobs, automation.

An accidental rename of an asset, a check or a job, a lost partition, a check that stops being
blocking or an automation condition that disappears fails here. An intended change updates
EXPECTED in the same commit, so the diff shows it.
"""

from __future__ import annotations

import dagster as dg

from tests.helpers import hydra_definitions

EXPECTED = {
    "assets": {
        "approved_images": {
            "automation": None,
            "deps": ["image_scores"],
            "freshness": None,
            "group": "quality",
            "kinds": ["png"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "chapter_bundle": {
            "automation": None,
            "deps": ["chapter_dialogue", "chapter_script", "scene_images"],
            "freshness": None,
            "group": "chapters",
            "kinds": ["json", "png", "wav"],
            "partitions": "dynamic:chapters"
        },
        "chapter_dialogue": {
            "automation": None,
            "deps": ["chapter_script"],
            "freshness": None,
            "group": "chapters",
            "kinds": ["soundfile", "wav"],
            "partitions": "dynamic:chapters"
        },
        "chapter_index": {
            "automation": None,
            "deps": [],
            "freshness": None,
            "group": "chapters",
            "kinds": ["markdown"],
            "partitions": None
        },
        "chapter_script": {
            "automation": None,
            "deps": [],
            "freshness": None,
            "group": "chapters",
            "kinds": ["json", "markdown"],
            "partitions": "dynamic:chapters"
        },
        "scene_images": {
            "automation": None,
            "deps": ["chapter_script"],
            "freshness": None,
            "group": "chapters",
            "kinds": ["png"],
            "partitions": "dynamic:chapters"
        },
        "generated_images": {
            "automation": None,
            "deps": ["queen_lora by queen", "queen_profile by queen"],
            "freshness": None,
            "group": "generation",
            "kinds": ["png"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "image_scores": {
            "automation": None,
            "deps": ["generated_images", "night_scores by night", "reference_identity by queen"],
            "freshness": None,
            "group": "quality",
            "kinds": ["parquet", "pytorch"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "night_scores": {
            "automation": "one scoring step per night once its queens are generated",
            "deps": ["generated_images by night"],
            "freshness": None,
            "group": "quality",
            "kinds": ["parquet", "pytorch"],
            "partitions": "daily(end_offset=1)"
        },
        "quality_report": {
            "automation": "one report per night once its queens are done",
            "deps": ["approved_images by night"],
            "freshness": "CronFreshnessPolicy",
            "group": "quality",
            "kinds": ["markdown"],
            "partitions": "daily(end_offset=1)"
        },
        "queen_lora": {
            "automation": None,
            "deps": ["reference_identity", "reference_images"],
            "freshness": None,
            "group": "lora",
            "kinds": ["pytorch", "safetensors"],
            "partitions": "dynamic:queens"
        },
        "queen_profile": {
            "automation": None,
            "deps": [],
            "freshness": None,
            "group": "roster",
            "kinds": ["json", "yaml"],
            "partitions": "dynamic:queens"
        },
        "reference_identity": {
            "automation": None,
            "deps": ["reference_images"],
            "freshness": None,
            "group": "references",
            "kinds": ["numpy"],
            "partitions": "dynamic:queens"
        },
        "reference_images": {
            "automation": None,
            "deps": ["queen_profile"],
            "freshness": None,
            "group": "references",
            "kinds": ["pillow", "png"],
            "partitions": "dynamic:queens"
        },
        "roster_index": {
            "automation": None,
            "deps": [],
            "freshness": None,
            "group": "roster",
            "kinds": ["yaml"],
            "partitions": None
        },
        "voice_lines": {
            "automation": None,
            "deps": ["queen_profile"],
            "freshness": None,
            "group": "voice",
            "kinds": ["soundfile", "wav"],
            "partitions": "dynamic:queens"
        }
    },
    "checks": {
        "approved_images:approval_rate_at_least_half": {
            "blocking": False
        },
        "chapter_script:script_valid": {
            "blocking": False
        },
        "scene_images:every_scene_has_image": {
            "blocking": False
        },
        "generated_images:all_planned_images_generated": {
            "blocking": False
        },
        "night_scores:every_queen_scored": {
            "blocking": False
        },
        "image_scores:every_image_scored_once": {
            "blocking": True
        },
        "image_scores:scores_in_range": {
            "blocking": True
        },
        "reference_identity:enough_reference_faces": {
            "blocking": True
        },
        "voice_lines:audio_not_empty": {
            "blocking": False
        },
        "voice_lines:audio_not_silent": {
            "blocking": False
        },
        "voice_lines:dialogue_valid": {
            "blocking": False
        },
        "voice_lines:duration_plausible": {
            "blocking": False
        },
        "voice_lines:loudness_on_target": {
            "blocking": False
        },
        "voice_lines:every_line_has_audio": {
            "blocking": False
        }
    },
    "jobs": {
        "chapter_job": {
            "assets": ["chapter_bundle", "chapter_dialogue", "chapter_script", "scene_images"],
            "partitions": "dynamic:chapters"
        },
        "night_scores_job": {
            "assets": ["night_scores"],
            "partitions": "daily(end_offset=1)"
        },
        "overnight_generation_job": {
            "assets": ["generated_images"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "overnight_job": {
            "assets": ["approved_images", "generated_images", "image_scores"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "overnight_publish_job": {
            "assets": ["approved_images", "image_scores"],
            "partitions": "night=daily(end_offset=1)|queen=dynamic:queens"
        },
        "quality_report_job": {
            "assets": ["quality_report"],
            "partitions": "daily(end_offset=1)"
        },
        "queen_lora_job": {
            "assets": ["queen_lora"],
            "partitions": "dynamic:queens"
        },
        "queen_reference_job": {
            "assets": ["queen_profile", "reference_identity", "reference_images"],
            "partitions": "dynamic:queens"
        },
        "queen_voice_job": {
            "assets": ["voice_lines"],
            "partitions": "dynamic:queens"
        }
    },
    "schedules": {
        "overnight_schedule": {
            "cron": "0 22 * * *",
            "job": "overnight_generation_job",
            "status": "RUNNING"
        }
    },
    "sensors": {
        "roster_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        },
        "lora_ready_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        },
        "quality_report_automation_sensor": {
            "kind": "AutomationConditionSensorDefinition",
            "status": "RUNNING",
            "target": ["night_scores", "quality_report"]
        },
        "night_publish_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        },
        "low_approval_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        },
        "chapters_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        },
        "run_failure_sensor": {
            "kind": "RunStatusSensorDefinition",
            "status": "RUNNING"
        },
        "generation_task_sensor": {
            "kind": "SensorDefinition",
            "status": "RUNNING"
        }
    }
}


def partitions_name(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return "|".join(f"{d.name}={partitions_name(d.partitions_def)}" for d in partitions_def.partitions_defs)
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic:{partitions_def.name}"
    if isinstance(partitions_def, dg.DailyPartitionsDefinition):
        return f"daily(end_offset={partitions_def.end_offset})"
    return type(partitions_def).__name__


def snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        condition = node.automation_condition
        mappings = node.partition_mappings
        assets[key.to_user_string()] = {
            "automation": condition.get_label() if condition is not None else None,
            "deps": sorted(
                k.to_user_string() + (f" by {mappings[k].partition_dimension_name}" if k in mappings else "")
                for k in node.parent_keys
            ),
            "freshness": type(node.freshness_policy).__name__ if node.freshness_policy else None,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": partitions_name(node.partitions_def),
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{check_key.asset_key.to_user_string()}:{check_key.name}"] = {"blocking": spec.blocking}
    jobs = {}
    for job in sorted(defs.jobs or [], key=lambda j: j.name):
        resolved = defs.resolve_job_def(job.name)
        jobs[job.name] = {
            "assets": sorted(node.name for node in resolved.graph.node_dict.values()),
            "partitions": partitions_name(resolved.partitions_def),
        }
    schedules = {
        s.name: {"cron": s.cron_schedule, "job": s.job_name, "status": s.default_status.value}
        for s in (defs.schedules or [])
    }
    sensors = {}
    for sensor in defs.sensors or []:
        sensors[sensor.name] = {"kind": type(sensor).__name__, "status": sensor.default_status.value}
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            sensors[sensor.name]["target"] = sorted(
                k.to_user_string() for k in sensor.asset_selection.resolve(graph)
            )
    return {"assets": assets, "checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_definitions_match_the_snapshot(tmp_path):
    got = snapshot(hydra_definitions(tmp_path))
    for section, expected in EXPECTED.items():
        assert got[section] == expected, section


def test_on_the_cluster_every_schedule_and_sensor_starts_stopped():
    from hydra_assets.definitions import build_definitions, cluster_resources

    got = snapshot(build_definitions(cluster_resources(), env="cluster"))
    assert {v["status"] for v in [*got["schedules"].values(), *got["sensors"].values()]} == {"STOPPED"}
    local = {k: {**v, "status": "STOPPED"} for k, v in EXPECTED["sensors"].items()}
    assert got["sensors"] == local and got["assets"] == EXPECTED["assets"] and got["jobs"] == EXPECTED["jobs"]
