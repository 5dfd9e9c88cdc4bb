"""The shipped ONNX models (no training library needed) and the saga's fraud port around them."""

import asyncio
import json
import shutil

import numpy as np
import pytest

from cluster.adapters.order_ports import FraudAdapter
from cluster.seed import demo_products
from serve.models import cli
from serve.models.evaluation import pr_auc, roc_auc
from serve.models.scoring import FraudModel, RecommenderModel, compose

NOW_S = 1_764_000_000 + 15 * 3600  # 12:00 local


@pytest.fixture(scope="module")
def fraud():
    return FraudModel()


@pytest.fixture(scope="module")
def rec():
    return RecommenderModel()


def facts(**kw):
    base = {
        "total": 12_990 + 2_500,
        "units": 1,
        "max_units_one_sku": 1,
        "n_lines": 1,
        "country": "BR",
        "account_age_s": 30,
        "orders_last_hour": 0,
        "tokens_30d": 0,
        "hour": 15,
        "express": 0,
        "resale_units": 0,
    }
    return {**base, **kw}


def test_metrics_match_hand_computed_values():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert pr_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert pr_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx((1 + 2 / 3) / 2)


def test_held_out_metrics_meet_the_targets(capsys):
    """`agora models evaluate --json`: the shipped models on shoppers training never saw."""
    assert cli.main(["evaluate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fraud"]["roc_auc"] >= 0.95
    assert report["fraud"]["pr_auc"] >= 0.6
    rec = report["recommender"]
    assert rec["recall_at_10"] >= 1.5 * rec["popularity_recall_at_10"] > 0


def test_the_risky_order_is_blocked_and_a_normal_one_passes(fraud):
    top = max(p["price_minor"] for p in demo_products(2400))
    for hour in range(24):
        risky, normal = fraud.score(
            [
                facts(
                    total=40 * top,
                    units=40,
                    max_units_one_sku=40,
                    country="US",
                    express=1,
                    resale_units=40,  # the most expensive product is electronics
                    hour=hour,
                ),
                facts(hour=hour),
            ]
        )
        assert risky.decision in ("review", "block") and risky.score > 0.5
        assert normal.decision == "pass"
    card = fraud.card
    assert 0 < card["thresholds"]["review"] <= card["thresholds"]["block"] < 1


def test_recommendations_never_include_excluded_items_and_anonymous_gets_popular(rec):
    popular = rec.recommend([{}], [[]], 10)[0]
    assert len(popular) == 10 == len(set(popular))
    again = rec.recommend([{}], [popular[:3]], 10)[0]
    assert not set(again) & set(popular[:3]) and again[:7] == popular[3:10]
    cart = [popular[0], rec.skus[100]]
    mine = rec.recommend([compose({rec.skus[5]: 3.0}, cart)], [cart], 20)[0]
    assert len(mine) == 20 and not set(mine) & set(cart)
    assert mine != popular[:20]  # the history changes the answer


def test_similar_items_share_sessions(rec):
    sku = rec.skus[0]
    similar = rec.recommend([{sku: 1.0}], [[sku]], 10)[0]
    assert sku not in similar and len(similar) == 10
    # the graph's own TopK: ask for the whole catalog minus one
    everything = rec.recommend([{sku: 1.0}], [[sku]], len(rec.skus))[0]
    assert len(everything) == len(rec.skus) - 1


class _Conn:
    async def fetchrow(self, sql, *args):
        return {"created": NOW_S - 30, "hour": 0, "tokens": 0, "resale": 0}


class _Pool:
    def acquire(self):
        class _Ctx:
            async def __aenter__(self):
                return _Conn()

            async def __aexit__(self, *exc):
                return False

        return _Ctx()


async def _open_pool():
    return _Pool()


def adapter(model, budget_ms=30):
    return FraudAdapter(_open_pool, lambda: NOW_S * 1000, 50, 80, model=model, budget_ms=budget_ms)


async def test_the_port_uses_the_model_when_it_answers_in_time(fraud):
    async def model(raw):
        v = fraud.score([raw])[0]
        return {"score": v.score, "decision": v.decision, "version": fraud.version}

    a = adapter(model)
    top = max(p["price_minor"] for p in demo_products(2400))
    risky = await a.screen("o1", "u1", 40 * top, (40,), "US")
    assert risky.decision == "block" and risky.reasons[0] == f"model:{fraud.version}"
    normal = await a.screen("o2", "u1", 15_490, (1,), "BR")
    assert normal.decision == "pass" and a.model_answers == 2 and a.fallbacks == 0


async def test_the_port_falls_back_to_the_rules_on_timeout_or_error():
    async def slow(raw):
        await asyncio.sleep(0.3)
        return {"score": 0.0, "decision": "pass"}

    async def broken(raw):
        raise RuntimeError("replica died")

    # Rules: total over R$ 20,000 (+50) and abroad (+30) -> block at 80.
    a = adapter(slow, budget_ms=20)
    await a.warm()  # the warm-up call is allowed the cold budget; orders get 20 ms
    screening = await a.screen("o1", "u1", 2_500_000, (1,), "US")
    assert screening.decision == "block" and "model-unavailable" in screening.reasons
    assert a.fallbacks == 1 and a.model_answers == 0
    await asyncio.sleep(0.35)  # the late answer is ignored but its latency is kept
    stats = a.stats()
    assert stats["ready"] and stats["model_ms_p50"] >= 250, stats

    a = adapter(broken, budget_ms=20)
    started = asyncio.get_running_loop().time()
    screening = await a.screen("o1", "u1", 2_500_000, (1,), "US")
    # The first warm-up call failed at once: no cold wait, the rules decide.
    assert asyncio.get_running_loop().time() - started < 1.0
    assert screening.decision == "block" and "model-unavailable" in screening.reasons
    assert a.fallbacks == 1 and not a.stats()["ready"]
    assert (await a.screen("o2", "u1", 10_000, (1,), "BR")).decision == "pass"
    a._warm_task.cancel()  # it would keep retrying the broken model


async def test_an_order_during_the_first_warm_up_call_waits_for_it(fraud):
    calls = []

    async def cold_then_fast(raw):
        calls.append(raw)
        if len(calls) == 1:
            await asyncio.sleep(0.5)  # the handle lookup of a new process
        v = fraud.score([raw])[0]
        return {"score": v.score, "decision": v.decision, "version": fraud.version}

    a = adapter(cold_then_fast)
    warming = asyncio.ensure_future(a.warm())
    await asyncio.sleep(0)
    screening = await a.screen("o1", "u1", 15_490, (1,), "BR")
    assert screening.reasons[0] == f"model:{fraud.version}" and a.model_answers == 1
    assert warming.done() and len(calls) == 2  # the warm-up call, then the order's


async def test_the_port_recovers_when_the_model_comes_up_later(fraud):
    up = False

    async def late(raw):
        if not up:
            raise ConnectionError("no deployment yet")
        v = fraud.score([raw])[0]
        return {"score": v.score, "decision": v.decision, "version": fraud.version}

    a = adapter(late)
    first = await a.screen("o1", "u1", 15_490, (1,), "BR")
    assert "model-unavailable" in first.reasons
    up = True
    await asyncio.wait_for(a.warm(), 2.0)  # retried with backoff, answered
    later = await a.screen("o2", "u1", 15_490, (1,), "BR")
    assert later.reasons[0] == f"model:{fraud.version}" and a.stats()["ready"]


async def test_reconfigure_swaps_the_version_while_calls_keep_being_answered(tmp_path):
    """``reconfigure`` (Serve's user_config) loads another version beside the running one."""
    from serve.models.deployments import FraudScorer, Recommender
    from serve.models.scoring import ARTIFACTS

    for name in ARTIFACTS.iterdir():
        shutil.copy(name, tmp_path / name.name)
    for kind in ("fraud", "recommender"):
        path = tmp_path / f"{kind}.card.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "version": "next"}))
    scorer, recommender = FraudScorer.func_or_class(), Recommender.func_or_class()
    shipped = await scorer.version()
    assert shipped != "next" and await recommender.version() == shipped
    seen: list[str] = []
    swapping = True

    async def keep_scoring():
        while swapping:
            answers = await scorer.score_many([facts(), facts(country="US")])
            seen.extend(a["version"] for a in answers)
            await asyncio.sleep(0)

    caller = asyncio.create_task(keep_scoring())
    await asyncio.sleep(0.01)
    await scorer.reconfigure({"models_dir": str(tmp_path)})
    await recommender.reconfigure({"models_dir": str(tmp_path)})
    await asyncio.sleep(0.01)
    swapping = False
    await caller
    assert seen[0] == shipped and seen[-1] == "next" and set(seen) == {shipped, "next"}
    assert await scorer.version() == "next" == await recommender.version()
    # A version that does not load leaves the running one in place.
    (tmp_path / "fraud.onnx").write_bytes(b"not a model")
    with pytest.raises(Exception):  # onnxruntime's own error type
        await scorer.reconfigure({"models_dir": str(tmp_path)})
    assert await scorer.version() == "next"
    assert (await scorer.score_many([facts()]))[0]["decision"] == "pass"


async def test_agora_models_swap_reaches_running_replicas_through_the_pointer(
    tmp_path, monkeypatch
):
    """`agora models swap --dir` writes the pointer; each replica, on its next call, loads
    that version in the background and swaps; a broken version is refused by the command
    and, written by hand, leaves the running one in place; no --dir goes back."""
    from cluster.settings import Settings
    from serve.models import deployments
    from serve.models.scoring import ARTIFACTS

    settings = Settings(var_dir=tmp_path / "var")
    monkeypatch.setattr(deployments, "get_settings", lambda: settings)
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    monkeypatch.setattr(cli, "connect_ray", lambda s: (_ for _ in ()).throw(ConnectionError()))
    monkeypatch.setattr(deployments, "WATCH_S", 0.0)
    fresh, broken = tmp_path / "v2", tmp_path / "v3"
    for directory, version in ((fresh, "next"), (broken, "broken")):
        shutil.copytree(ARTIFACTS, directory)
        card = directory / "fraud.card.json"
        card.write_text(json.dumps({**json.loads(card.read_text()), "version": version}))
    (broken / "fraud.onnx").write_bytes(b"not a model")
    scorer = deployments.FraudScorer.func_or_class()
    shipped = await scorer.version()

    async def settled():
        await scorer.version()  # a call: the replica looks at the pointer
        if scorer._refreshing:
            await scorer._refreshing
        return await scorer.version()

    assert cli.main(["swap", "--dir", str(broken)]) == 2  # refused: nothing written
    assert not deployments.pointer_path(settings).exists() and await settled() == shipped
    assert cli.main(["swap", "--dir", str(fresh)]) == 0
    assert await settled() == "next"
    assert (await scorer.score_many([facts()]))[0]["version"] == "next"
    assert deployments.FraudScorer.func_or_class().model.version == "next"  # a new replica
    deployments.write_pointer(settings, broken)  # behind the command's back
    assert await settled() == "next"  # logged, and the running version stays
    assert cli.main(["swap"]) == 0  # back to the default models
    assert not deployments.pointer_path(settings).exists() and await settled() == shipped
