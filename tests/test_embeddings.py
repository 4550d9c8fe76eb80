"""The embedding store in qdrant-client's local mode: collections, payloads, idempotence, size
guards, query filters, locking and the `hydra similar` command.

No Qdrant server can be installed here; the server path is qdrant-client's own ``url`` setting
and only its failure (nothing listening) is exercised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from hydra_assets.domain import embeddings as contract
from hydra_assets.domain import quality
from hydra_assets.domain.embeddings import EmbeddingStoreError, ImageRecord, QueenVectorRecord
from resources.embeddings import EmbeddingSession, EmbeddingStore

REPO = Path(__file__).resolve().parents[1]
SEED_IMAGE_PAYLOAD = {
    "image_id", "task_id", "queen_id", "queen_slug", "asset_type", "aesthetic_score", "technical_score",
    "face_match_score", "approved", "prompt", "seed", "file_path", "generated_at",
}
SEED_QUEEN_PAYLOAD = {"queen_id", "queen_slug", "queen_name", "tier", "embedding_type", "source_file", "created_at"}
VISUAL = 16


def store(path: Path, **sizes: int) -> EmbeddingStore:
    return EmbeddingStore(path=str(path), **{"face_size": 8, "style_size": 12, "visual_size": VISUAL, **sizes})


def record(image_id: str, vector, *, queen: str = "nova-sterling", night: str = "2026-11-20", approved: bool = True,
           model: str = "tiny-image-32", **extra) -> ImageRecord:
    return ImageRecord(
        image_id=image_id, queen_slug=queen, night=night, vector=np.asarray(vector, dtype=np.float32),
        embedding_model=model, asset_type="portrait", approved=approved,
        file_path=extra.pop("file_path", f"overnight/{night}/generated/{queen}/{image_id}.png"),
        generated_at=f"{night}T22:05:00+00:00", aesthetic_score=6.5, technical_score=71.0,
        face_match_score=extra.pop("face_match_score", 0.91), prompt="portrait, soft light", seed=42, **extra,
    )


def test_collections_have_the_seed_vectors_sizes_and_cosine(tmp_path):
    with store(tmp_path / "q").session() as session:
        collections = {c.name: c for c in session.client.get_collections().collections}
        assert set(collections) == {"queen_embeddings", "generated_images"}
        queen = session.client.get_collection("queen_embeddings").config.params.vectors
        images = session.client.get_collection("generated_images").config.params.vectors
    assert {name: (p.size, p.distance.value) for name, p in queen.items()} == {
        "face": (8, "Cosine"), "style": (12, "Cosine"), "description": (1024, "Cosine")
    }
    assert {name: (p.size, p.distance.value) for name, p in images.items()} == {"visual": (VISUAL, "Cosine")}
    assert contract.IMAGE_PAYLOAD_INDEXES == {
        "queen_slug": "keyword", "asset_type": "keyword", "approved": "bool", "aesthetic_score": "float"
    }


def test_profiles_size_the_store_for_their_backends(tmp_path):
    from hydra_assets.definitions import cluster_resources, local_resources
    from hydra_assets.settings import load_settings
    from resources.scoring import ImageStatsAestheticProxy

    local = local_resources(load_settings({"HYDRA_STORAGE_ROOT": str(tmp_path)}))["embeddings"]
    cluster = cluster_resources()["embeddings"]
    assert Path(local.path) == tmp_path / "qdrant" and local.url is None
    _, embedding = ImageStatsAestheticProxy().score_and_embed([np.full((64, 64, 3), 128, np.uint8)])
    assert (local.visual_size, local.style_size, local.face_size) == (embedding.shape[1], embedding.shape[1], 128)
    assert (cluster.visual_size, cluster.style_size, cluster.face_size) == (768, 768, 512)


def test_payloads_carry_every_seed_field(tmp_path):
    rng = np.random.default_rng(0)
    with store(tmp_path / "q").session() as session:
        session.upsert_images([record("nova-sterling-2026-11-20-portrait-000", rng.standard_normal(VISUAL), task_id="t-7")])
        session.upsert_queen_vectors([
            QueenVectorRecord("nova-sterling", "reference", "ref_01.png", {"face": rng.standard_normal(8)},
                              "2026-11-20T10:00:00+00:00", queen_name="Nova Sterling", tier="A"),
        ])
        image = session.image("nova-sterling-2026-11-20-portrait-000")
        points, _ = session.client.scroll("queen_embeddings", with_vectors=True)
    assert SEED_IMAGE_PAYLOAD <= set(image.payload)
    assert image.payload["task_id"] == "t-7" and image.payload["approved"] is True and image.payload["seed"] == 42
    assert image.payload["night_key"] == 20261120 and image.payload["embedding_model"] == "tiny-image-32"
    assert set(points[0].payload) == SEED_QUEEN_PAYLOAD
    assert points[0].payload["embedding_type"] == "reference" and set(points[0].vector) == {"face"}
    assert str(points[0].id) == contract.queen_point_id("nova-sterling", "reference", "ref_01.png")


def test_missing_scores_are_stored_as_null_not_nan(tmp_path):
    with store(tmp_path / "q").session() as session:
        session.upsert_images([record("a-000", np.ones(VISUAL), face_match_score=float("nan"))])
        assert session.image("a-000").payload["face_match_score"] is None


def test_upsert_is_idempotent_and_replaces_the_image(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, VISUAL))
    with store(tmp_path / "q").session() as session:
        session.upsert_images(record(f"a-{i:03d}", v) for i, v in enumerate(vectors))
        session.upsert_images(record(f"a-{i:03d}", v) for i, v in enumerate(vectors))
        session.upsert_images([record("a-002", vectors[2], approved=False)])
        assert session.count("generated_images") == 5
        assert session.count("generated_images", approved=False) == 1
    with store(tmp_path / "q").session() as session:  # persisted across sessions
        assert session.count("generated_images") == 5
    assert contract.image_point_id("a-001") == contract.image_point_id("a-001") != contract.image_point_id("a-002")


def test_a_collection_of_another_size_is_refused_and_kept(tmp_path):
    with store(tmp_path / "q").session() as session:
        session.upsert_images([record("a-000", np.ones(VISUAL))])
    with pytest.raises(EmbeddingStoreError) as error:
        with store(tmp_path / "q", visual_size=768).session():
            pass
    message = str(error.value)
    assert "'generated_images'" in message and "size 16" in message and "makes 768" in message
    assert "re-index" in message and "new location" in message
    with store(tmp_path / "q").session() as session:
        assert session.count("generated_images") == 1


def test_a_wrong_sized_vector_is_refused_before_anything_is_written(tmp_path):
    with store(tmp_path / "q").session() as session:
        with pytest.raises(EmbeddingStoreError, match="generated_images/a-001: vector has 15 values, the collection takes 16"):
            session.upsert_images([record("a-000", np.ones(VISUAL)), record("a-001", np.ones(VISUAL - 1))])
        with pytest.raises(EmbeddingStoreError, match="finite and not all zero"):
            session.upsert_images([record("a-002", np.zeros(VISUAL))])
        assert session.count("generated_images") == 0


def test_similar_images_filter_queen_approval_night_and_space(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(60):
        rows.append(dict(
            image_id=f"img-{i:03d}", vector=rng.standard_normal(VISUAL), queen=["nova-sterling", "ivy-marlowe"][i % 2],
            night=["2026-11-18", "2026-11-19", "2026-11-20"][i % 3], approved=i % 5 != 0,
            model="tiny-image-32" if i % 7 else "other-space",
        ))
    query = rng.standard_normal(VISUAL)
    with store(tmp_path / "q").session() as session:
        session.upsert_images(record(**r) for r in rows)
        hits = session.similar_images(query, "nova-sterling", limit=100, approved_only=True, before_night="2026-11-20",
                                      embedding_model="tiny-image-32")
        other_nights = session.similar_images(query, "nova-sterling", limit=100, exclude_night="2026-11-19",
                                              exclude_ids=["img-000"])
        top3 = session.similar_images(query, "nova-sterling", limit=3)

    def cosine(v):
        return float(np.dot(v, query) / np.linalg.norm(v) / np.linalg.norm(query))

    wanted = [r for r in rows if r["queen"] == "nova-sterling" and r["approved"] and r["night"] < "2026-11-20"
              and r["model"] == "tiny-image-32"]
    assert [h.image_id for h in hits] == [r["image_id"] for r in sorted(wanted, key=lambda r: -cosine(r["vector"]))]
    assert [h.score for h in hits] == pytest.approx([cosine(r["vector"]) for r in sorted(wanted, key=lambda r: -cosine(r["vector"]))], abs=1e-5)
    assert {h.image_id for h in other_nights} == {
        r["image_id"] for r in rows if r["queen"] == "nova-sterling" and r["night"] != "2026-11-19" and r["image_id"] != "img-000"
    }
    nova = sorted((r for r in rows if r["queen"] == "nova-sterling"), key=lambda r: -cosine(r["vector"]))
    assert [h.image_id for h in top3] == [r["image_id"] for r in nova[:3]]


def test_prior_approved_from_the_store_gives_the_gate_the_same_decisions(tmp_path):
    """The gate's near-duplicate decisions with the store's nearest hits equal those with every prior vector."""
    rng = np.random.default_rng(3)
    prior = rng.standard_normal((40, VISUAL))
    prior_nights = [["2026-11-17", "2026-11-18", "2026-11-20"][i % 3] for i in range(40)]
    prior_approved = [i % 4 != 0 for i in range(40)]
    tonight = rng.standard_normal((12, VISUAL))
    tonight[:6] = prior[[1, 2, 3, 4, 5, 6]] + 0.05 * rng.standard_normal((6, VISUAL))  # re-renders of earlier images
    tonight[6] = tonight[7] + 0.01  # a duplicate within the night
    with store(tmp_path / "q").session() as session:
        session.upsert_images(
            record(f"old-{i:03d}", v, night=n, approved=a) for i, (v, n, a) in enumerate(zip(prior, prior_nights, prior_approved))
        )
        session.upsert_images([record("other-queen", prior[1], queen="ivy-marlowe", night="2026-11-17")])
        from_store, store_ids = session.nearest_prior_approved(tonight, "nova-sterling", "2026-11-20", "tiny-image-32")
        # the server strategy (one batched filtered query), run against the same local collection
        as_server = EmbeddingSession(session.client, session.sizes, session.location, local=False)
        from_query, query_ids = as_server.nearest_prior_approved(tonight, "nova-sterling", "2026-11-20", "tiny-image-32")
    earlier = [i for i in range(40) if prior_approved[i] and prior_nights[i] < "2026-11-20"]
    ids = [f"new-{i:03d}" for i in range(12)]
    ranking = list(rng.uniform(1, 10, 12))
    candidates = [True] * 12

    def matches(prior_embeddings, prior_ids):
        found = quality.mark_near_duplicates(tonight, ranking, candidates, ids, 0.95, prior_embeddings, prior_ids)
        return [(m.index, m.of, round(m.cosine, 5)) for m in found]

    expected = matches(prior[earlier], [f"old-{i:03d}" for i in earlier])
    assert len(expected) >= 4  # the test plants real duplicates
    assert matches(from_store, store_ids) == expected
    assert matches(from_query, query_ids) == expected
    assert query_ids == store_ids
    assert set(store_ids) <= {f"old-{i:03d}" for i in earlier}


def test_nested_sessions_in_one_process_share_the_client(tmp_path):
    s = store(tmp_path / "q")
    with s.session() as outer, s.session() as inner:
        assert outer.client is inner.client
        inner.upsert_images([record("a-000", np.ones(VISUAL))])
    with s.session() as again:
        assert again.count("generated_images") == 1


def test_a_folder_held_by_another_client_fails_in_bounded_time(tmp_path):
    folder = tmp_path / "q"
    holder = QdrantClient(path=str(folder))
    try:
        started = time.monotonic()
        with pytest.raises(EmbeddingStoreError, match=f"{folder}.*held by another Qdrant client"):
            with store(folder, lock_timeout_s=0.5).session():
                pass
        assert time.monotonic() - started < 5
    finally:
        holder.close()
    with store(folder).session() as session:  # freed once the holder closes
        assert session.count("generated_images") == 0


WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from resources.embeddings import EmbeddingSession, EmbeddingStore
    from hydra_assets.domain.embeddings import ImageRecord
    folder, name = sys.argv[1], sys.argv[2]
    store = EmbeddingStore(path=folder, face_size=8, style_size=12, visual_size=16, lock_timeout_s=60)
    for round in range(3):
        with store.session() as session:
            session.upsert_images(
                ImageRecord(image_id=f"{name}-{round}-{i}", queen_slug="q", night="2026-11-20",
                            vector=np.random.default_rng(i).standard_normal(16), embedding_model="m",
                            asset_type="portrait", approved=True, file_path="/x.png", generated_at="t")
                for i in range(4)
            )
            time.sleep(0.2)
    """
)


@pytest.mark.slow
def test_processes_take_turns_on_the_local_folder(tmp_path):
    """The embedded profile's step subprocesses: local mode allows one client per folder, so they queue."""
    folder = tmp_path / "q"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), name], env=env, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b", "c")]
    errors = [w.communicate(timeout=240)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], errors
    with store(folder).session() as session:
        assert session.count("generated_images") == 36


def test_an_unreachable_server_is_named_within_the_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(EmbeddingStoreError, match=f"embedding store {url}: checking collection queen_embeddings failed"):
        with EmbeddingStore(url=url, face_size=8, style_size=12, visual_size=16, timeout_s=2).session():
            pass
    assert time.monotonic() - started < 10


def run_cli(tmp_path: Path, *args: str, command: str = "similar") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"),
           "HYDRA_ROSTER_DIR": str(tmp_path / "roster"), "HYDRA_ENV": "local", "DAGSTER_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "hydra_assets.cli", command, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_hydra_similar_lists_the_queens_nearest_images(tmp_path):
    size = contract.TINY_IMAGE_SIZE
    base = np.random.default_rng(4).standard_normal(size)
    offsets = np.random.default_rng(5).standard_normal((4, size))
    local = EmbeddingStore(path=str(tmp_path / "storage" / "qdrant"), face_size=128, style_size=size, visual_size=size)
    with local.session() as session:
        session.upsert_images([
            record("nova-000", base, model="tiny-image-32"),
            *(record(f"nova-{i:03d}", base + (0.2 * i) * offsets[i], night="2026-11-19", model="tiny-image-32",
                     approved=i != 2) for i in (1, 2, 3)),
            record("ivy-000", base, queen="ivy-marlowe", model="tiny-image-32"),
        ])
    result = run_cli(tmp_path, "nova-000", "--limit", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("nova-000 (nova-sterling, 2026-11-20, approved): 3 nearest")
    assert [line.split()[1] for line in lines[3:]] == ["nova-001", "nova-002", "nova-003"]
    only_approved = run_cli(tmp_path, "nova-000", "--approved")
    assert [line.split()[1] for line in only_approved.stdout.splitlines()[3:]] == ["nova-001", "nova-003"]
    unknown = run_cli(tmp_path, "/storage/nova-000.png", "--approved")  # not a file here: taken as an id
    assert unknown.returncode == 1 and "/storage/nova-000.png is not in the embedding store" in unknown.stderr
    image_file = tmp_path / "storage" / "overnight" / "2026-11-20" / "generated" / "nova-sterling" / "renamed.png"
    image_file.parent.mkdir(parents=True)
    image_file.write_bytes(b"png")
    with local.session() as session:
        session.upsert_images([record("nova-004", base + offsets[0], night="2026-11-18", file_path=(
            "overnight/2026-11-20/generated/nova-sterling/renamed.png"))])
    by_file = run_cli(tmp_path, str(image_file), "--limit", "1")
    assert by_file.returncode == 0 and by_file.stdout.startswith("nova-004 (nova-sterling, 2026-11-18"), by_file.stderr


def test_score_rows_become_records_with_the_seed_payload():
    rows = [
        {"image_id": "nova-sterling-2026-11-20-portrait-000", "queen": "nova-sterling", "night": "2026-11-20",
         "asset_type": "portrait", "file_path": "overnight/2026-11-20/generated/nova-sterling/a.png",
         "aesthetic_score": 7.1, "technical_score": float("nan"), "face_match_score": 0.8, "approved": np.bool_(True),
         "prompt_used": "portrait", "seed": np.int64(7), "generated_at": "2026-11-20T22:01:00+00:00",
         "generation_params": '{"task_id": "42", "prompt": "portrait"}', "embedding_model": "tiny-image-32",
         "embedding": np.ones(4, np.float32)},
        {"image_id": "unreadable", "queen": "nova-sterling", "night": "2026-11-20", "embedding": None},
    ]
    (only,) = contract.image_records(rows)
    payload = only.payload()
    assert payload["task_id"] == "42" and payload["seed"] == 7 and payload["technical_score"] is None
    assert payload["approved"] is True and payload["night_key"] == 20261120 and payload["prompt"] == "portrait"


def test_replacing_references_leaves_no_stale_point_and_keeps_other_kinds(tmp_path):
    rng = np.random.default_rng(6)

    def ref(name):
        return QueenVectorRecord("nova-sterling", "reference", name, {"face": rng.standard_normal(8)}, "2026-11-20T10:00:00Z")

    style = QueenVectorRecord("nova-sterling", "generated", "nova-000", {"style": rng.standard_normal(12)}, "2026-11-20T23:00:00Z")
    other = QueenVectorRecord("ivy-marlowe", "reference", "a.png", {"face": rng.standard_normal(8)}, "2026-11-20T10:00:00Z")
    with store(tmp_path / "q").session() as session:
        session.upsert_queen_vectors([style, other])
        session.replace_queen_vectors("nova-sterling", "reference", [ref("a.png"), ref("b.png"), ref("c.png")])
        session.replace_queen_vectors("nova-sterling", "reference", [ref("a.png"), ref("c.png")])
        assert session.count("queen_embeddings", queen_slug="nova-sterling", embedding_type="reference") == 2
        assert session.count("queen_embeddings", embedding_type="generated") == 1
        assert session.count("queen_embeddings", queen_slug="ivy-marlowe") == 1
        session.delete_queen_vectors([style.point_id(), contract.queen_point_id("nova-sterling", "generated", "never-stored")])
        assert session.count("queen_embeddings", embedding_type="generated") == 0
        with pytest.raises(ValueError, match="not reference vectors of nova-sterling"):
            session.replace_queen_vectors("nova-sterling", "reference", [other])


def test_reindex_fills_the_store_from_the_score_tables_and_reports_a_bad_one(tmp_path):
    import pandas as pd

    from hydra_assets.domain.storage import StorageLayout
    from hydra_assets.embedding_index import index_score_tables

    layout = StorageLayout(tmp_path / "storage")
    rows = [
        {"image_id": f"nova-{i}", "queen": "nova-sterling", "night": "2026-11-19", "asset_type": "portrait",
         "file_path": f"overnight/2026-11-19/generated/nova-sterling/{i}.png", "approved": i != 1,
         "embedding_model": "tiny-image-32", "embedding": np.full(VISUAL if i != 2 else 4, i + 1.0, np.float32)}
        for i in range(3)
    ]
    layout.scores_path("2026-11-19", "nova-sterling").parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(layout.scores_path("2026-11-19", "nova-sterling"))
    broken = layout.scores_path("2026-11-20", "nova-sterling")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not parquet")
    with store(tmp_path / "q").session() as session:
        report = index_score_tables(layout, session)
        again = index_score_tables(layout, session)
        assert session.count("generated_images") == 2 and session.count("generated_images", approved=False) == 1
    assert (report.tables, report.images, report.skipped) == (1, 2, 1) == (again.tables, again.images, again.skipped)
    assert len(report.problems) == 1 and str(broken) in report.problems[0]
    broken.unlink()
    # the local profile's store ({storage}/qdrant) takes 1024-d vectors: these 16-d ones are skipped, not written
    fresh = run_cli(tmp_path, command="reindex-embeddings")
    assert fresh.returncode == 0, fresh.stderr
    assert "0 images from 1 score tables" in fresh.stdout and "3 without a usable vector skipped" in fresh.stdout
